"""The Python examples of README.md and docs/*.md, run as written (in a temporary folder holding the
files they name), so the documented API and the real one cannot drift apart: the README's predict
example, the pipeline example of docs/pipeline.md, the high-performance inference example of
docs/inference.md and its example of a model exported elsewhere (the Paddle 2.x fixture). A page that gains a python block fails test_every_python_block_is_run_here until
a test here runs it. The official model the predict example asks for by name is served on loopback
in PaddleX's layout; faces are demo faces YuNet detects."""
import json
import os
import re
import shutil

import cv2
import pytest
from _tiny_face_model import demo_face_photo, export_random_model, official_model_mirror

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(f"docs/{n}" for n in os.listdir(os.path.join(REPO_ROOT, "docs")) if n.endswith(".md"))
BLOCKS = []  # (page, code) of every python block
for _page in PAGES:
    with open(os.path.join(REPO_ROOT, _page), encoding="utf-8") as _f:
        BLOCKS += [(_page, code) for code in re.findall(r"```python\n(.*?)```", _f.read(), re.S)]
DEMO_FACES = {"alice": ("p00000/00", "p00000/03"), "bob": ("p00001/00",)}  # YuNet finds these on a canvas


def block_with(page, text):
    """The one python block of `page` holding `text`, compiled with the page's name."""
    found = [code for p, code in BLOCKS if p == page and text in code]
    assert len(found) == 1, f"expected one python block with {text!r} in {page}, found {len(found)}"
    return compile(found[0], page, "exec")


RUN_HERE = [("README.md", "model.predict("), ("docs/pipeline.md", "create_pipeline("),
            ("docs/inference.md", '"backend": "onnxruntime"'), ("docs/inference.md", "a PaddleClas export"),
            ("docs/video.md", 'pipeline.predict("meeting.mp4"'), ("docs/clustering.md", "pipeline.cluster(")]


def test_every_python_block_is_run_here():
    for page, text in RUN_HERE:
        block_with(page, text)
    run = [(p, code) for p, code in BLOCKS if any(p == page and text in code for page, text in RUN_HERE)]
    assert len(BLOCKS) == len(run) == len(RUN_HERE), \
        f"python blocks not run by a test here: {[p for p, c in BLOCKS if (p, c) not in run]}"


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    return export_random_model(tmp_path_factory.mktemp("m"))


@pytest.fixture
def official_mirror(random_model, tmp_path, monkeypatch):
    """The official MobileFaceNet (here a random-init one) served on loopback in PaddleX's layout."""
    with official_model_mirror(random_model, tmp_path, monkeypatch):
        yield


def test_predict_example(random_model, official_mirror, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(random_model, work / "output" / "best_model" / "inference")
    (work / "faces").mkdir(parents=True)
    for name, photo in (("a.jpg", "p00000/00"), ("b.jpg", "p00000/03"), ("faces/c.jpg", "p00001/00")):
        cv2.imwrite(str(work / name), cv2.resize(demo_face_photo(photo), (112, 112)))
    monkeypatch.chdir(work)
    scope = {}
    exec(block_with("README.md", "model.predict("), scope)
    assert sorted(os.listdir(work / "output")) == ["a_res.json", "best_model", "c_res.json"]
    assert -1.0 <= float(scope["sim"]) <= 1.0 and scope["sim"].is_same in (True, False)


def test_pipeline_example(official_mirror, tmp_path, monkeypatch):
    work = tmp_path / "work"  # the pipeline's default model is the official one (the mirror's)
    shutil.copytree(os.path.join(REPO_ROOT, "configs"), work / "configs")
    for root, people in (("gallery", ("alice", "bob")), ("new", ("carol",))):
        lines = []
        for person in people:
            (work / root / "images" / person).mkdir(parents=True)
            for k, photo in enumerate(DEMO_FACES.get(person, ("p00000/05",))):
                cv2.imwrite(str(work / root / "images" / person / f"{k}.jpg"), demo_face_photo(photo))
                lines.append(f"images/{person}/{k}.jpg {person}")
        (work / root / "gallery.txt").write_text("\n".join(lines) + "\n")
    (work / "photos").mkdir()
    cv2.imwrite(str(work / "photos" / "bob_again.jpg"), demo_face_photo("p00001/00"))
    monkeypatch.chdir(work)
    scope = {}
    exec(block_with("docs/pipeline.md", "create_pipeline("), scope)
    assert sorted(os.listdir(work / "face_index")) == ["id_map.yaml", "meta.json", "vector.index"]
    assert len(scope["index"]) == 3 and scope["index"].labels == ["alice", "bob"]  # 3, carol (id 3) added, ids 3 and 7 removed
    assert sorted(os.listdir(work / "out")) == ["bob_again_res.jpg", "bob_again_res.json"]  # PaddleX's names
    assert scope["res"]["boxes"][0]["label"] == "bob"


def test_video_example(official_mirror, tmp_path, monkeypatch):
    """docs/video.md's example on a clip of demo faces (benchmarks/video_clips.py), the gallery being
    those faces as the clip shows them."""
    from benchmarks.video_clips import DEMO_SCRIPT, Appearance, background, demo_people, make_clip, render

    work = tmp_path / "work"
    shutil.copytree(os.path.join(REPO_ROOT, "configs"), work / "configs")
    faces = demo_people(os.path.join(REPO_ROOT, "dataset", "face_demo"))
    bg = background((640, 360))
    for k, a in enumerate(DEMO_SCRIPT):
        (work / "gallery" / a.person).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(work / "gallery" / a.person / f"{k}.png"),
                    render([Appearance(a.person, 0, 1, a.first, a.first)], faces, 0.0, (640, 360), bg))
    make_clip(work / "meeting.mp4", DEMO_SCRIPT, faces)
    monkeypatch.chdir(work)
    scope = {}
    exec(block_with("docs/video.md", 'pipeline.predict("meeting.mp4"'), scope)
    saved = json.loads((work / "output" / "meeting_res.json").read_text())
    assert saved["frames"] == 225 and len(saved["tracks"]) >= 3 and saved["timeline"]  # thresholds: the defaults
    assert scope["res"]["input_path"] == "meeting.mp4"


def test_high_performance_inference_example(random_model, tmp_path, monkeypatch):
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("paddle2onnx", "onnxruntime")):
        pytest.skip('the hpi extra is not installed (pip install ".[cpu,hpi]")')
    shutil.copytree(random_model, tmp_path / "output" / "best_model" / "inference")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the ONNX conversion goes here
    scope = {}
    exec(block_with("docs/inference.md", '"backend": "onnxruntime"'), scope)
    assert scope["model"].model.backend == "onnxruntime"


def test_a_model_exported_elsewhere_example(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("openvino") and not importlib.util.find_spec("paddle2onnx"):
        pytest.skip('openvino without paddle2onnx: install the whole hpi extra (pip install ".[cpu,hpi]")')
    shutil.copytree(os.path.join(REPO_ROOT, "tests", "fixtures", "paddle2_mobilefacenet"),
                    tmp_path / "MobileFaceNet_128_infer")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    scope = {}
    exec(block_with("docs/inference.md", "a PaddleClas export"), scope)
    assert scope["model"].embedding_size == 256


def test_clustering_example(random_model, tmp_path, monkeypatch):
    """docs/clustering.md's example on photos of demo faces YuNet detects: two photos of one face
    and one of another, then one more photo of the first."""
    work = tmp_path / "work"
    shutil.copytree(random_model, work / "output" / "best_model" / "inference")
    for folder, photos in (("photos", ("p00000/00", "p00000/00", "p00001/00")), ("more_photos", ("p00000/00",))):
        (work / folder).mkdir(parents=True)
        for k, photo in enumerate(photos):
            cv2.imwrite(str(work / folder / f"{k}.jpg"), demo_face_photo(photo))
    monkeypatch.chdir(work)
    scope = {}
    exec(block_with("docs/clustering.md", "pipeline.cluster("), scope)
    book = scope["book"]
    assert len(book.faces) == 4 and book.labels.tolist()[:2] == [1, 1] and book.labels[3] == 1
    assert book.names == {1: "Alice"}
    assert os.path.isfile(work / "output" / "clusters" / "overview.jpg")
