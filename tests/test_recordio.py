"""RecordIO (insightface train.rec/.idx/property) sets: framing, both layouts, pack/unpack round trip,
corrupt records named by index."""
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from datasets.bin_file import write_bin
from datasets.demo import generate_demo
from datasets.face_dataset import FaceTrainDataset
from datasets.label_files import load_pair_list, load_train_list
from datasets.recordio import (
    MAGIC,
    RecordIOError,
    RecordIOReader,
    RecordIOSet,
    RecordIOTrainDataset,
    RecordIOWriter,
    encode_frames,
    pack,
    pack_record,
    unpack,
    unpack_record,
)
from engine.config.loader import load_config
from engine.training.builders import build_train_loader
from foundation.errors import DatasetError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "face_recognition", "MobileFaceNet.yaml")
STEP_LINE = re.compile(r"epoch (\d+)/\d+ step (\d+)/\d+ loss ([-\d.naif]+) lr")


@pytest.fixture(scope="module")
def folder_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rio") / "src")
    generate_demo(root, train_identities=6, images_per_identity=3, val_identities=4, val_pairs=20, workers=1)
    return root


@pytest.fixture(scope="module")
def rec_set(folder_set, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("rio") / "rec")
    pack(folder_set, dst)
    return dst


def _jpeg(value, size=24):
    img = np.full((size, size, 3), value, np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 4, (255 - value, 40, 200), -1)
    return cv2.imencode(".jpg", img)[1].tobytes()


def test_pack_unpack_round_trip_is_byte_equal(folder_set, rec_set, tmp_path):
    assert sorted(os.listdir(rec_set)) == ["property", "train.idx", "train.rec", "val"]
    assert open(os.path.join(rec_set, "property")).read() == "6,112,112"
    recset = RecordIOSet(rec_set)
    assert recset.layout == "header" and len(recset) == 18 and recset.num_classes == 6
    out = str(tmp_path / "unpacked")
    unpack(rec_set, out)
    original = load_train_list(folder_set)
    unpacked = load_train_list(out)
    assert [lbl for _, lbl in unpacked] == [lbl for _, lbl in original]
    for (a, _), (b, _) in zip(original, unpacked):
        assert open(a, "rb").read() == open(b, "rb").read()
    assert open(os.path.join(out, "val", "pair_label.txt")).read() == \
        open(os.path.join(folder_set, "val", "pair_label.txt")).read()
    with pytest.raises(DatasetError, match="not empty"):
        unpack(rec_set, out)


def test_samples_equal_the_folder_dataset(folder_set, rec_set):
    a = FaceTrainDataset(load_train_list(folder_set), seed=3)
    b = RecordIOTrainDataset(rec_set, seed=3)
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(len(a)):
            xa, la = a[i]
            xb, lb = b[i]
            assert la == lb and np.array_equal(xa, xb)
    b[0]
    clone = pickle.loads(pickle.dumps(b))  # picklable with an open file; reopens on use
    assert np.array_equal(clone[1][0], b[1][0])


def test_insightface_header_layout(tmp_path):
    """Record 0 = (first identity record, end); images 1..4; identity records 5, 6 with image ranges;
    image labels as flag>0 label arrays, as insightface's MS1M files have them."""
    rec, idx = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
    with RecordIOWriter(rec, idx) as w:
        w.write(0, pack_record([5.0, 7.0], b""))
        for key, label in ((1, 0), (2, 0), (3, 1), (4, 1)):
            w.write(key, pack_record([float(label), 0.0], _jpeg(40 * key), id=key))
        w.write(5, pack_record([1.0, 3.0], b""))
        w.write(6, pack_record([3.0, 5.0], b""))
    s = RecordIOSet(str(tmp_path))
    assert s.layout == "header" and s.keys == [1, 2, 3, 4]
    assert s.labels.tolist() == [0, 0, 1, 1] and s.identity_ranges == [(1, 3), (3, 5)]
    img, label = s.decode(2)
    assert img.shape == (24, 24, 3) and label == 1
    x, y = RecordIOTrainDataset(s, image_size=112)[3]
    assert x.shape == (3, 112, 112) and x.dtype == np.float32 and y == 1


def test_plain_layout_every_record_an_image(tmp_path):
    rec, idx = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
    with RecordIOWriter(rec, idx) as w:
        for key, label in enumerate((2, 0, 1, 0)):
            w.write(key, pack_record(float(label), _jpeg(50 + key)))
    s = RecordIOSet(str(tmp_path))
    assert s.layout == "plain" and s.labels.tolist() == [2, 0, 1, 0] and s.num_classes == 3


def test_plain_layout_corrupt_record_strict_and_lenient(tmp_path):
    rec, idx = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
    with RecordIOWriter(rec, idx) as w:
        for key, label in enumerate((0, 1, 1)):
            w.write(key, pack_record(float(label), _jpeg(60 + key)))
    offsets = dict(line.split() for line in open(idx))
    with open(rec, "r+b") as f:
        f.seek(int(offsets["1"]))
        f.write(b"\0\0\0\0")
    with pytest.raises(RecordIOError, match=r"train\.rec: record 1: bad magic"):
        RecordIOSet(str(tmp_path))  # training refuses the set at once
    s = RecordIOSet(str(tmp_path), strict=False)  # the check lists it and goes on
    assert list(s.unreadable) == [1] and s.unreadable[1].key == 1 and s.labels.tolist() == [0, -1, 1]


def test_image_label_must_match_the_identity_records(tmp_path):
    rec, idx = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
    with RecordIOWriter(rec, idx) as w:
        w.write(0, pack_record([3.0, 5.0], b""))
        w.write(1, pack_record(0.0, _jpeg(10)))
        w.write(2, pack_record(0.0, _jpeg(20)))  # the identity records say class 1
        w.write(3, pack_record([1.0, 2.0], b""))
        w.write(4, pack_record([2.0, 3.0], b""))
    s = RecordIOSet(str(tmp_path))
    assert s.labels.tolist() == [0, 1]
    with pytest.raises(RecordIOError, match="record 2: its label 0 differs from 1"):
        s.decode(1)


def test_framing_splits_at_aligned_magic_like_dmlc():
    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + b"xy"
    frames = encode_frames(payload)
    # three parts (flags 1, 2, 3), the magic dropped from the data, padding to 4 bytes
    heads = [struct.unpack_from("<II", frames, o) for o in (0, 12, 24)]
    assert [h[0] for h in heads] == [MAGIC] * 3
    assert [(h[1] >> 29, h[1] & ((1 << 29) - 1)) for h in heads] == [(1, 4), (2, 4), (3, 2)]
    assert len(frames) % 4 == 0


def test_reader_rejoins_split_records(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payloads = [pack_record(1.0, b"abcd" + magic + magic + b"z"), pack_record(0.0, b"q" * 7)]
    with RecordIOWriter(str(tmp_path / "a.rec"), str(tmp_path / "a.idx")) as w:
        for k, p in enumerate(payloads):
            w.write(k, p)
    r = RecordIOReader(str(tmp_path / "a.rec"))
    assert [r.read(k) for k in (0, 1)] == payloads
    label, image, _, _ = unpack_record(r.read(0))
    assert label == 1.0 and image == b"abcd" + magic + magic + b"z"


def test_corrupt_records_are_named(rec_set, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(rec_set, bad)
    offsets = dict(line.split() for line in open(os.path.join(bad, "train.idx")))
    with open(os.path.join(bad, "train.rec"), "r+b") as f:
        f.seek(int(offsets["4"]))
        f.write(b"\0\0\0\0")  # magic of record 4
        f.seek(int(offsets["7"]) + 8 + 24)
        f.write(b"garbage!" * 8)  # image bytes of record 7
    s = RecordIOSet(bad)
    with pytest.raises(RecordIOError, match=r"train\.rec: record 4: bad magic"):
        s.decode(3)
    with pytest.raises(RecordIOError, match=r"train\.rec: record 7: the image .* does not decode"):
        s.decode(6)
    # truncated file
    with open(os.path.join(bad, "train.rec"), "r+b") as f:
        f.truncate(int(offsets["18"]) + 20)
    with pytest.raises(RecordIOError, match="record 18: truncated"):
        s.image_bytes(17)


# --------------------------------------------------------------------------- training on a RecordIO set
def _train(data, out, *extra):
    """A tiny training run in this process (as tests/test_train.py: the same kernels in every run);
    returns its train.log."""
    from engine.runners.train import run

    cfg = load_config(CONFIG, ["Global.mode=train", f"Global.dataset_dir={data}", f"Global.output={out}",
                               "Global.num_threads=2", "Train.epochs_iters=1", "Train.batch_size=4",
                               "Train.num_workers=1", "Train.log_interval=1", "Evaluate.batch_size=16",
                               "Evaluate.folds=4", *extra])
    assert run(cfg) == 0
    return open(os.path.join(out, "train.log"), encoding="utf-8").read()


def _losses(log):
    return {(int(m.group(1)), int(m.group(2))): m.group(3) for m in STEP_LINE.finditer(log)}


def _acc(log):
    return [float(v) for v in re.findall(r"eval: val verification acc ([\d.]+)", log)]


def _with_bin(folder, rec, dst):
    """The packed set `rec` without val/, the val pairs of `folder` as an insightface lfw.bin beside train.rec."""
    shutil.copytree(rec, dst, ignore=shutil.ignore_patterns("val"))
    pairs = load_pair_list(folder)
    images = [open(p, "rb").read() for a, b, _ in pairs for p in (a, b)]
    write_bin(os.path.join(dst, "lfw.bin"), images, [lbl == 1 for _, _, lbl in pairs])
    return dst


@pytest.fixture(scope="module")
def rec_with_bin(folder_set, rec_set, tmp_path_factory):
    """The packed set without val/, its val pairs as an insightface lfw.bin beside train.rec."""
    return _with_bin(folder_set, rec_set, str(tmp_path_factory.mktemp("rio") / "rec_bin"))


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    """(folder, packed, packed with lfw.bin) of 4 identities x 2 images and 8 val pairs: what a
    training run costs goes with its images (MobileFaceNet trains a few images a second here)."""
    root = tmp_path_factory.mktemp("rio_small")
    folder = str(root / "src")
    generate_demo(folder, train_identities=4, images_per_identity=2, val_identities=4, val_pairs=8, workers=1)
    rec = str(root / "rec")
    pack(folder, rec)
    return folder, rec, _with_bin(folder, rec, str(root / "rec_bin"))


def test_training_on_recordio_matches_the_folder_set_and_resumes(small_sets, tmp_path):
    """Two epochs on the folder set are the reference. On the RecordIO set: epoch 1, then a resume
    for epoch 2 on the same train.rec validated from lfw.bin instead of val/ (rec_with_bin): the
    same losses at every step, the same accuracies (val/ pairs and the .bin of the same pairs)."""
    folder_set, rec_set, rec_with_bin = small_sets
    folder_log = _train(folder_set, str(tmp_path / "folder"), "Train.epochs_iters=2")
    rec_log = _train(rec_set, str(tmp_path / "rec"))
    folder = _losses(folder_log)
    assert sorted(folder) == [(e, s) for e in (1, 2) for s in (1, 2)]  # 8 images, batch 4
    assert _losses(rec_log) == {k: v for k, v in folder.items() if k[0] == 1}
    assert len(_acc(folder_log)) == 2 and _acc(rec_log) == _acc(folder_log)[:1]  # the same val/ pairs
    # resume the RecordIO run for epoch 2, its validation read from lfw.bin: the same losses again
    bin_log = _train(rec_with_bin, str(tmp_path / "rec"), "Train.epochs_iters=2",
                     f"Train.resume_path={tmp_path / 'rec' / 'latest' / 'latest.pdparams'}")
    assert _losses(bin_log) == folder  # the log holds both epochs: epoch 1's lines, then the resumed ones
    assert "val pairs of" in bin_log and "lfw.bin" in bin_log and len(_acc(bin_log)) == 2
    assert abs(_acc(bin_log)[1] - _acc(folder_log)[1]) < 1e-3  # the same pairs, read from the .bin
    assert json.load(open(tmp_path / "rec" / "train_result.json"))["done_flag"] is True
    # evaluate on the RecordIO folder without val/: its .bin files
    from engine.runners.evaluate import run

    out = str(tmp_path / "eval")
    cfg = load_config(CONFIG, ["Global.mode=evaluate", f"Global.dataset_dir={rec_with_bin}", f"Global.output={out}",
                               "Evaluate.folds=4",
                               f"Evaluate.weight_path={tmp_path / 'rec' / 'best_model' / 'best_model.pdparams'}"])
    assert run(cfg) == 0
    metrics = json.load(open(os.path.join(out, "evaluate_result.json")))["metrics"]
    assert "lfw" in json.dumps(metrics) and "pair_scores_lfw.csv" in os.listdir(out)


def test_property_must_agree_with_the_labels(rec_set, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(rec_set, bad)
    open(os.path.join(bad, "property"), "w").write("7,112,112")
    cfg = load_config(CONFIG, ["Global.mode=train", f"Global.dataset_dir={bad}", "Train.batch_size=6"])
    with pytest.raises(DatasetError, match=r"property says 7 classes but the labels in train.rec give 6"):
        build_train_loader(cfg, bad)


# --------------------------------------------------------------------------- check_dataset
def _check(dataset_dir, out):
    cmd = [sys.executable, os.path.join(REPO_ROOT, "main.py"), "-c", CONFIG, "-o", "Global.mode=check_dataset",
           "-o", f"Global.dataset_dir={dataset_dir}", "-o", f"Global.output={out}"]
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    return res, json.load(open(os.path.join(out, "check_dataset_result.json")))


def test_check_dataset_on_recordio(rec_set, rec_with_bin, tmp_path):
    res, result = _check(rec_with_bin, str(tmp_path / "ok"))
    assert res.returncode == 0 and "Check dataset passed" in res.stderr + res.stdout
    assert set(result) == {"done_flag", "check_pass", "attributes", "analysis", "dataset_path", "show_type",
                           "dataset_type"}
    a = result["analysis"]
    assert result["check_pass"] and result["attributes"]["train_samples"] == 18
    assert a["recordio"]["layout"] == "header" and a["recordio"]["records"] == 1 + 18 + 6
    assert a["train"]["identities"] == 6 and a["train"]["images_per_identity"]["median"] == 3
    assert a["val"]["source"] == "lfw.bin" and a["val"]["pairs"] == 20
    shots = os.listdir(tmp_path / "ok" / "check_dataset" / "demo_img")
    assert sum(n.startswith("train_") for n in shots) == 10 and sum(n.startswith("val_pair") for n in shots) == 10

    bad = str(tmp_path / "bad")
    shutil.copytree(rec_set, bad)
    offsets = dict(line.split() for line in open(os.path.join(bad, "train.idx")))
    with open(os.path.join(bad, "train.rec"), "r+b") as f:
        f.seek(int(offsets["5"]))
        f.write(b"\xff\xff\xff\xff")  # bad magic
        f.seek(int(offsets["9"]) + 8 + 24)
        f.write(b"not a jpeg" * 4)  # undecodable image
    res, result = _check(bad, str(tmp_path / "bad_out"))
    assert res.returncode == 1 and not result["check_pass"]
    errors = result["analysis"]["errors"]
    assert [(os.path.basename(e["file"]), e["line"]) for e in errors] == [("train.rec", 5), ("train.rec", 9)]
    assert "bad magic" in errors[0]["message"] and "does not decode" in errors[1]["message"]
    assert "train.rec:5" in res.stderr + res.stdout
