"""A face model exported elsewhere, the way it arrives: PaddleClas layout (inference.pdmodel +
inference.pdiparams, no inference.yml) from a Paddle 2.x exporter, with prelu ops written before
they had `data_format` (tests/fixtures/make_paddle2_fixture.py made it). Plain Paddle runs it as
Paddle 2.6 did; use_hpip converts it to ONNX (with the attribute's default filled in) and runs it
on OpenVINO and ONNX Runtime with Paddle's features.

Backends that are not installed are skipped by name (pip install ".[cpu,hpi]" installs them).
"""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import yaml

from foundation.runtime import set_threads

set_threads(2)
pytest.importorskip("paddle")

from engine.inference import backends as B  # noqa: E402
from engine.inference import onnx_convert as C  # noqa: E402
from engine.inference.folder import program_input_shape  # noqa: E402
from engine.inference.model import InferenceModel  # noqa: E402
from engine.inference.predictor import create_model  # noqa: E402
from foundation.errors import UserError  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "paddle2_mobilefacenet")
MODEL_FILE = os.path.join(FIXTURE, "inference.pdmodel")
PARAMS_FILE = os.path.join(FIXTURE, "inference.pdiparams")
HAVE_P2O = importlib.util.find_spec("paddle2onnx") is not None
ONNX_BACKENDS = ("openvino", "onnxruntime")


def needs(backend):
    """Skip, naming what is missing, unless `backend` and the converter are installed."""
    missing = [p for p in (backend, "paddle2onnx") if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f'{" and ".join(missing)} not installed (pip install ".[cpu,hpi]")')


@pytest.fixture(scope="module")
def faces():
    """The fixture's pictures (uint8 BGR) and the features Paddle 2.6 computed from them."""
    return np.load(os.path.join(FIXTURE, "reference_images.npy")), np.load(os.path.join(FIXTURE, "reference_features.npy"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One empty model cache for the module: the fixture is converted once for every backend."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("foreign_cache")
        mp.setenv("XDG_CACHE_HOME", str(root))
        yield root / "facefeat" / "onnx"


def features(model, images):
    return model.predict(np.stack([model.preprocess(img) for img in images]))


def test_plain_paddle_runs_it_as_paddle_2_6_did(faces, capsys):
    images, recorded = faces
    model = InferenceModel(FIXTURE)
    assert (model.backend, model.format, model.embedding_size) == ("paddle", "program", 256)
    got = features(model, images)
    stats = C.compare_features(recorded, got)
    assert stats["min_cosine"] >= 0.9999 and stats["max_rel_diff"] <= 1e-4, stats
    # no inference.yml: the size comes from the program, the face pre-processing is assumed and said
    assert program_input_shape(MODEL_FILE) == [-1, 3, 112, 112]
    assert model.preprocess.size == (112, 112) and model.preprocess.mean == [0.5] * 3 and model.preprocess.rgb
    out = capsys.readouterr().out
    assert f"{FIXTURE} has no inference.yml" in out and "(x / 255 - 0.5) / 0.5" in out and "112x112" in out
    assert model.model_name == "paddle2_mobilefacenet"  # the folder's own name, not its parent's


def test_an_inference_yml_overrides_the_assumed_pre_processing(faces, tmp_path, capsys):
    images, _ = faces
    folder = shutil.copytree(FIXTURE, tmp_path / "with_yml")
    ops = [{"ResizeImage": {"size": [112, 112]}},
           {"NormalizeImage": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                               "channel_order": "bgr"}}, {"ToCHWImage": None}]
    with open(folder / "inference.yml", "w") as f:
        yaml.safe_dump({"PreProcess": {"transform_ops": ops}}, f)
    capsys.readouterr()
    model = InferenceModel(folder)
    assert model.preprocess.mean == [0.485, 0.456, 0.406] and not model.preprocess.rgb
    assert "has no inference.yml" not in capsys.readouterr().out
    x = images[0]
    want = (x.astype(np.float32) / 255 - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    np.testing.assert_allclose(model.preprocess(x), want.transpose(2, 0, 1), atol=1e-5)


def test_the_old_program_is_completed_only_where_it_lacks_attributes(tmp_path):
    """What paddle2onnx is given: the user's program plus prelu's data_format, nothing else; a
    program that lacks nothing is passed on as it is."""
    from paddle.base.proto import framework_pb2

    before = open(MODEL_FILE, "rb").read()
    model, params, filled = C.complete_program(MODEL_FILE, PARAMS_FILE, str(tmp_path))
    assert filled == {"prelu": ["data_format"]}
    assert open(MODEL_FILE, "rb").read() == before  # the user's file is untouched
    assert os.path.dirname(model) == str(tmp_path) and open(params, "rb").read() == open(PARAMS_FILE, "rb").read()
    old, new = (framework_pb2.ProgramDesc.FromString(open(p, "rb").read()) for p in (MODEL_FILE, model))
    for op_old, op_new in zip(old.blocks[0].ops, new.blocks[0].ops, strict=True):
        added = [a for a in op_new.attrs if a not in op_old.attrs]
        assert [(a.name, a.s) for a in added] == ([("data_format", "NCHW")] if op_old.type == "prelu" else [])
    again = tmp_path / "again"
    again.mkdir()
    assert C.complete_program(model, params, str(again)) == (model, params, {})
    assert os.listdir(again) == []


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_use_hpip_runs_it_on_each_onnx_backend_with_paddles_features(backend, faces, cache):
    needs(backend)
    images, recorded = faces
    model = create_model(model_dir=FIXTURE, use_hpip=True, hpi_config={"backend": backend, "precision": "fp32"})
    assert (model.model.backend, model.model.precision) == (backend, "fp32")
    assert model.model.onnx_file.startswith(str(cache))
    got = features(model.model, images)
    ref = features(InferenceModel(FIXTURE), images)  # Paddle 3, use_hpip off
    for n in (1, len(images)):
        assert C.compare_features(ref[:n], got[:n])["min_cosine"] >= 0.9999
    assert C.compare_features(recorded, got)["min_cosine"] >= 0.9999  # and Paddle 2.6's own
    with open(os.path.join(os.path.dirname(model.model.onnx_file), "check.json")) as f:
        record = json.load(f)
    assert record["filled_attributes"] == {"prelu": ["data_format"]} and record["min_cosine"] >= C.CHECK_COSINE


def test_the_automatic_choice_runs_it_too(faces, cache):
    images, _ = faces
    if not HAVE_P2O:
        pytest.skip('paddle2onnx not installed (pip install ".[cpu,hpi]")')
    want_backend, want_precision, _ = B.choose_backend("paddle2_mobilefacenet")
    ref = features(InferenceModel(FIXTURE), images)
    model = InferenceModel(FIXTURE, use_hpip=True)
    assert (model.backend, model.precision) == (want_backend, want_precision)
    assert C.compare_features(ref, features(model, images))["min_cosine"] >= (0.9999 if want_precision == "fp32" else 0.999)
    fp32 = InferenceModel(FIXTURE, use_hpip=True, hpi_config={"precision": "fp32"})
    assert C.compare_features(ref, features(fp32, images))["min_cosine"] >= 0.9999


def test_the_conversion_is_cached_by_file_digests(cache, monkeypatch):
    needs("onnxruntime")
    first = InferenceModel(FIXTURE, use_hpip=True, hpi_config={"backend": "onnxruntime"})
    monkeypatch.setattr(C, "convert_checked", lambda *a, **k: pytest.fail("converted twice"))
    assert InferenceModel(FIXTURE, use_hpip=True, hpi_config={"backend": "onnxruntime"}).onnx_file == first.onnx_file


@pytest.mark.parametrize("use_hpip", [False, True], ids=["paddle", "use_hpip"])
@pytest.mark.parametrize("size", [200_000, 0], ids=["cut_inside_a_tensor", "empty"])
def test_a_truncated_parameter_file_is_one_error_naming_it(tmp_path, use_hpip, size):
    folder = shutil.copytree(FIXTURE, tmp_path / "broken")
    params = folder / "inference.pdiparams"
    with open(params, "r+b") as f:
        f.truncate(size)
    with pytest.raises(UserError) as e:
        create_model(model_dir=str(folder), use_hpip=use_hpip)
    msg = str(e.value)
    assert str(params) in msg and "\n" not in msg and "download or export the model again" in msg
    assert ("cut short" in msg and "of 147" in msg) if size else "holds 0 tensors but inference.pdmodel needs 147" in msg


def test_the_parameter_check_counts_whole_tensors(tmp_path):
    """A file cut exactly between two tensors is still short of the program's 147; bytes after the
    last tensor are not a cut (Paddle judges them when it loads the file)."""
    from engine.inference.folder import _parameter_tensors, check_params_file

    data = open(PARAMS_FILE, "rb").read()
    with open(PARAMS_FILE, "rb") as f:
        assert _parameter_tensors(f, len(data)) == (147, len(data), False)
    cut = tmp_path / "inference.pdiparams"
    cut.write_bytes(data[:200_000])
    with open(cut, "rb") as f:
        whole, boundary, inside = _parameter_tensors(f, 200_000)
    assert inside and 0 < whole < 147
    cut.write_bytes(data[:boundary])
    with pytest.raises(UserError, match=f"holds {whole} tensors but inference.pdmodel needs 147"):
        check_params_file(str(cut), MODEL_FILE)
    cut.write_bytes(data + b"\0")
    check_params_file(str(cut), MODEL_FILE)
