"""engine.runners.evaluate: checkpoint vs exported model, the result file, .bin sets, errors.

Uses an untrained MobileFaceNet and a few generated images, so it checks plumbing and agreement
between code paths, not accuracy.
"""
import csv
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from _tiny_face_model import config, make_pair_dataset, save_random_checkpoint

from engine.evaluation import metrics as M
from engine.evaluation import verification as V
from engine.inference.folder import resolve_model_source
from engine.runners import evaluate as E
from foundation.errors import DatasetError, UserError

METRIC_KEYS = ("acc", "acc_std", "best_threshold", "best_threshold_cosine", "tar_at_far", "roc_auc", "eer",
               "num_pairs", "folds", "protocol")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    pairs, images = make_pair_dataset(str(root / "data"))
    ckpt = save_random_checkpoint(str(root / "model.pdparams"))
    from engine.inference.folder import export_checkpoint

    export_dir = export_checkpoint(ckpt, "MobileFaceNet", save_dir=str(root / "inference"))["dir"]
    return {"root": root, "data": str(root / "data"), "pairs": pairs, "images": images, "ckpt": ckpt,
            "inference": export_dir}


def _run(setup, out, **overrides):
    cfg = config(Global__mode="evaluate", Global__dataset_dir=setup["data"], Global__output=str(out),
                 Evaluate__batch_size=5, **overrides)
    assert E.run(cfg) == 0
    with open(os.path.join(str(out), "evaluate_result.json")) as f:
        return json.load(f)


def _scores(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_checkpoint_and_exported_dir_give_the_same_result(setup, tmp_path):
    a = _run(setup, tmp_path / "ckpt", Evaluate__weight_path=setup["ckpt"])
    b = _run(setup, tmp_path / "dir", Evaluate__weight_path=setup["inference"])
    assert a["done_flag"] is True and b["done_flag"] is True
    assert a["metrics"]["acc"] == b["metrics"]["acc"]
    ca = np.array([float(r["cosine"]) for r in _scores(tmp_path / "ckpt" / "pair_scores_val.csv")])
    cb = np.array([float(r["cosine"]) for r in _scores(tmp_path / "dir" / "pair_scores_val.csv")])
    np.testing.assert_allclose(ca, cb, atol=1e-5)
    # an untrained net still maps a noisy copy of a picture closer than another picture
    assert not np.allclose(ca, ca[0])


def test_result_json_has_every_metric_and_the_outputs(setup, tmp_path):
    r = _run(setup, tmp_path, Evaluate__weight_path=setup["inference"])
    m = r["metrics"]
    for key in METRIC_KEYS:
        assert key in m, key
    assert set(m["tar_at_far"]) == {"1e-1", "1e-2", "1e-3"}
    assert m["tar_at_far"]["1e-3"] is None and any("1000" in n for n in m["notes"])  # 12 negatives
    assert m["num_pairs"] == len(setup["pairs"]) and m["folds"] == 10
    assert m["protocol"]["flip"] is True and m["protocol"]["folds"] == 10
    assert abs(m["best_threshold_cosine"] - (1 - m["best_threshold"] / 2)) < 1e-9
    assert os.path.getsize(m["roc_curve_png"]) > 1000
    rows = _scores(m["pair_score_files"]["val"])
    assert len(rows) == len(setup["pairs"])
    assert rows[0]["path_a"] == setup["pairs"][0][0] and int(rows[1]["label"]) == setup["pairs"][1][2]
    cos = np.array([float(x["cosine"]) for x in rows])
    dist = np.array([float(x["sq_l2_distance"]) for x in rows])
    np.testing.assert_allclose(dist, 2 - 2 * cos, atol=1e-5)
    # the figures follow from the per-pair scores by the protocol
    again = M.metrics_from_scores(cos, dist, [int(x["label"]) for x in rows], folds=10)
    assert abs(again["acc"] - m["acc"]) < 1e-9 and abs(again["roc_auc"] - m["roc_auc"]) < 1e-6
    assert os.path.isfile(tmp_path / "evaluate.log")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_flip_off_changes_the_features(setup, tmp_path):
    on = _scores(_run(setup, tmp_path / "on", Evaluate__weight_path=setup["inference"])["metrics"]
                 ["pair_score_files"]["val"])
    r = _run(setup, tmp_path / "off", Evaluate__weight_path=setup["inference"], Evaluate__flip=False)
    assert r["metrics"]["protocol"]["flip"] is False
    off = _scores(r["metrics"]["pair_score_files"]["val"])
    assert max(abs(float(a["cosine"]) - float(b["cosine"])) for a, b in zip(on, off)) > 1e-4


def test_bin_files_score_like_the_same_pairs_on_disk(setup, tmp_path):
    from datasets.bin_file import write_bin

    # the val pairs as a .bin (PNG: lossless, so the model sees the same pixels)
    imgs = [setup["images"][x] for a, b, _ in setup["pairs"] for x in (a, b)]
    bin_path = str(tmp_path / "tiny.bin")
    write_bin(bin_path, imgs, [y for _, _, y in setup["pairs"]], ext=".png")
    val = _run(setup, tmp_path / "val", Evaluate__weight_path=setup["inference"])["metrics"]
    r = _run(setup, tmp_path / "out", Evaluate__weight_path=setup["inference"],
             Evaluate__bin_paths=f"[{bin_path},{bin_path}]")
    m = r["metrics"]
    assert set(m["sets"]) == {"tiny", "tiny_2"}  # .bin files replace the val pairs
    tiny = m["sets"]["tiny"]
    assert tiny["num_pairs"] == len(setup["pairs"]) and tiny["source"] == bin_path
    for key in METRIC_KEYS:
        assert key in tiny, key
    assert m["acc"] == m["mean_acc"] == np.mean([s["acc"] for s in m["sets"].values()])
    assert tiny["acc"] == val["acc"]
    cos_val = [float(x["cosine"]) for x in _scores(val["pair_score_files"]["val"])]
    rows = _scores(m["pair_score_files"]["tiny"])
    np.testing.assert_allclose([float(x["cosine"]) for x in rows], cos_val, atol=1e-5)
    assert rows[0]["path_a"] == "tiny.bin#0" and rows[0]["path_b"] == "tiny.bin#1"


def test_single_bin_run_ignores_the_dataset(setup, tmp_path):
    from datasets.bin_file import write_bin

    imgs = [setup["images"][x] for a, b, _ in setup["pairs"] for x in (a, b)]
    bin_path = str(tmp_path / "lfw_small.bin")
    write_bin(bin_path, imgs, [y for _, _, y in setup["pairs"]])
    cfg = config(Global__mode="evaluate", Global__dataset_dir=str(tmp_path / "no_such_dataset"),
                 Global__output=str(tmp_path / "out"), Evaluate__weight_path=setup["inference"],
                 Evaluate__bin_paths=f"[{bin_path}]")
    assert E.run(cfg) == 0
    m = json.load(open(tmp_path / "out" / "evaluate_result.json"))["metrics"]
    assert m["set"] == "lfw_small" and "acc" in m and "roc_auc" in m and m["source"] == bin_path


def test_missing_bin_is_named(setup, tmp_path):
    cfg = config(Global__mode="evaluate", Global__output=str(tmp_path / "out"), Evaluate__weight_path=setup["inference"],
                 Evaluate__bin_paths=f"[{tmp_path / 'agedb_30.bin'}]")
    with pytest.raises(DatasetError, match="agedb_30.bin does not exist"):
        E.run(cfg)
    assert not (tmp_path / "out").exists()


def test_evaluate_pairs_with_a_numpy_extractor_decodes_each_image_once(setup):
    from datasets.transforms import preprocess, read_image

    calls = []
    w = np.random.default_rng(0).normal(size=(3 * 112 * 112, 16)).astype(np.float32)

    def extract(batch):  # a fixed random projection of the pixels stands in for a network
        calls.append(len(batch))
        return batch.reshape(len(batch), -1) @ w

    pairs = [(os.path.join(setup["data"], "val", a), os.path.join(setup["data"], "val", b), y)
             for a, b, y in setup["pairs"]]
    m = V.evaluate_pairs(pairs, extract, batch_size=4, flip=True, folds=10, num_workers=2)
    distinct = len({p for a, b, _ in pairs for p in (a, b)})
    assert sum(calls) == 2 * distinct  # each image and its flip once
    # same numbers computed by hand
    feats = {}
    for a, b, _ in pairs:
        for p in (a, b):
            x = preprocess(read_image(p))[None]
            feats[p] = extract(x)[0] + extract(x[..., ::-1].copy())[0]
    ref = M.verification_metrics(np.array([feats[a] for a, _, _ in pairs]), np.array([feats[b] for _, b, _ in pairs]),
                                 [y for _, _, y in pairs], folds=10)
    assert abs(m["acc"] - ref["acc"]) < 1e-9 and abs(m["roc_auc"] - ref["roc_auc"]) < 1e-6


def test_missing_weight_path_is_named_with_the_fix(setup, tmp_path):
    cfg = config(Global__mode="evaluate", Global__dataset_dir=setup["data"], Global__output=str(tmp_path),
                 Evaluate__weight_path=str(tmp_path / "missing.pdparams"))
    with pytest.raises(UserError) as e:
        E.run(cfg)
    assert "missing.pdparams" in str(e.value) and "train first" in str(e.value)
    assert "Evaluate.weight_path=" in str(e.value)
    with pytest.raises(UserError, match="without an inference model"):
        resolve_model_source(str(tmp_path))


def test_unreadable_image_in_pairs_is_named(setup, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    good = os.path.join(setup["data"], "val", setup["pairs"][0][0])
    pairs = [(good, str(bad), 0)] + [(good, good, 1)] * 9
    with pytest.raises(DatasetError, match="broken.jpg"):
        V.evaluate_pairs(pairs, lambda b: b.reshape(len(b), -1)[:, :8], batch_size=4)


def test_json_and_pdmodel_formats_score_the_same(setup, tmp_path):
    """A folder with only inference.json (Paddle 3 PIR) and one with only inference.pdmodel (Paddle 2.x,
    earlier PaddleX exports) both evaluate, with the same scores."""
    import shutil
    import subprocess
    import sys

    from _tiny_face_model import CONFIG, REPO_ROOT

    src = setup["inference"]
    pir_dir, old_dir = tmp_path / "pir_only", tmp_path / "old_only"
    if os.path.isfile(os.path.join(src, "inference.pdmodel")):
        shutil.copytree(src, old_dir)
    else:  # this export wrote only the new format: make the old one the way Paddle 2.x-era tools did
        env = dict(os.environ, FLAGS_enable_pir_api="0")
        proc = subprocess.run([sys.executable, "main.py", "-c", CONFIG, "-o", "Global.mode=export",
                               "-o", f"Export.weight_path={setup['ckpt']}", "-o", f"Export.save_dir={old_dir}"],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copytree(src, pir_dir)
    for name in ("inference.pdmodel", "inference.pdiparams.info"):
        if (pir_dir / name).exists():
            (pir_dir / name).unlink()
    if (old_dir / "inference.json").exists():
        (old_dir / "inference.json").unlink()
    assert (old_dir / "inference.pdmodel").is_file() and (pir_dir / "inference.json").is_file()
    new = _run(setup, tmp_path / "new", Evaluate__weight_path=str(pir_dir))
    old = _run(setup, tmp_path / "old", Evaluate__weight_path=str(old_dir))
    assert old["metrics"]["model"]["format"] == "program" and new["metrics"]["model"]["folder_format"] == "pir"
    # a JSON-only folder of our architecture runs through its checked old-format program (engine.inference.program_convert)
    assert new["metrics"]["model"]["format"] == "program"
    a = [float(r["cosine"]) for r in _scores(tmp_path / "new" / "pair_scores_val.csv")]
    b = [float(r["cosine"]) for r in _scores(tmp_path / "old" / "pair_scores_val.csv")]
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert old["metrics"]["acc"] == new["metrics"]["acc"]


def test_chunked_forward_matches_one_call():
    w = np.random.default_rng(1).normal(size=(12, 5))
    calls = []

    def fn(b):
        calls.append(len(b))
        return b @ w

    x = np.random.default_rng(2).normal(size=(37, 12))
    np.testing.assert_allclose(V.chunked(fn, 16)(x), x @ w)
    assert calls == [16, 16, 5]


def test_too_few_pairs_for_the_folds():
    with pytest.raises(DatasetError, match="3 pairs cannot be split into 10 folds"):
        V.evaluate_pairs([("a", "b", 1), ("c", "d", 0), ("e", "f", 1)], lambda b: b)


LFW = os.path.normpath(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                                    "data", "lfw_dev"))


@pytest.mark.skipif(not os.path.isdir(LFW), reason="LFW photos not available at ../shared/data/lfw_dev")
def test_detect_aligns_raw_pair_photos_and_counts_photos_without_a_face(setup, tmp_path):
    """Evaluate.detect on 10 raw LFW pairs (5 same, 5 different, interleaved) with one photo replaced
    by a flat grey picture: every pair is scored, the grey one whole, and the metrics say so."""
    with open(os.path.join(LFW, "pair_label.txt")) as f:
        rows = [line.split() for line in f if line.strip()]
    pairs = [p for pair in zip(rows[:5], rows[300:305]) for p in pair]
    data = tmp_path / "data"
    for a, b, _ in pairs:
        for rel in (a, b):
            (data / "val" / os.path.dirname(rel)).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.join(LFW, rel), data / "val" / rel)
    cv2.imwrite(str(data / "val" / "grey.png"), np.full((250, 250, 3), 128, np.uint8))
    pairs[1] = ["grey.png", pairs[1][1], "0"]
    (data / "val" / "pair_label.txt").write_text("".join(" ".join(p) + "\n" for p in pairs))
    cfg = config(Global__mode="evaluate", Global__dataset_dir=str(data), Global__output=str(tmp_path / "out"),
                 Evaluate__weight_path=setup["inference"], Evaluate__detect=True)
    assert E.run(cfg) == 0
    result = json.loads((tmp_path / "out" / "evaluate_result.json").read_text())["metrics"]
    detect = result["sets"]["val"]["detect"] if "sets" in result else result["detect"]
    n_images = len({p for a, b, _ in pairs for p in (a, b)})
    assert detect["no_face_used_whole"] == 1 and detect["aligned"] == n_images - 1
    assert detect["no_face_first"][0].endswith("grey.png")
