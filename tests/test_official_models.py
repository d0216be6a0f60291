"""Official models by name: the download-once cache, tar checks and the offline message, proven
on a loopback HTTP server that serves a tar in the official layout (made from our own export)."""
import functools
import http.server
import io
import os
import tarfile
import threading

import numpy as np
import pytest

from engine.inference import official_models as O
from foundation.errors import UserError


def serve(root):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def official_tree(tmp_path_factory):
    """<root>/official_inference_model/paddle3.0.0/MobileFaceNet_infer.tar, as PaddleX publishes it."""
    import paddle

    from engine.inference.folder import export_inference
    from models import build_backbone

    root = tmp_path_factory.mktemp("www")
    paddle.seed(11)
    model_dir = export_inference(build_backbone("MobileFaceNet"), str(root / "build" / "MobileFaceNet_infer"),
                                 "MobileFaceNet", program_format=False)["dir"]
    folder = root / "official_inference_model" / "paddle3.0.0"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "MobileFaceNet_infer.tar", "w") as tar:
        tar.add(model_dir, arcname="MobileFaceNet_infer")
    return root, model_dir


def test_downloads_once_unpacks_and_predicts_like_the_export(official_tree, tmp_path, monkeypatch):
    from engine.inference.model import InferenceModel

    root, model_dir = official_tree
    httpd = serve(root)
    monkeypatch.setenv(O.ROOT_ENV, f"http://127.0.0.1:{httpd.server_address[1]}")
    cache = str(tmp_path / "cache")
    try:
        folder = O.official_model_dir("MobileFaceNet", cache=cache)
    finally:
        httpd.shutdown()
    assert os.path.basename(folder) == "MobileFaceNet_infer" and os.path.isfile(os.path.join(folder, "inference.json"))
    assert O.official_model_dir("MobileFaceNet", cache=cache) == folder  # the server is gone: from the cache
    x = np.random.default_rng(0).normal(size=(2, 3, 112, 112)).astype(np.float32)
    np.testing.assert_allclose(InferenceModel(folder, num_threads=1).predict(x),
                               InferenceModel(model_dir, num_threads=1).predict(x), atol=1e-5)


def test_offline_is_one_line_naming_the_url_and_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv(O.ROOT_ENV, "http://127.0.0.1:9")
    with pytest.raises(UserError, match=r"http://127.0.0.1:9/official_inference_model/paddle3.0.0/ResNet50_face_infer.tar"
                                        r".*model_dir=DIR"):
        O.official_model_dir("ResNet50_face", cache=str(tmp_path / "cache"))
    with pytest.raises(UserError, match="not an official face feature model"):
        O.official_model_dir("NoSuchNet", cache=str(tmp_path / "cache"))


def test_a_tar_reaching_outside_its_folder_is_refused(tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        data = b"x"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="refused to unpack member '../outside.txt'"):
        O.unpack_model_tar(str(path), str(tmp_path / "target"))
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "target").exists()


def test_inference_yml_preprocessing_is_honoured():
    """The standard section gives exactly the built-in pre-processing; other values are applied."""
    from datasets.transforms import preprocess
    from engine.inference.folder import Preprocess, inference_config

    img = np.random.default_rng(1).integers(0, 256, (150, 130, 3)).astype(np.uint8)
    np.testing.assert_allclose(Preprocess(inference_config("MobileFaceNet", 128))(img), preprocess(img), atol=1e-6)
    other = {"PreProcess": {"transform_ops": [
        {"ResizeImage": {"size": [96, 112]}},
        {"NormalizeImage": {"scale": "1./255.", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                            "order": "hwc"}},
        {"ToCHWImage": None}]}}
    out = Preprocess(other)(img)
    assert out.shape == (3, 112, 96)
    import cv2

    rgb = cv2.resize(img, (96, 112), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].astype(np.float32) / 255.0
    expected = ((rgb - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])).transpose(2, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    with pytest.raises(UserError, match="'CropImage' is not supported"):
        Preprocess({"PreProcess": {"transform_ops": [{"CropImage": {"size": 100}}]}})


def test_create_model_and_predict_by_name_use_the_official_model(official_tree, tmp_path, monkeypatch):
    """create_model("MobileFaceNet") and predict with Predict.model_dir=null go through the same
    download-once path (here served on loopback); the offline case names the URL and exits 1."""
    import subprocess
    import sys

    from engine import create_model

    root, _ = official_tree
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    httpd = serve(root)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"),
               **{O.ROOT_ENV: f"http://127.0.0.1:{httpd.server_address[1]}"})
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    monkeypatch.setenv(O.ROOT_ENV, env[O.ROOT_ENV])
    try:
        model = create_model("MobileFaceNet")
        assert model.embedding_size == 128 and "official_models" in model.model_dir
        import cv2

        cv2.imwrite(str(tmp_path / "face.png"), np.full((112, 112, 3), 120, np.uint8))
        cmd = [sys.executable, "main.py", "-c", "configs/face_recognition/MobileFaceNet.yaml", "-o", "Global.mode=predict",
               "-o", "Predict.model_dir=null", "-o", f"Predict.input={tmp_path / 'face.png'}",
               "-o", f"Global.output={tmp_path / 'out'}"]
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=180)
    finally:
        httpd.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.path.isfile(tmp_path / "out" / "predict" / "face_res.json")
    offline = dict(env, **{O.ROOT_ENV: "http://127.0.0.1:9", "XDG_CACHE_HOME": str(tmp_path / "empty_cache")})
    proc = subprocess.run(cmd, cwd=repo, env=offline, capture_output=True, text=True, timeout=180)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "http://127.0.0.1:9/official_inference_model" in errors[0]
