"""PaddleX drop-in: a PaddleX user's face recognition code runs with `from facefeat import ...` in
place of `from paddlex import ...`.

The calls are those of PaddleX's face recognition pipeline tutorial
(docs/pipeline_usage/tutorials/cv_pipelines/face_recognition.en.md), made with its function names,
arguments and files: create_pipeline("face_recognition") (the official model), build_index from a
gallery folder and its gallery.txt, save, predict on a group photo with the index object and, through
a copied pipeline config, with the saved folder; print, save_to_img, save_to_json, json and img; IVF
build, append and remove with a remove_ids.txt; then the four HTTP operations with the request
bodies its Python client sends. Every field PaddleX documents is checked. The official model is a
random-init one served on loopback in PaddleX's layout; the faces are demo faces YuNet detects."""
import base64
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import requests
from _tiny_face_model import demo_face_photo, export_random_model, official_model_mirror

from benchmarks.loopback_service import Service

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GALLERY = {"Chandler": ("p00000/00", "p00000/03"), "Joey": ("p00001/00",), "Ross": ("p00000/05",)}
BOX_FIELDS = {"labels", "rec_scores", "det_score", "coordinate"}  # PaddleX's, each present in ours


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    return export_random_model(tmp_path_factory.mktemp("m"))


@pytest.fixture
def work(random_model, tmp_path, monkeypatch):
    """The tutorial's working folder: face_demo_gallery/ (images/<ID>/, gallery.txt, remove_ids.txt)
    and friends1.jpg (two gallery faces side by side), with the official model on loopback."""
    root = tmp_path / "work"
    lines = []
    for label, photos in GALLERY.items():
        (root / "face_demo_gallery" / "images" / label).mkdir(parents=True)
        for k, photo in enumerate(photos):
            cv2.imwrite(str(root / "face_demo_gallery" / "images" / label / f"{label}{k:05d}.jpg"),
                        demo_face_photo(photo))
            lines.append(f"images/{label}/{label}{k:05d}.jpg {label}")
    (root / "face_demo_gallery" / "gallery.txt").write_text("\n".join(lines) + "\n")
    (root / "face_demo_gallery" / "remove_ids.txt").write_text("1\n")
    cv2.imwrite(str(root / "friends1.jpg"), np.hstack([demo_face_photo("p00000/05"), demo_face_photo("p00001/00")]))
    monkeypatch.chdir(root)
    with official_model_mirror(random_model, tmp_path, monkeypatch):
        yield root


def test_the_tutorials_python_calls(work, capsys):
    from PIL import Image

    from facefeat import create_pipeline

    pipeline = create_pipeline(pipeline="face_recognition")
    index_data = pipeline.build_index(gallery_imgs="face_demo_gallery", gallery_label="face_demo_gallery/gallery.txt")
    index_data.save("face_index")
    assert {"vector.index", "id_map.yaml"} <= set(os.listdir("face_index"))
    assert index_data.index_info["id_map"] == {0: "Chandler", 1: "Chandler", 2: "Joey", 3: "Ross"}

    output = pipeline.predict("friends1.jpg", index=index_data)
    for res in output:
        res.print()
        res.save_to_img("./output/")
        res.save_to_json("./output/")
    assert "friends1.jpg" in capsys.readouterr().out
    assert sorted(os.listdir("output")) == ["friends1_res.jpg", "friends1_res.json"]  # the input's suffix kept
    saved = json.loads((work / "output" / "friends1_res.json").read_text())
    assert saved == res.json["res"] and saved["input_path"] == "friends1.jpg"  # the inner dict, as PaddleX saves
    left, right = sorted(saved["boxes"], key=lambda b: b["coordinate"][0])
    for box, who in ((left, "Ross"), (right, "Joey")):
        assert BOX_FIELDS <= set(box) and len(box["coordinate"]) == 4 and 0 < box["det_score"] <= 1
        assert box["labels"][0] == who and len(box["labels"]) == len(box["rec_scores"]) == 4  # all of top-5 there are
        assert box["rec_scores"] == sorted(box["rec_scores"], reverse=True)
    drawn = res.img["res"]
    assert isinstance(drawn, Image.Image) and drawn.size == (640, 320)
    res.print(json_format=True)
    assert json.loads(capsys.readouterr().out) == res.json
    res.print(format_json=True)  # the name PaddleX's tutorial table uses
    assert json.loads(capsys.readouterr().out) == res.json

    # a pipeline config of one's own, and the saved index by its folder
    os.makedirs("my_path")
    shutil.copyfile(os.path.join(REPO_ROOT, "configs", "face_recognition", "pipeline.yaml"),
                    "my_path/face_recognition.yaml")
    pipeline = create_pipeline(pipeline="./my_path/face_recognition.yaml")
    output = pipeline.predict("friends1.jpg", index="face_index")
    for res in output:
        res.print()
        res.save_to_json("./output/")
        res.save_to_img("./output/")
    assert sorted(b["labels"][0] for b in res["boxes"]) == ["Joey", "Ross"]


def test_the_tutorials_append_and_remove(work):
    from facefeat import create_pipeline

    pipeline = create_pipeline(pipeline="face_recognition")
    index_data = pipeline.build_index(gallery_imgs="face_demo_gallery", gallery_label="face_demo_gallery/gallery.txt",
                                      index_type="IVF", metric_type="IP")
    index_data = pipeline.append_index(gallery_imgs="face_demo_gallery", gallery_label="face_demo_gallery/gallery.txt",
                                       index=index_data)
    index_data = pipeline.remove_index(remove_ids="face_demo_gallery/remove_ids.txt", index=index_data)
    index_data.save("face_index")
    assert index_data.index_type == "IVF" and index_data.metric_type == "IP"
    assert sorted(index_data.id_map) == [0, 2, 3, 4, 5, 6, 7] and index_data.id_map[4] == "Chandler"
    # HNSW32, PaddleX's name and its default type
    assert pipeline.build_index("face_demo_gallery", "face_demo_gallery/gallery.txt", index_type="HNSW32").index_type \
        == "HNSW32"


def test_the_tutorials_service_calls(random_model, work, tmp_path):
    """The client's four operations, its request bodies and the fields it reads."""
    service = Service(random_model, tmp_path / "indexes", tmp_path / "log")
    api = service.url

    def b64(path):
        with open(path, "rb") as f:
            return base64.b64encode(f.read()).decode("ascii")

    photos = sorted(str(p) for p in work.glob("face_demo_gallery/images/*/*.jpg"))  # Chandler x2, Joey, Ross
    try:
        pairs = [{"image": b64(photos[i]), "label": f"ID{i}"} for i in range(3)]
        resp = requests.post(f"{api}/face-recognition-index-build", json={"imageLabelPairs": pairs}, timeout=120)
        assert resp.status_code == 200
        built = resp.json()["result"]
        assert built["imageCount"] == 3 and isinstance(built["indexKey"], str)
        resp = requests.post(f"{api}/face-recognition-index-add", timeout=120, json={
            "imageLabelPairs": [{"image": b64(photos[3]), "label": "ID2"}], "indexKey": built["indexKey"]})
        assert resp.status_code == 200 and resp.json()["result"]["imageCount"] == 4
        resp = requests.post(f"{api}/face-recognition-index-remove", timeout=60,
                             json={"ids": [1], "indexKey": built["indexKey"]})
        assert resp.status_code == 200 and resp.json()["result"]["imageCount"] == 3
        resp = requests.post(f"{api}/face-recognition-infer", timeout=120,
                             json={"image": b64(work / "friends1.jpg"), "indexKey": built["indexKey"]})
        assert resp.status_code == 200
        body = resp.json()
        assert body["errorCode"] == 0 and body["errorMsg"] == "Success" and len(body["logId"]) == 36
        result = body["result"]
        drawn = cv2.imdecode(np.frombuffer(base64.b64decode(result["image"]), np.uint8), cv2.IMREAD_COLOR)
        assert drawn.shape == (320, 640, 3)
        assert len(result["faces"]) == 2
        for face in result["faces"]:
            assert len(face["bbox"]) == 4 and 0 < face["score"] <= 1
            assert all(set(r) == {"label", "score"} for r in face["recResults"])
    finally:
        service.stop()


def test_serving_visualize_in_the_pipeline_config(random_model, work, tmp_path):
    """PaddleX's `Serving: visualize: False`: no image unless the request asks for one."""
    service = Service(random_model, tmp_path / "indexes", tmp_path / "log", "Serving.visualize=False")
    try:
        photo = base64.b64encode((work / "friends1.jpg").read_bytes()).decode("ascii")
        status, r = service.post("/face-recognition-infer", {"image": photo})
        assert status == 200 and r["result"]["image"] is None
        status, r = service.post("/face-recognition-infer", {"image": photo, "visualize": True})
        assert status == 200 and r["result"]["image"]
    finally:
        service.stop()


def test_paddlex_hpi_config_and_pp_option_are_understood(random_model):
    from engine.inference.backends import pp_option_settings, translate_hpi_config
    from facefeat import create_model
    from foundation.errors import ConfigError

    assert translate_hpi_config({"backend": "paddle", "backend_config": {"cpu_num_threads": 3, "run_mode": "mkldnn"},
                                 "auto_config": False, "model_name": "MobileFaceNet", "device_type": "cpu"}) \
        == {"backend": "paddle", "num_threads": 3, "precision": "fp32"}
    assert translate_hpi_config({"auto_paddle2onnx": False}) == {"auto_paddle2onnx": False}
    with pytest.raises(ConfigError, match="tensorrt runs on NVIDIA GPUs"):
        translate_hpi_config({"backend": "tensorrt"})
    with pytest.raises(ConfigError, match="auto_config=False needs hpi_config.backend"):
        translate_hpi_config({"auto_config": False})

    class Option:  # what PaddleX's PaddlePredictorOption exposes
        run_mode, cpu_threads, device_type, device_id = "mkldnn", 1, "cpu", None

    assert pp_option_settings(Option()) == {"run_mode": "mkldnn", "num_threads": 1, "device": "cpu"}
    with pytest.raises(ConfigError, match="trt_fp16"):
        pp_option_settings({"run_mode": "trt_fp16"})
    model = create_model(model_dir=random_model, pp_option=Option(), use_hpip=True,
                         hpi_config={"backend": "paddle", "backend_config": {"cpu_num_threads": 1}})
    assert (model.model.backend, model.model.num_threads) == ("paddle", 1)


def test_create_pipeline_takes_a_nested_config_as_paddlex_does(random_model):
    from facefeat import create_pipeline

    pipe = create_pipeline("face_recognition", config={"SubModules": {"Recognition": {"model_dir": random_model,
                                                                                      "batch_size": 2}},
                                                       "rec_topk": 3})
    assert (pipe.batch_size, pipe.rec_topk, pipe.model.model_dir) == (2, 3, random_model)
