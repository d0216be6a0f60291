"""int8 behind an accuracy gate (Export.int8, engine/inference/int8_gate.py, hpi_config.precision int8).

A random-init MobileFaceNet and a tiny generated demo dataset: the gate's figures are whatever
they are on it, so the tests force a pass (int8_max_loss 100) and a refusal (a negative maximum,
which no accuracy can meet) and check what each leaves behind, that the recorded accuracies are
the ones evaluate measures, and that int8 never runs without a passed record. The end-to-end tests
skip without paddle2onnx, openvino and nncf (pip install ".[cpu,hpi,int8]"); the choice and
message tests need none of them.
"""
import functools
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import yaml
from _tiny_face_model import config, save_random_checkpoint

from foundation.runtime import set_threads

set_threads(2)
paddle = pytest.importorskip("paddle")

from datasets.demo import generate_demo  # noqa: E402
from engine.inference import backends as B  # noqa: E402
from engine.inference import int8_gate as G  # noqa: E402
from engine.inference import onnx_convert as C  # noqa: E402
from engine.inference.folder import export_checkpoint  # noqa: E402
from engine.inference.model import InferenceModel  # noqa: E402
from engine.runners import evaluate as E  # noqa: E402
from engine.runners import export as X  # noqa: E402
from foundation.errors import ConfigError, UserError  # noqa: E402

HAVE_ALL = all(importlib.util.find_spec(m) is not None for m in ("paddle2onnx", "openvino", "nncf"))
needs_int8 = pytest.mark.skipif(not HAVE_ALL, reason='paddle2onnx, openvino and nncf not installed '
                                '(pip install ".[cpu,hpi,int8]")')
CALIBRATION = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("int8") / "demo")
    generate_demo(root, train_identities=6, images_per_identity=4, val_identities=8, val_pairs=40, seed=3, workers=1)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_checkpoint(str(tmp_path_factory.mktemp("int8ckpt") / "model.pdparams"))


def read_yml(folder):
    with open(os.path.join(folder, "inference.yml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def kept(data, checkpoint, tmp_path_factory):
    """An export through the export runner with the gate wide open (int8_max_loss 100)."""
    if not HAVE_ALL:
        pytest.skip("int8 packages not installed")
    save_dir = str(tmp_path_factory.mktemp("int8kept") / "inference")
    cfg = config(Global__mode="export", Global__dataset_dir=data, Export__weight_path=checkpoint,
                 Export__save_dir=save_dir, Export__int8=True, Export__int8_calibration=CALIBRATION,
                 Export__int8_max_loss=100, Evaluate__batch_size=16)
    assert X.run(cfg) == 0
    return save_dir


# --------------------------------------------------------------------------- the decision, the choice
def test_the_gate_keeps_a_loss_up_to_the_maximum_and_refuses_above():
    passed, loss, reason = G.gate_decision(0.90, 0.899, 0.2)
    assert passed and loss == pytest.approx(0.1) and "int8 kept" in reason
    passed, loss, _ = G.gate_decision(0.90, 0.898, 0.2)  # exactly the maximum: kept
    assert passed and loss == pytest.approx(0.2)
    passed, loss, reason = G.gate_decision(0.6717, 0.6317, 0.2)
    assert not passed and loss == pytest.approx(4.0)
    assert reason == ("int8 refused: val accuracy 63.17 % int8 vs 67.17 % fp32, a loss of 4.00 points "
                      "(above Export.int8_max_loss 0.2)")
    assert G.gate_decision(0.5, 0.52, 0.0)[0]  # int8 better than fp32: kept


def test_int8_is_asked_for_by_name_only_and_runs_on_openvino():
    assert B.resolve({"precision": "int8"}, "MobileFaceNet", 2)[:3] == ("openvino", "int8", 2)
    assert B.resolve({"backend": "openvino", "precision": "int8", "num_threads": 1}, "MobileFaceNet", 2)[:3] == \
        ("openvino", "int8", 1)
    for backend in ("onnxruntime", "paddle"):
        with pytest.raises(ConfigError, match="int8 runs on OpenVINO only"):
            B.resolve({"backend": backend, "precision": "int8"}, "MobileFaceNet", 2)
    for flags in ({"amx_bf16"}, {"avx512_bf16"}, set()):
        for installed in (lambda b: True, lambda b: b == "paddle"):
            assert B.choose_backend("MobileFaceNet", flags=flags, installed=installed)[1] != "int8"
    assert all(p != "int8" for _, p in B.AUTO_CANDIDATES)


def test_export_int8_needs_the_onnx_format(checkpoint, tmp_path):
    cfg = config(Global__mode="export", Export__weight_path=checkpoint, Export__save_dir=str(tmp_path / "x"),
                 Export__formats="[paddle]", Export__int8=True)
    with pytest.raises(ConfigError, match="Export.int8 quantizes inference.onnx"):
        X.run(cfg)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError):
        config(Export__int8_max_loss=-1)


def test_a_folder_without_a_passed_int8_record_refuses_int8(checkpoint, tmp_path):
    save_dir = str(tmp_path / "inference")
    export_checkpoint(checkpoint, "MobileFaceNet", save_dir=save_dir)
    with pytest.raises(UserError, match="has no int8 model: export it with -o Export.int8=True"):
        InferenceModel(save_dir, use_hpip=True, hpi_config={"precision": "int8"})


# --------------------------------------------------------------------------- end to end
@needs_int8
def test_a_kept_int8_model_is_recorded_and_runs(kept, data, tmp_path):
    rec = read_yml(kept)["Int8"]
    assert os.path.isfile(os.path.join(kept, C.INT8_FILE_NAME)) and rec["file"] == C.INT8_FILE_NAME
    assert rec["passed"] is True and rec["max_loss_points"] == 100
    assert 0 <= rec["fp32_acc"] <= 1 and 0 <= rec["int8_acc"] <= 1
    assert rec["loss_points"] == pytest.approx((rec["fp32_acc"] - rec["int8_acc"]) * 100, abs=1e-3)
    assert rec["pairs"] == 40 and rec["protocol"]["folds"] == 10 and rec["protocol"]["flip"] is True
    assert rec["calibration_images"] == CALIBRATION and rec["quantizer"].startswith("nncf ")
    assert f"{rec['int8_acc'] * 100:.2f} % int8 vs {rec['fp32_acc'] * 100:.2f} % fp32" in rec["reason"]

    fp32 = InferenceModel(kept)
    int8 = InferenceModel(kept, use_hpip=True, hpi_config={"precision": "int8", "num_threads": 1})
    assert (int8.backend, int8.precision, os.path.basename(int8.onnx_file)) == ("openvino", "int8", C.INT8_FILE_NAME)
    assert "openvino int8 (inference_int8.onnx), 1 thread(s)" == int8.describe()
    x = C.check_images(4)
    a, b = fp32.predict(x), int8.predict(x)
    assert b.shape == a.shape and np.isfinite(b).all()
    assert np.abs(a - b).max() > 1e-6  # it really is another model (quantized), not the fp32 one

    # the recorded accuracies are what evaluate measures with the same protocol on the same pairs
    measured = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        cfg = config(Global__mode="evaluate", Global__dataset_dir=data, Global__output=str(out),
                     Evaluate__weight_path=kept, Evaluate__batch_size=16, Predict__use_hpip=True,
                     Predict__hpi_config=f"{{backend: openvino, precision: {precision}}}")
        assert E.run(cfg) == 0
        with open(out / "evaluate_result.json") as f:
            measured[precision] = json.load(f)["metrics"]["acc"]
    assert measured["fp32"] == pytest.approx(rec["fp32_acc"], abs=1e-6)
    assert measured["int8"] == pytest.approx(rec["int8_acc"], abs=1e-6)

    # parameters changed since the gate ran: its int8 model is not theirs
    stale = str(tmp_path / "stale")
    shutil.copytree(kept, stale)
    with open(os.path.join(stale, "inference.pdiparams"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="quantized from other parameters"):
        InferenceModel(stale, use_hpip=True, hpi_config={"precision": "int8"})


@needs_int8
def test_a_refused_int8_model_leaves_no_file_and_says_why(data, checkpoint, tmp_path):
    save_dir = str(tmp_path / "inference")
    gate = functools.partial(G.quantize_with_gate, dataset_dir=data, calibration=CALIBRATION, max_loss=-100.0,
                             batch_size=16)  # no accuracy can lose less than -100 points
    paths = export_checkpoint(checkpoint, "MobileFaceNet", save_dir=save_dir, onnx=True, int8=gate)
    assert sorted(os.listdir(save_dir)) == ["inference.json", "inference.onnx", "inference.pdiparams",
                                            "inference.pdmodel", "inference.yml"]
    assert C.INT8_FILE_NAME not in paths["formats"]
    rec = read_yml(save_dir)["Int8"]
    assert rec["passed"] is False and rec["file"] is None
    assert rec["reason"].startswith("int8 refused: val accuracy ")
    assert f"{rec['int8_acc'] * 100:.2f} % int8 vs {rec['fp32_acc'] * 100:.2f} % fp32" in rec["reason"]
    with pytest.raises(UserError, match=r"export refused it \(int8 refused: val accuracy .* % int8 vs .* % fp32"):
        InferenceModel(save_dir, use_hpip=True, hpi_config={"precision": "int8"})
    assert not [n for n in os.listdir(os.path.dirname(save_dir)) if n != "inference"]  # no temporary left
