"""High-performance inference (use_hpip): the backend choice, ONNX export and its check, the
ONNX cache, and the same answers from every installed backend (OpenVINO, ONNX Runtime, Paddle).

Backends that are not installed are skipped by name (pip install ".[cpu,hpi]" installs them);
the tests of the choice and of the messages need none of them.
"""
import glob
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
import yaml
from _tiny_face_model import config, make_face_images, make_pair_dataset

from foundation.runtime import set_threads

set_threads(2)
paddle = pytest.importorskip("paddle")

from benchmarks.loopback_service import calibrate_batchnorm  # noqa: E402
from engine.inference import backends as B  # noqa: E402
from engine.inference import onnx_convert as C  # noqa: E402
from engine.inference.executors import onnx_executor  # noqa: E402
from engine.inference.folder import export_inference  # noqa: E402
from engine.inference.model import InferenceModel  # noqa: E402
from engine.inference.predictor import create_model  # noqa: E402
from engine.runners import evaluate as E  # noqa: E402
from engine.runners import export as X  # noqa: E402
from engine.runners import predict as P  # noqa: E402
from foundation.errors import ConfigError, UserError  # noqa: E402
from models import build_backbone  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LFW = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "lfw_dev", "images"))
HAVE = {b: B.is_installed(b) for b in B.BACKENDS}
HAVE_P2O = importlib.util.find_spec("paddle2onnx") is not None
HAVE_ONNX_RUNNER = HAVE["onnxruntime"] or HAVE["openvino"]
needs_p2o = pytest.mark.skipif(not (HAVE_P2O and HAVE_ONNX_RUNNER),
                               reason='paddle2onnx and onnxruntime/openvino not installed (pip install ".[cpu,hpi]")')
CPU_BF16 = bool(B.cpu_bf16_class())


def face_crops(n=8):
    """BGR 112x112 faces: real LFW photos (centre crop) where ../shared is present, else synthetic."""
    paths = sorted(glob.glob(os.path.join(LFW, "*", "*.jpg")))[:n] if os.path.isdir(LFW) else []
    if len(paths) == n:
        return [cv2.resize(cv2.imread(p)[69:181, 69:181], (112, 112)) for p in paths], "LFW photos"
    return list(make_face_images(n_people=n, per_person=1).values()), "synthetic faces"


@pytest.fixture(scope="module")
def faces():
    return face_crops()


@pytest.fixture(scope="module")
def backbone(faces):
    """MobileFaceNet (random weights, fixed seed) with BatchNorm statistics from the faces, so its
    features have a realistic scale."""
    from engine.inference.folder import Preprocess

    paddle.seed(0)
    pre = Preprocess()
    return calibrate_batchnorm(build_backbone("MobileFaceNet"), paddle.to_tensor(np.stack([pre(f) for f in faces[0]])))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty model cache for the test (foundation.runtime.cache_dir reads XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "facefeat" / "onnx"


@pytest.fixture(scope="module")
def folder(backbone, tmp_path_factory):
    """An export with inference.onnx when paddle2onnx is installed (else the Paddle files only)."""
    save_dir = str(tmp_path_factory.mktemp("hpi") / "inference")
    paths = export_inference(backbone, save_dir, "MobileFaceNet", onnx=HAVE_P2O and HAVE_ONNX_RUNNER)
    return save_dir, paths


# --------------------------------------------------------------------------- choosing a backend
def test_auto_choice_follows_the_cpu_flags_and_what_is_installed():
    everything = lambda b: True  # noqa: E731
    no_openvino = lambda b: b != "openvino"  # noqa: E731
    for flags in ({"avx512f", "amx_bf16", "avx512_bf16"}, {"avx512f", "avx512_bf16"}):
        for model in ("MobileFaceNet", "ResNet50_face", "SomethingElse"):
            assert B.choose_backend(model, flags, everything)[:2] == ("openvino", "bf16")
    assert B.choose_backend("MobileFaceNet", {"avx2", "avx512f"}, everything)[:2] == ("openvino", "fp32")
    assert B.choose_backend("ResNet50_face", {"avx2"}, everything)[:2] == ("openvino", "fp32")
    backend, precision, why = B.choose_backend("MobileFaceNet", {"amx_bf16"}, no_openvino)
    assert (backend, precision) == ("paddle", "fp32") and '.[cpu,hpi]' in why  # not onnxruntime
    assert B.choose_backend("MobileFaceNet", {"avx2"}, no_openvino)[:2] == ("paddle", "fp32")
    assert B.choose_backend("MobileFaceNet", {"amx_bf16"}, everything, precision="fp32")[:2] == ("openvino", "fp32")
    assert B.choose_backend("MobileFaceNet", {"amx_bf16"}, no_openvino, precision="bf16")[:2] == ("paddle", "bf16")
    assert B.choose_backend("MobileFaceNet", {"amx_bf16"}, everything, device_kind="gpu")[:2] == ("paddle", "fp32")


def test_the_table_is_what_the_choice_reads():
    """The choice is the fastest candidate of the measurements, not a fixed order: make Paddle the
    fastest in a copy of the table and auto picks it."""
    table = B.PRIOR_MEASUREMENTS["avx512_bf16"]["MobileFaceNet"]
    assert table[("openvino", "bf16")][1] > table[("openvino", "fp32")][1] > table[("paddle", "fp32")][1]
    saved = dict(table)
    try:
        table[("paddle", "fp32")] = (1.0, 10_000)
        assert B.choose_backend("MobileFaceNet", {"avx512_bf16"}, lambda b: True)[:2] == ("paddle", "fp32")
    finally:
        table.clear()
        table.update(saved)


def test_hpi_config_is_checked():
    with pytest.raises(ConfigError, match="unknown key.*backends"):
        B.check_hpi_config({"backends": "openvino"})
    with pytest.raises(ConfigError, match="tensorrt runs on NVIDIA GPUs.*use one of paddle, openvino, onnxruntime"):
        B.check_hpi_config({"backend": "tensorrt"})
    with pytest.raises(ConfigError, match="precision 'fp16' is not one of fp32, bf16, int8"):
        B.check_hpi_config({"precision": "fp16"})  # int8: tests/test_int8.py
    with pytest.raises(ConfigError, match="num_threads"):
        B.check_hpi_config({"num_threads": 0})
    with pytest.raises(ConfigError, match="onnxruntime has no bf16"):
        B.resolve({"backend": "onnxruntime", "precision": "bf16"}, "MobileFaceNet", 2)
    assert B.resolve({"backend": "paddle", "num_threads": 1}, "MobileFaceNet", 2)[:3] == ("paddle", "fp32", 1)
    with pytest.raises(ConfigError, match="CPU only"):
        B.resolve({"backend": "openvino"}, "MobileFaceNet", 2, device_kind="gpu")


def test_yaml_keys_reach_the_settings(tmp_path):
    cfg = config(Predict__use_hpip=True, Predict__hpi_config__backend="onnxruntime", Predict__hpi_config__num_threads=1)
    assert B.hpi_settings(cfg.Predict) == (True, {"backend": "onnxruntime", "num_threads": 1})
    assert B.hpi_settings(config().Predict) == (False, {})
    with pytest.raises(ConfigError, match="Predict.hpi_config.backend must be one of paddle, openvino, onnxruntime"):
        config(Predict__hpi_config__backend="openvno")


def test_a_missing_backend_is_one_line_naming_the_extra(folder, monkeypatch):
    save_dir, _ = folder
    real = importlib.util.find_spec
    monkeypatch.setattr(B.importlib.util, "find_spec", lambda name, *a: None if name in ("openvino", "onnxruntime",
                                                                                          "paddle2onnx") else real(name, *a))
    with pytest.raises(UserError) as e:
        onnx_executor("openvino", os.path.join(save_dir, "inference.onnx"))
    assert 'pip install ".[cpu,hpi]"' in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match=r'onnxruntime.*pip install "\.\[cpu,hpi\]"'):
        InferenceModel(os.path.join(save_dir), use_hpip=True, hpi_config={"backend": "onnxruntime"})
    # automatic with nothing installed: the plain Paddle path, as without use_hpip
    model = InferenceModel(save_dir, use_hpip=True)
    assert (model.backend, model.precision) == ("paddle", "fp32")
    x = C.check_images(2)
    assert np.abs(model.predict(x) - InferenceModel(save_dir).predict(x)).max() < 1e-6


# --------------------------------------------------------------------------- export and the cache
@needs_p2o
def test_export_writes_a_checked_onnx_model(folder, cache):
    save_dir, paths = folder
    assert "inference.onnx" in paths["formats"]
    with open(os.path.join(save_dir, "inference.yml"), encoding="utf-8") as f:
        rec = yaml.safe_load(f)["Onnx"]
    assert rec["file"] == "inference.onnx" and rec["opset"] == C.OPSET
    assert rec["min_cosine"] >= C.CHECK_COSINE and rec["max_rel_diff"] <= rec["tolerance"]
    backend = "openvino" if HAVE["openvino"] else "onnxruntime"
    model = InferenceModel(save_dir, use_hpip=True, hpi_config={"backend": backend, "precision": "fp32"})
    assert model.onnx_file == os.path.join(save_dir, "inference.onnx")  # the folder's own, no conversion
    assert not cache.exists()


@needs_p2o
def test_export_refuses_an_onnx_model_above_the_tolerance(backbone, tmp_path):
    save_dir = str(tmp_path / "inference")
    export_inference(backbone, save_dir, "MobileFaceNet", program_format=False)
    before = sorted(os.listdir(save_dir))
    with pytest.raises(UserError, match="disagrees with Paddle.*tolerance 1e-12.*not written"):
        export_inference(backbone, save_dir, "MobileFaceNet", program_format=False, onnx=True, onnx_tolerance=1e-12)
    assert sorted(os.listdir(save_dir)) == before  # the earlier export is untouched


def test_export_formats_are_checked():
    with pytest.raises(ConfigError, match="must include paddle"):
        X.wants_onnx(["onnx"])
    with pytest.raises(ConfigError, match="tflite is not one of paddle, onnx"):
        X.wants_onnx(["paddle", "tflite"])
    assert X.wants_onnx(["paddle"]) is False and X.wants_onnx(["paddle", "onnx"]) is True
    assert X.wants_onnx(None) is HAVE_P2O


@needs_p2o
def test_a_folder_without_onnx_converts_once_into_the_cache_from_either_format(backbone, tmp_path, cache,
                                                                               monkeypatch):
    save_dir = str(tmp_path / "inference")
    export_inference(backbone, save_dir, "MobileFaceNet")  # .json + .pdmodel, no ONNX
    backend = "onnxruntime" if HAVE["onnxruntime"] else "openvino"
    hpi = {"backend": backend, "precision": "fp32"}
    x = C.check_images(3, seed=5)
    ref = InferenceModel(save_dir).predict(x)
    feats = {}
    for fmt in ("program", "pir"):  # inference.pdmodel and inference.json both convert
        model = InferenceModel(save_dir, use_hpip=True, hpi_config=hpi, prefer_format=fmt)
        assert model.onnx_file.startswith(str(cache)) and model.format == fmt
        feats[fmt] = model.predict(x)
        assert C.compare_features(ref, feats[fmt])["min_cosine"] >= 0.9999
    assert len(os.listdir(cache)) == 2  # one entry per program file
    record = json.loads(open(os.path.join(os.path.dirname(model.onnx_file), "check.json")).read())
    assert record["min_cosine"] >= C.CHECK_COSINE

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(C, "convert_checked", no_conversion)
    again = InferenceModel(save_dir, use_hpip=True, hpi_config=hpi)
    assert np.array_equal(again.predict(x), feats["program"])
    # other weights: another key, so a stale ONNX model is never run
    paddle.seed(7)
    export_inference(build_backbone("MobileFaceNet"), save_dir, "MobileFaceNet", program_format=False)
    with pytest.raises(AssertionError, match="converted again"):
        InferenceModel(save_dir, use_hpip=True, hpi_config=hpi)


# --------------------------------------------------------------------------- the same answers
AGREEMENT = [("paddle", "fp32"), ("paddle", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"),
             ("onnxruntime", "fp32")]


# bf16 against fp32, lowest cosine: a trained model has to give 0.995 on real faces (issue 15);
# measured on the lfw_dev-trained MobileFaceNet over 32 LFW crops: OpenVINO bf16 0.99934, Paddle
# bf16 0.99977. The random-weights net of these tests amplifies rounding more (OpenVINO bf16 0.9926
# on the same photos), so it is held to 0.99; FACEFEAT_TRAINED_MODEL=<inference folder> runs the
# 0.995 bound on a trained model.
BF16_COSINE_RANDOM_NET, BF16_COSINE_TRAINED = 0.99, 0.995


def _check_agreement(save_dir, imgs, backend, precision, bf16_cosine):
    if not HAVE[backend]:
        pytest.skip(f'{backend} is not installed (pip install ".[cpu,hpi]")')
    if backend != "paddle" and not HAVE_P2O:
        pytest.skip('paddle2onnx is not installed (pip install ".[cpu,hpi]")')
    if precision == "bf16" and not CPU_BF16:
        pytest.skip("this CPU has no native bf16 (avx512_bf16 or amx)")
    model = InferenceModel(save_dir, use_hpip=True, hpi_config={"backend": backend, "precision": precision})
    assert (model.backend, model.precision) == (backend, precision)
    x = np.stack([model.preprocess(f) for f in imgs])
    ref = InferenceModel(save_dir).predict(x)  # Paddle fp32, use_hpip off
    for n in (1, len(x)):  # batch 1 and a batch
        stats = C.compare_features(ref[:n], model.predict(x[:n]))
        need = 0.9999 if precision == "fp32" else bf16_cosine
        assert stats["min_cosine"] >= need, stats


@pytest.mark.parametrize("backend,precision", AGREEMENT, ids=[f"{b}-{p}" for b, p in AGREEMENT])
def test_every_installed_backend_gives_the_paddle_features(folder, faces, backend, precision, cache):
    _check_agreement(folder[0], faces[0], backend, precision, BF16_COSINE_RANDOM_NET)


@pytest.mark.skipif(not os.environ.get("FACEFEAT_TRAINED_MODEL"), reason="FACEFEAT_TRAINED_MODEL (a trained "
                    "inference folder) is not set")
@pytest.mark.parametrize("backend,precision", AGREEMENT, ids=[f"{b}-{p}" for b, p in AGREEMENT])
def test_a_trained_model_agrees_on_real_faces(backend, precision, cache):
    imgs, what = face_crops(32)
    if what != "LFW photos":
        pytest.skip("LFW photos not available at ../shared/data/lfw_dev")
    _check_agreement(os.environ["FACEFEAT_TRAINED_MODEL"], imgs, backend, precision, BF16_COSINE_TRAINED)


@needs_p2o
def test_predict_and_evaluate_run_through_the_chosen_backend(folder, tmp_path, cache, capsys):
    save_dir, _ = folder
    backend = "openvino" if HAVE["openvino"] else "onnxruntime"
    data = tmp_path / "data"
    make_pair_dataset(str(data))
    results = {}
    for hpip in (False, True):
        out = tmp_path / f"eval_{hpip}"
        cfg = config(Global__mode="evaluate", Global__dataset_dir=str(data), Global__output=str(out),
                     Evaluate__weight_path=save_dir, Evaluate__batch_size=5, Predict__use_hpip=hpip,
                     Predict__hpi_config__backend=backend)  # no precision: evaluate scores fp32
        assert E.run(cfg) == 0
        with open(out / "evaluate_result.json") as f:
            results[hpip] = json.load(f)["metrics"]["acc"]
        log = open(out / "evaluate.log").read()
        assert (f"{backend} fp32 (inference.onnx), 2 thread(s)" in log) is hpip
    assert abs(results[True] - results[False]) <= 0.001  # within 0.1 point
    images = str(data / "val" / "images")
    for hpip in (False, True):
        out = tmp_path / f"pred_{hpip}"
        cfg = config(Global__mode="predict", Predict__model_dir=save_dir, Global__output=str(out),
                     Predict__input=images, Predict__batch_size=4, Predict__use_hpip=hpip,
                     Predict__hpi_config=f"{{backend: {backend}, precision: fp32, num_threads: 1}}")
        assert P.run(cfg) == 0
    log = open(tmp_path / "pred_True" / "predict" / "predict.log").read()
    assert f"high-performance inference: {backend} fp32 (inference.onnx), 1 thread(s)" in log
    for name in sorted(os.listdir(tmp_path / "pred_False" / "predict")):
        if name.endswith("_res.json"):
            a, b = (np.array(json.load(open(tmp_path / d / "predict" / name))["feature"]) for d in ("pred_False", "pred_True"))
            assert float(a @ b) >= 0.9999


@needs_p2o
def test_create_model_takes_use_hpip(folder, faces, cache):
    save_dir, _ = folder
    plain = create_model(model_dir=save_dir, num_threads=2)
    fast = create_model(model_dir=save_dir, num_threads=2, use_hpip=True, hpi_config={"precision": "fp32"})
    assert fast.model.backend == ("openvino" if HAVE["openvino"] else "paddle")
    a, b = plain.feature(faces[0][0]), fast.feature(faces[0][0])
    assert float(a @ b) >= 0.9999


@needs_p2o
def test_the_recognition_pipeline_takes_use_hpip(folder, faces, cache):
    """create_pipeline(use_hpip=True, hpi_config=...) and SubModules.Recognition.use_hpip run the
    feature model on the chosen backend; its matches equal Paddle's."""
    from engine import create_pipeline

    save_dir, _ = folder
    config = {"SubModules.Recognition.model_dir": save_dir, "SubModules.Detection.enable": False}
    plain = create_pipeline("face_recognition", config=config)
    backend = "openvino" if HAVE["openvino"] else "onnxruntime"
    fast = create_pipeline("face_recognition", config=config, use_hpip=True,
                           hpi_config={"backend": backend, "precision": "fp32"})
    assert plain.model.backend == "paddle" and fast.model.backend == backend
    labels = [f"p{i}" for i in range(len(faces[0]))]
    a, b = plain.build_index(faces[0], labels), fast.build_index(faces[0], labels)
    for img in faces[0][:3]:
        (ra,), (rb,) = plain.predict(img, index=a), fast.predict(img, index=b)
        assert ra["boxes"][0]["labels"] == rb["boxes"][0]["labels"]
        np.testing.assert_allclose(ra["boxes"][0]["rec_scores"], rb["boxes"][0]["rec_scores"], atol=1e-3)
    from_yaml = create_pipeline("face_recognition", config=dict(config, **{
        "SubModules.Recognition.use_hpip": True, "SubModules.Recognition.hpi_config.backend": backend}))
    assert from_yaml.model.backend == backend
