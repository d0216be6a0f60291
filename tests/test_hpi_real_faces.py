"""Evaluate on real faces scores the same through every installed backend (issue 15: within 0.1
point of verification accuracy), on 200 LFW pairs of fold 4 (../shared/data/lfw_dev; skipped without it).

The model is FACEFEAT_TRAINED_MODEL (a trained inference folder) when set, else a random-weights
MobileFaceNet whose BatchNorm statistics come from the LFW crops (its accuracy is low, but the
scores it gives are what must agree). Protocol: evaluate's 10-fold verification accuracy (cosine,
threshold chosen on the other 9 folds), fp32 on every backend (evaluate's default with use_hpip).
"""
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
from _tiny_face_model import config

from foundation.runtime import set_threads

set_threads(2)
paddle = pytest.importorskip("paddle")

from benchmarks.loopback_service import calibrate_batchnorm  # noqa: E402
from engine.inference import backends as B  # noqa: E402
from engine.inference.folder import export_inference  # noqa: E402
from engine.runners import evaluate as E  # noqa: E402
from models import build_backbone  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LFW_DEV = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "lfw_dev"))
BACKENDS = [b for b in ("openvino", "onnxruntime") if B.is_installed(b)]
pytestmark = [
    pytest.mark.skipif(not os.path.isfile(os.path.join(LFW_DEV, "pair_label.txt")),
                       reason="LFW photos not available at ../shared/data/lfw_dev"),
    pytest.mark.skipif(not (BACKENDS and importlib.util.find_spec("paddle2onnx")),
                       reason='paddle2onnx and openvino/onnxruntime not installed (pip install ".[cpu,hpi]")'),
]


@pytest.fixture(scope="module")
def lfw_pairs(tmp_path_factory):
    """<root>/val: 100 same and 100 different pairs of LFW fold 4, the central 150x150 square of
    each photo scaled to 112x112 (benchmarks/lfw_dev.py's `center` variant, whose trained model is
    the one to pass as FACEFEAT_TRAINED_MODEL: it was trained on folds 1-3's people)."""
    root = tmp_path_factory.mktemp("lfw_pairs")
    with open(os.path.join(LFW_DEV, "pair_label.txt")) as f:
        lines = [ln.split() for ln in f if ln.strip() and not ln.startswith("#")]
    chosen = lines[1800:1900] + lines[2100:2200]  # fold 4: 300 same pairs, then 300 different ones
    rows = []
    for a, b, label in chosen:
        for rel in (a, b):
            out = os.path.join(root, "val", rel)
            if not os.path.isfile(out):
                os.makedirs(os.path.dirname(out), exist_ok=True)
                img = cv2.imread(os.path.join(LFW_DEV, rel))
                cv2.imwrite(out, cv2.resize(img[50:200, 50:200], (112, 112), interpolation=cv2.INTER_AREA))
        rows.append(f"{a} {b} {label}\n")
    with open(os.path.join(root, "val", "pair_label.txt"), "w") as f:
        f.writelines(rows)
    return str(root)


@pytest.fixture(scope="module")
def model_dir(lfw_pairs, tmp_path_factory):
    if os.environ.get("FACEFEAT_TRAINED_MODEL"):
        return os.environ["FACEFEAT_TRAINED_MODEL"]
    from engine.inference.folder import Preprocess

    paddle.seed(0)
    model = build_backbone("MobileFaceNet")
    crops = [cv2.imread(os.path.join(dp, n)) for dp, _, ns in os.walk(os.path.join(lfw_pairs, "val")) for n in ns
             if n.endswith(".jpg")][:32]
    pre = Preprocess()
    calibrate_batchnorm(model, paddle.to_tensor(np.stack([pre(c) for c in crops])))
    out = str(tmp_path_factory.mktemp("lfw_model") / "inference")
    export_inference(model, out, "MobileFaceNet")
    return out


def _accuracy(model_dir, data, out, **hpi):
    cfg = config(Global__mode="evaluate", Global__dataset_dir=data, Global__output=str(out),
                 Evaluate__weight_path=model_dir, Evaluate__batch_size=32, **hpi)
    assert E.run(cfg) == 0
    with open(os.path.join(out, "evaluate_result.json")) as f:
        return json.load(f)["metrics"]["acc"]


def test_evaluate_on_real_faces_agrees_across_backends(lfw_pairs, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    plain = _accuracy(model_dir, lfw_pairs, tmp_path / "paddle")
    print(f"paddle fp32: {plain:.4f} (10-fold accuracy, 200 LFW pairs, {model_dir})")
    for backend in BACKENDS:
        acc = _accuracy(model_dir, lfw_pairs, tmp_path / backend, Predict__use_hpip=True,
                        Predict__hpi_config__backend=backend)
        log = open(tmp_path / backend / "evaluate.log").read()
        assert f"{backend} fp32" in log
        assert abs(acc - plain) <= 0.001, f"{backend}: {acc:.4f} vs paddle {plain:.4f} (10-fold accuracy, 200 LFW pairs)"
