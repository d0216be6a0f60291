"""Bad input found by fault testing: a label file in UTF-16, a validation image that is missing,
an image bomb (huge size in a small file), a 1x1 image."""
import os
import struct
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from datasets.demo import generate_demo
from datasets.label_files import load_pair_list
from datasets.transforms import ImageReadError, read_image
from foundation.errors import DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "face_recognition", "MobileFaceNet.yaml")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad") / "face")
    generate_demo(root, train_identities=4, images_per_identity=3, val_identities=2, val_pairs=10, workers=1)
    return root


def copy_dataset(demo, dst):
    import shutil

    shutil.copytree(demo, dst)
    return str(dst)


def run_main(*overrides):
    return subprocess.run([sys.executable, "main.py", "-c", CONFIG, *sum((["-o", o] for o in overrides), [])],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_utf16_label_file_is_reported_as_such(demo, tmp_path):
    data = copy_dataset(demo, tmp_path / "d")
    path = os.path.join(data, "train", "label.txt")
    text = open(path, encoding="utf-8").read()
    open(path, "wb").write(text.encode("utf-16"))
    proc = run_main("Global.mode=check_dataset", f"Global.dataset_dir={data}", f"Global.output={tmp_path / 'out'}")
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "UTF-16" in errors[0] and "label.txt" in errors[0], proc.stderr[-1500:]
    assert "field" not in proc.stderr


def test_missing_validation_image_stops_training_before_epoch_1(demo, tmp_path):
    data = copy_dataset(demo, tmp_path / "d")
    pairs = open(os.path.join(data, "val", "pair_label.txt"), encoding="utf-8").read().splitlines()
    line = next(i for i, ln in enumerate(pairs, 1) if ln.strip() and not ln.startswith("#"))
    victim = pairs[line - 1].split()[1]
    os.remove(os.path.join(data, "val", victim))
    with pytest.raises(DatasetError, match=rf"pair_label.txt:{line}: image '{victim}': file not found"):
        load_pair_list(data, check_images=True)
    out = tmp_path / "out"
    start = time.perf_counter()
    # log_interval 1: a step of epoch 1 would show in train.log; the CPU speed-ups (a build check of the
    # fused kernels in a Paddle subprocess) have nothing to do with the data and stay off
    proc = run_main("Global.mode=train", f"Global.dataset_dir={data}", f"Global.output={out}", "Train.batch_size=4",
                    "Train.num_workers=0", "Global.num_threads=1", "Train.log_interval=1", "Global.cpu_speedup=False")
    assert proc.returncode == 1 and f"pair_label.txt:{line}" in proc.stderr, proc.stderr[-1500:]
    log = (out / "train.log").read_text(encoding="utf-8") if (out / "train.log").exists() else ""
    assert "epoch 1/" not in log and time.perf_counter() - start < 120


def _png_claiming(path, width, height):
    """A small valid PNG whose header says width x height (an image bomb's shape)."""
    ok, data = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(data.tobytes())
    data[16:24] = struct.pack(">II", width, height)
    open(path, "wb").write(bytes(data))
    return str(path)


def test_image_bomb_is_refused_from_its_header(tmp_path):
    path = _png_claiming(tmp_path / "bomb.png", 20000, 20000)
    assert os.path.getsize(path) < 1000
    with pytest.raises(ImageReadError, match=r"20000x20000 = 400.0 megapixels, above the limit of 50"):
        read_image(path)
    with pytest.raises(ImageReadError, match="Global.max_image_pixels"):
        read_image(_png_claiming(tmp_path / "small.png", 8, 8), max_pixels=10)


def test_check_dataset_refuses_a_bomb_and_warns_on_1x1(demo, tmp_path):
    data = copy_dataset(demo, tmp_path / "d")
    lines = [ln for ln in open(os.path.join(data, "train", "label.txt"), encoding="utf-8").read().splitlines()
             if ln.strip() and not ln.startswith("#")]
    bomb_rel, tiny_rel = lines[0].split()[0], lines[1].split()[0]
    _png_claiming(os.path.join(data, "train", bomb_rel), 20000, 20000)
    cv2.imwrite(os.path.join(data, "train", tiny_rel), np.zeros((1, 1, 3), np.uint8))
    proc = run_main("Global.mode=check_dataset", f"Global.dataset_dir={data}", f"Global.output={tmp_path / 'out'}")
    assert proc.returncode == 1
    assert "megapixels, above the limit" in proc.stdout + proc.stderr
    assert "is only 1x1 pixels" in proc.stdout + proc.stderr


def test_disk_full_during_the_first_save_says_what_was_saved(tmp_path, monkeypatch):
    import errno

    import engine.training.checkpoints as C

    real = C.atomic_replace_dir
    calls = []

    def second_fails(build, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(build, path)

    monkeypatch.setattr(C, "atomic_replace_dir", second_fails)
    with pytest.raises(C.UserError, match=r"epoch_1/ in .*No space left on device; latest/ of epoch 1 was saved"):
        C.save_checkpoints(str(tmp_path), ["latest", "epoch_1"], {"w": np.zeros(2)}, {}, {"epoch": 1}, epoch=1)
    assert os.path.isfile(tmp_path / "latest" / "latest.pdstates")
