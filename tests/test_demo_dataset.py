"""The synthetic demo dataset: deterministic bytes, balanced pairs, identity not in mean colour, first-use generation."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import datasets.demo as demo
from datasets.label_files import load_pair_list, load_train_list
from foundation.errors import DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(train_identities=4, images_per_identity=3, val_identities=3, val_pairs=6)


def digest(folder):
    """{relative path: sha1} of every file except the timing-free summary."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    demo.generate_demo(a, seed=3, workers=1, **TINY)
    demo.generate_demo(b, seed=3, workers=2, **TINY)
    da, db = digest(a), digest(b)
    assert len(da) == 4 * 3 + 3 * 3 + 3  # images + label.txt, pair_label.txt, demo_info.json
    assert da == db


def test_png_output_is_deterministic_too(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    demo.generate_demo(a, seed=5, workers=1, image_format="png", **TINY)
    demo.generate_demo(b, seed=5, workers=1, image_format="png", **TINY)
    assert digest(a) == digest(b)
    assert all(p.endswith(".png") for p, _ in load_train_list(a))


def test_other_seed_other_faces(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    demo.generate_demo(a, seed=1, workers=1, **TINY)
    demo.generate_demo(b, seed=2, workers=1, **TINY)
    da, db = digest(a), digest(b)
    images = [k for k in da if k.endswith(".jpg")]
    assert all(da[k] != db[k] for k in images)


def test_layout_and_identity_split(tmp_path):
    out = str(tmp_path / "d")
    demo.generate_demo(out, seed=0, workers=1, **TINY)
    train = load_train_list(out)
    pairs = load_pair_list(out)
    assert len(train) == 12 and sorted({i for _, i in train}) == [0, 1, 2, 3]
    assert len(pairs) == 6
    train_dirs = {os.path.dirname(p) for p, _ in train}
    val_dirs = {os.path.dirname(p) for a, b, _ in pairs for p in (a, b)}
    assert all(d.startswith(os.path.join(out, "train")) for d in train_dirs)
    assert all(d.startswith(os.path.join(out, "val")) for d in val_dirs)
    import cv2

    img = cv2.imread(train[0][0])
    assert img.shape == (112, 112, 3)


def test_pairs_balanced_alternating_and_unique():
    pairs = demo.make_pairs(num_identities=50, per_identity=8, num_pairs=600, seed=0)
    labels = [p[4] for p in pairs]
    assert labels[:4] == [1, 0, 1, 0] and sum(labels) == 300
    # the 10 folds of the protocol (file order) each hold both kinds equally
    for fold in range(10):
        assert sum(labels[fold * 60:(fold + 1) * 60]) == 30
    assert len({p[:4] for p in pairs}) == 600
    assert all(p[0] == p[2] and p[1] != p[3] for p in pairs if p[4] == 1)
    assert all(p[0] != p[2] for p in pairs if p[4] == 0)


def test_too_many_pairs_is_a_clear_error():
    with pytest.raises(DatasetError, match="allow only 3 same"):
        demo.make_pairs(num_identities=3, per_identity=2, num_pairs=10, seed=0)
    with pytest.raises(DatasetError, match="must be even"):
        demo.make_pairs(num_identities=3, per_identity=2, num_pairs=5, seed=0)


def test_identity_is_not_in_the_mean_colour():
    """Nearest class mean on per-image mean colours must be far from solving the task."""
    n_id, per = 20, 6
    feats, labels = [], []
    for i in range(n_id):
        p = demo.identity_params(0, demo.TRAIN, i)
        for k in range(per):
            img = demo.render(p, demo.nuisance_params(0, demo.TRAIN, i, k)).astype(np.float32)
            feats.append(np.concatenate([img.mean((0, 1)), img[28:84, 28:84].mean((0, 1))]))
            labels.append(i)
    x, y = np.array(feats), np.array(labels)
    correct = 0
    for n in range(len(x)):
        keep = np.arange(len(x)) != n
        cents = np.array([x[keep & (y == c)].mean(0) for c in range(n_id)])
        correct += int(np.argmin(((cents - x[n]) ** 2).sum(1)) == y[n])
    acc = correct / len(x)
    assert acc < 0.4, f"mean colour alone identifies {acc:.0%} of images"


def test_identity_parameters_are_fixed_and_nuisance_varies():
    p1, p2 = demo.identity_params(0, demo.TRAIN, 7), demo.identity_params(0, demo.TRAIN, 7)
    assert repr(p1) == repr(p2)
    assert repr(demo.identity_params(0, demo.VAL, 7)) != repr(p1)  # val people are not train people
    a = demo.render(p1, demo.nuisance_params(0, demo.TRAIN, 7, 0))
    b = demo.render(p1, demo.nuisance_params(0, demo.TRAIN, 7, 1))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10


def test_resolve_generates_the_demo_on_first_use(tmp_path, monkeypatch):
    target = str(tmp_path / "dataset" / "face_demo")
    monkeypatch.setattr(demo, "DEMO_DIR", target)
    monkeypatch.setattr(demo, "DEFAULTS", dict(TINY, seed=0))
    messages = []
    from foundation.logger import get_logger

    monkeypatch.setattr(get_logger(), "info", lambda msg, *a, **k: messages.append(msg))
    assert demo.resolve_dataset_dir(target) == target
    assert os.path.isfile(os.path.join(target, "train", "label.txt"))
    assert any("generating" in m for m in messages)
    assert not [f for f in os.listdir(tmp_path / "dataset") if f.endswith(".tmp")]  # no leftovers
    messages.clear()
    assert demo.resolve_dataset_dir(target) == target  # second use: no regeneration
    assert not messages


def test_resolve_missing_other_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        demo.resolve_dataset_dir(str(tmp_path / "typo"))
    assert not os.path.exists(tmp_path / "typo")


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        demo.generate_demo(str(out), workers=1, **TINY)
    assert (out / "keep.txt").exists()


def test_command_line(tmp_path):
    out = str(tmp_path / "cli")
    proc = subprocess.run([sys.executable, "-m", "datasets.demo", out, "--train-identities", "3",
                           "--images-per-identity", "2", "--val-identities", "2", "--val-pairs", "2", "--seed", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Wrote 10 images" in proc.stdout
    assert len(load_train_list(out)) == 6 and len(load_pair_list(out)) == 2


def test_generation_does_not_hang_after_opencv_started_its_threads(tmp_path):
    """Generation with worker processes from a process that already ran OpenCV with threads, as
    the recognize runner does before it generates the demo. (Forked workers once hung there in a
    full test run; the pool now spawns fresh interpreters. This smoke test did not reproduce that
    hang on its own, so the clean-clone CI run is what covers it.)"""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys, cv2, numpy as np\n"
        f"sys.path.insert(0, {repo!r})\n"
        "cv2.setNumThreads(2)\n"
        "cv2.GaussianBlur(np.zeros((1500, 1500, 3), np.uint8), (31, 31), 5)  # starts OpenCV's pool\n"
        "from datasets.demo import generate_demo\n"
        f"generate_demo({str(tmp_path / 'demo')!r}, train_identities=4, images_per_identity=2,\n"
        "              val_identities=4, val_pairs=8, workers=2)\n"
        "print('generated')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "generated" in res.stdout
