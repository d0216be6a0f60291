"""Settings reach the code they set, whichever way in: Index.ef_search reaches the faiss HNSW search in
recognize (command line) and in the service; Global.max_image_pixels reaches image decoding through
the Python API (create_model, create_pipeline) as it does through the command line."""
import base64
import os

import cv2
import numpy as np
import pytest
from _tiny_face_model import export_random_model, make_face_images

from engine.gallery.faiss_index import GalleryIndex

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(REPO_ROOT, "configs", "face_recognition", "pipeline.yaml")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_random_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """person_<p>/<k>.png face crops, 4 people x 3."""
    root = tmp_path_factory.mktemp("faces")
    for (p, k), img in make_face_images().items():
        (root / f"person_{p}").mkdir(exist_ok=True)
        cv2.imwrite(str(root / f"person_{p}" / f"{k}.png"), img)
    return root


@pytest.fixture
def hnsw_ef(monkeypatch):
    """The efSearch each HNSW search of a GalleryIndex actually ran with, in call order."""
    import faiss

    seen, search = [], GalleryIndex.search

    def spy(self, *args, **kwargs):
        out = search(self, *args, **kwargs)
        if self.index_type == "HNSW32":
            seen.append(faiss.downcast_index(self.index.index).hnsw.efSearch)
        return out

    monkeypatch.setattr(GalleryIndex, "search", spy)
    return seen


def crop_settings(model_dir, **more):
    return [f"SubModules.Recognition.model_dir={model_dir}", "SubModules.Detection.enable=False",
            *[f"{k}={v}" for k, v in more.items()]]


def cli(*overrides):
    from main import main

    return main(["-c", PIPELINE, *[x for o in overrides for x in ("-o", o)]])


def test_ef_search_reaches_the_hnsw_search_of_recognize(model_dir, faces, tmp_path, hnsw_ef):
    ix = str(tmp_path / "ix")
    common = crop_settings(model_dir, index=ix, **{"Global.output": tmp_path / "out", "Index.index_type": "HNSW32"})
    assert cli("Global.mode=build_index", f"Index.gallery={faces}", *common) == 0
    query = faces / "person_1" / "2.png"
    assert cli("Global.mode=recognize", f"Predict.input={query}", "Index.ef_search=123", *common) == 0
    assert hnsw_ef == [123]
    assert cli("Global.mode=recognize", f"Predict.input={query}", "Index.ef_search=77", *common) == 0
    assert hnsw_ef == [123, 77]


def test_ef_search_reaches_the_service(model_dir, faces, tmp_path, hnsw_ef):
    """The served index (the configured one, searched without an indexKey, as PaddleX does) and every
    index the service's store loads get Index.ef_search."""
    from starlette.testclient import TestClient

    from engine import create_pipeline
    from engine.config.loader import load_config
    from engine.serving.app import app_from_config

    ix = str(tmp_path / "ix")
    crops = {"SubModules.Recognition.model_dir": model_dir, "SubModules.Detection.enable": False}
    index = create_pipeline(config=crops).build_index(str(faces), index_type="HNSW32")
    index.save(ix)
    cfg = load_config(PIPELINE, crop_settings(model_dir, index=ix, **{"Index.ef_search": 91,
                                                                      "Serve.index_root": tmp_path / "keys"}))
    app, pipeline, store = app_from_config(cfg)
    photo = base64.b64encode((faces / "person_2" / "2.png").read_bytes()).decode()
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answer = client.post("/face-recognition-infer", json={"image": photo, "visualize": False}).json()
        assert answer["errorCode"] == 0, answer
        assert answer["result"]["faces"][0]["label"] == "person_2"
        assert hnsw_ef == [91]
        assert client.get("/health").json()["defaultIndex"] == {"name": ix, "faces": 12}  # what the page shows
        key = store.create(index)  # an index the service stores: loaded back with the same settings
    store._cache.clear()
    assert store.get(key).ef_search == 91 and pipeline.gallery.ef_search == 91


def test_max_image_pixels_reaches_create_model(model_dir, faces):
    from engine import create_model
    from foundation.errors import UserError

    photo = str(faces / "person_0" / "0.png")  # 112 x 112 = 12544 pixels
    assert len(list(create_model(model_dir=model_dir, max_image_pixels=12544).predict(photo))) == 1
    small = create_model(model_dir=model_dir, max_image_pixels=12543)
    with pytest.raises(UserError, match=r"112x112 .* above the limit .*Global.max_image_pixels"):
        list(small.predict(photo))


def test_max_image_pixels_reaches_create_pipeline(model_dir, faces):
    from facefeat import create_pipeline
    from foundation.errors import UserError

    crops = {"SubModules.Recognition.model_dir": model_dir, "SubModules.Detection.enable": False}
    pipe = create_pipeline(config={**crops, "Global.max_image_pixels": 12543})
    assert pipe.max_image_pixels == 12543
    with pytest.raises(UserError, match=r"112x112 .* above the limit"):
        list(pipe.predict(str(faces / "person_0" / "0.png"), index=pipe.new_index()))
    # gallery images above the limit are skipped and named, not decoded
    index = create_pipeline(config=crops).build_index(str(faces))
    enrolment = pipe.enroll([(str(faces / "person_0" / "0.png"), "p0")], progress=False)
    assert enrolment.skipped_positions == [0] and "Global.max_image_pixels" in enrolment.skipped[0][1]
    # a numpy image is already decoded: no limit applies to it
    assert len(list(pipe.predict(np.zeros((200, 200, 3), np.uint8), index=index))) == 1
