"""Recognition pipeline end to end: detector, alignment, build/append/remove/recognize from Python and
the CLI, with a random-init MobileFaceNet exported to a temporary folder (no training)."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from _tiny_face_model import export_random_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(REPO_ROOT, "configs", "face_recognition", "pipeline.yaml")
LFW = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "lfw_dev"))
needs_lfw = pytest.mark.skipif(not os.path.isdir(LFW), reason="LFW photos not available at ../shared/data/lfw_dev")
LFW_PEOPLE = ("Colin_Powell", "Tony_Blair")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_random_model(tmp_path_factory.mktemp("model"))


def make_crops(n_people=4, per_person=3, seed=3, size=112):
    """{(person, k): BGR crop}: a smooth random picture per person plus light noise per photo, so even
    an untrained network maps a person's photos close together and different people apart."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in range(n_people):
        base = cv2.resize(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), (size, size),
                          interpolation=cv2.INTER_CUBIC).astype(int)
        for k in range(per_person):
            out[(p, k)] = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """person_<p>/<k>.png for 4 people x 3 crops (near-duplicates per person, distinct across)."""
    root = tmp_path_factory.mktemp("faces")
    for (p, k), img in make_crops().items():
        folder = root / "all" / f"person_{p}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{k}.png"), img)
        if k < 2:  # enrolment set: two per person; the third is the query
            (root / "gallery" / f"person_{p}").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "gallery" / f"person_{p}" / f"{k}.png"), img)
        else:
            (root / "queries").mkdir(exist_ok=True)
            cv2.imwrite(str(root / "queries" / f"q{p}.png"), img)
    return root


def _cli(*overrides):
    from main import main

    return main(["-c", PIPELINE, *[x for o in overrides for x in ("-o", o)]])


# --------------------------------------------------------------------------- pipeline (Python API)
def test_pipeline_python_api_build_predict_append_remove(model_dir, gallery, tmp_path):
    """PaddleX's calls: build_index returns an index (saved by the caller), append_index and
    remove_index return changed copies, predict takes the index; results carry PaddleX's fields."""
    from engine import create_pipeline
    from engine.gallery.faiss_index import GalleryIndex
    from foundation.errors import UserError

    crop_cfg = {"SubModules.Recognition.model_dir": model_dir, "SubModules.Detection.enable": False}
    pipe = create_pipeline(config={**crop_cfg, "SubModules.Recognition.batch_size": 4, "rec_topk": 3,
                                   "rec_threshold": 0.4})
    index = pipe.build_index(str(gallery / "gallery"))
    assert len(index) == 8 and len(index.labels) == 4 and pipe.last_enrolment.skipped == []
    index.save(str(tmp_path / "ix"))
    results = list(pipe.predict(str(gallery / "queries"), index=index))
    assert [os.path.basename(r["input_path"]) for r in results] == ["q0.png", "q1.png", "q2.png", "q3.png"]
    for p, res in enumerate(results):
        (box,) = res["boxes"]
        assert box["label"] == f"person_{p}" and box["labels"][0] == f"person_{p}"
        assert box["score"] >= 0.4 and box["rec_scores"] == sorted(box["rec_scores"], reverse=True)
        # PaddleX's semantics: every one of the rec_topk nearest once the nearest matches
        assert box["rec_scores"][0] >= 0.4 and len(box["labels"]) == len(box["rec_scores"]) == len(box["ids"]) == 3
        assert box["coordinate"] == [0.0, 0.0, 112.0, 112.0] and box["det_score"] == 1.0
    # a threshold above every score: PaddleX's None, our explicit "unknown", the nearest score still given
    (box,) = next(iter(pipe.predict(str(gallery / "queries" / "q0.png"), index=index, rec_threshold=1.01)))["boxes"]
    assert box["label"] == "unknown" and box["labels"] is None and box["rec_scores"] is None and box["ids"] is None
    assert box["score"] > 0.4
    # PaddleX's keyword for the number of matches
    (box,) = next(iter(pipe.predict(str(gallery / "queries" / "q0.png"), index=index, rec_topk=2)))["boxes"]
    assert len(box["labels"]) == 2
    # remove a person: a copy without them; the index given is unchanged
    ids = index.ids_of_label("person_1")
    smaller = pipe.remove_index(ids + [999], index=index)
    assert len(smaller) == 6 and len(index) == 8 and pipe.last_missing_ids == [999]
    (box,) = next(iter(pipe.predict(str(gallery / "queries" / "q1.png"), index=smaller)))["boxes"]
    assert "person_1" not in (box["labels"] or [])
    # remove ids from PaddleX's id file, append from a gallery.txt, predict from the saved folder
    id_file = tmp_path / "remove.txt"
    id_file.write_text(f"{ids[0]}\n\n{ids[1]} person_1\n")
    assert len(pipe.remove_index(str(id_file), index=index)) == 6
    lst = tmp_path / "gallery.txt"
    lst.write_text("person_1/0.png person_1\n")
    grown = pipe.append_index(str(gallery / "gallery"), str(lst), index=smaller)
    assert len(grown) == 7 and len(smaller) == 6
    grown.save(str(tmp_path / "ix"))
    again = create_pipeline(config={**crop_cfg, "index": str(tmp_path / "ix")})
    res = next(iter(again.predict(np.ascontiguousarray(cv2.imread(str(gallery / "queries" / "q1.png"))))))
    assert res["input_path"] is None and res["boxes"][0]["label"] == "person_1"
    assert res.json == {"res": dict(res)}
    out = res.save_to_json(str(tmp_path / "res"))
    assert json.loads(open(out).read())["boxes"][0]["label"] == "person_1"  # the inner dict, as PaddleX saves it
    assert cv2.imread(res.save_to_img(str(tmp_path / "res"))).shape == (112, 112, 3)
    assert res.img["res"].size == (112, 112)  # PaddleX's {"res": PIL image}
    assert isinstance(GalleryIndex.load(str(tmp_path / "ix")), GalleryIndex)
    # lists of numpy images and labels, as PaddleX's build_index takes them
    crops = [cv2.imread(str(gallery / "gallery" / f"person_{p}" / "0.png")) for p in range(4)]
    from_arrays = pipe.build_index(crops, [f"p{p}" for p in range(4)], index_type="HNSW32", metric_type="L2")
    assert from_arrays.labels == ["p0", "p1", "p2", "p3"] and from_arrays.index_type == "HNSW32"
    assert next(iter(pipe.predict(crops[2], index=from_arrays)))["boxes"][0]["label"] == "p2"
    # an empty gallery folder is a clear error
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        pipe.build_index(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="2 images but 1 labels"):
        pipe.build_index(crops[:2], ["a"])
    with pytest.raises(UserError, match="remove.txt:1: 'x' does not start with an integer id"):
        id_file.write_text("x\n")
        pipe.remove_index(str(id_file), index=index)


def test_create_pipeline_reads_paddlex_style_yaml(model_dir, gallery, tmp_path):
    """create_pipeline("<path>.yaml") and create_pipeline("face_recognition", config=...): the
    PaddleX keys (det_threshold, rec_threshold, rec_topk, SubModules) reach the pipeline."""
    import yaml

    from engine import create_pipeline
    from foundation.errors import ConfigError

    cfg = yaml.safe_load(open(PIPELINE))
    assert set(cfg["SubModules"]) == {"Detection", "Recognition"} and cfg["pipeline_name"] == "face_recognition"
    cfg.update(rec_threshold=0.2, rec_topk=2, det_threshold=0.5, index=str(tmp_path / "ix"))
    cfg["SubModules"]["Recognition"].update(model_dir=model_dir, batch_size=3)
    cfg["SubModules"]["Detection"]["enable"] = False
    path = tmp_path / "my_pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    pipeline = create_pipeline(str(path), device="cpu")
    assert (pipeline.rec_threshold, pipeline.rec_topk, pipeline.batch_size, pipeline.det_threshold) == (0.2, 2, 3, 0.5)
    pipeline.build_index(str(gallery / "gallery")).save(str(tmp_path / "ix"))
    res = next(iter(pipeline.predict(str(gallery / "queries" / "q3.png"))))  # the config's index folder
    assert res["boxes"][0]["label"] == "person_3" and len(res["boxes"][0]["labels"]) <= 2
    named = create_pipeline("face_recognition", config={"SubModules.Recognition.model_dir": model_dir,
                                                        "SubModules.Detection.enable": False, "rec_topk": 1})
    assert named.rec_topk == 1
    with pytest.raises(ConfigError, match="unknown pipeline 'ocr'"):
        create_pipeline("ocr")


def test_old_pipeline_keys_say_where_they_moved(tmp_path):
    from engine.config.loader import load_config
    from foundation.errors import ConfigError

    with pytest.raises(ConfigError, match="'Det.threshold' is now 'det_threshold'"):
        load_config(PIPELINE, ["Det.threshold=0.5"])
    with pytest.raises(ConfigError, match="'Index.dir' is now 'index'"):
        load_config(PIPELINE, ["Index.dir=x"])
    old = tmp_path / "old.yaml"
    old.write_text("Global:\n  mode: recognize\nRec:\n  model_dir: m\n")
    with pytest.raises(ConfigError, match="line 4: 'Rec.model_dir' is now 'SubModules.Recognition.model_dir'"):
        load_config(str(old))


# --------------------------------------------------------------------------- CLI
def test_cli_build_recognize_remove_and_reload(model_dir, gallery, tmp_path, capsys):
    ix, out = str(tmp_path / "ix"), str(tmp_path / "out")
    common = [f"SubModules.Recognition.model_dir={model_dir}", f"index={ix}", f"Global.output={out}", "SubModules.Detection.enable=False"]
    assert _cli("Global.mode=build_index", f"Index.gallery={gallery / 'gallery'}", *common) == 0
    assert "8 of 8 gallery image(s) enrolled" in capsys.readouterr().out
    assert _cli("Global.mode=recognize", f"Predict.input={gallery / 'queries'}", *common) == 0
    res = json.loads(open(os.path.join(out, "q2_res.json")).read())
    assert res["input_path"].endswith("q2.png") and res["boxes"][0]["label"] == "person_2"
    assert os.path.isfile(os.path.join(out, "q2_res.png"))
    assert _cli("Global.mode=remove_index", "Index.remove_labels=[person_2]", *common) == 0
    assert _cli("Global.mode=recognize", f"Predict.input={gallery / 'queries' / 'q2.png'}", *common) == 0
    res = json.loads(open(os.path.join(out, "q2_res.json")).read())
    assert "person_2" not in (res["boxes"][0]["labels"] or [])
    assert _cli("Global.mode=append_index", f"Index.gallery={gallery / 'gallery'}", *common) == 0
    assert json.loads(open(os.path.join(ix, "meta.json")).read())["num_vectors"] == 14
    # the index folder holds the index alone; each command's log is under Global.output
    assert sorted(os.listdir(ix)) == ["id_map.yaml", "meta.json", "vector.index"]
    assert {"build_index.log", "remove_index.log", "append_index.log"} <= set(os.listdir(out))
    capsys.readouterr()
    # removing a label that is not there: exit 1 and a message
    assert _cli("Global.mode=remove_index", "Index.remove_labels=[nobody]", *common) == 1
    assert "nothing removed" in capsys.readouterr().err
    # ids that exist and ids that do not: the existing ones go, the others are named
    assert _cli("Global.mode=remove_index", "Index.remove_ids=[0,900,901]", *common) == 0
    assert "not in the index (ignored): ids [900, 901]" in capsys.readouterr().out


def test_cli_refuses_missing_index_and_index_of_another_model(model_dir, gallery, tmp_path, capsys):
    ix = tmp_path / "ix"
    common = [f"SubModules.Recognition.model_dir={model_dir}", f"index={ix}", f"Global.output={tmp_path / 'out'}", "SubModules.Detection.enable=False"]
    assert _cli("Global.mode=recognize", f"Predict.input={gallery / 'queries'}", *common) == 1
    assert "does not exist: build it first" in capsys.readouterr().err
    assert _cli("Global.mode=build_index", f"Index.gallery={gallery / 'gallery'}", *common) == 0
    # a corrupt file inside a query folder: skipped and reported (exit 1), the good image still answered
    q = tmp_path / "q"
    q.mkdir()
    (q / "broken.png").write_bytes(b"not a png")
    (q / "good.png").write_bytes((gallery / "queries" / "q0.png").read_bytes())
    capsys.readouterr()
    assert _cli("Global.mode=recognize", f"Predict.input={q}", *common) == 1
    assert "1 image(s) could not be read" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "good_res.json").read_text())["boxes"][0]["label"] == "person_0"
    meta = json.loads((ix / "meta.json").read_text())
    meta["model_fingerprint"] = "0" * 40  # as if another training run had built it
    (ix / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert _cli("Global.mode=recognize", f"Predict.input={gallery / 'queries'}", *common) == 1
    assert "different model than the gallery index" in capsys.readouterr().err


def test_cli_gallery_of_face_crops_with_detection_on(model_dir, gallery, tmp_path, capsys):
    """YuNet detection on (the default) and a gallery of face crops: an image in which no face is
    found is embedded whole, as PaddleX embeds gallery images, and counted; one that is not an
    image at all is skipped; nothing readable at all -> exit 1 and no index written."""
    ix = tmp_path / "ix"
    common = [f"SubModules.Recognition.model_dir={model_dir}", f"index={ix}", f"Global.output={tmp_path / 'out'}"]
    g = tmp_path / "g"
    shutil.copytree(gallery / "gallery", g)
    (g / "person_0" / "broken.png").write_bytes(b"not an image")
    assert _cli("Global.mode=build_index", f"Index.gallery={g}", *common) == 0
    out = capsys.readouterr().out
    assert "8 of 9 gallery image(s) enrolled (8 of them whole: no face detected), 1 skipped" in out
    assert _cli("Global.mode=recognize", f"Predict.input={gallery / 'queries' / 'q1.png'}", "det_threshold=0.99",
                *common) == 0
    bad = tmp_path / "bad" / "nobody"
    bad.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"not an image either")
    assert _cli("Global.mode=build_index", f"Index.gallery={tmp_path / 'bad'}", f"index={tmp_path / 'ix2'}",
                common[0], common[2]) == 1
    assert "none of the 1 gallery images could be read" in capsys.readouterr().err
    assert not (tmp_path / "ix2").exists()


def test_cli_index_commands_never_replace_what_they_did_not_write(model_dir, gallery, tmp_path, capsys):
    """build_index into a folder holding other files (a thesis, the gallery's own photos) is refused
    and they stay; rebuilding an index needs Index.overwrite=True; a second writer while one holds
    the index's lock is refused naming its pid, and a dead holder's lock is taken over."""
    import subprocess

    common = [f"SubModules.Recognition.model_dir={model_dir}", f"Global.output={tmp_path / 'out'}",
              "SubModules.Detection.enable=False", f"Index.gallery={gallery / 'gallery'}"]
    (tmp_path / "a_file").write_text("not a folder")
    assert _cli("Global.mode=build_index", f"index={tmp_path / 'a_file'}", *common) == 1
    assert "is a file, not an index folder" in capsys.readouterr().err
    assert (tmp_path / "a_file").read_text() == "not a folder"
    notes = tmp_path / "notidx"
    notes.mkdir()
    (notes / "my_thesis.txt").write_text("years of work")
    assert _cli("Global.mode=build_index", f"index={notes}", *common) == 1
    assert "my_thesis.txt, which is not a gallery index" in capsys.readouterr().err
    assert (notes / "my_thesis.txt").read_text() == "years of work"
    photos = sorted(os.listdir(gallery / "gallery"))
    assert _cli("Global.mode=build_index", f"index={gallery / 'gallery'}", *common) == 1
    assert sorted(os.listdir(gallery / "gallery")) == photos
    capsys.readouterr()
    ix = tmp_path / "ix"
    assert _cli("Global.mode=build_index", f"index={ix}", *common) == 0
    assert _cli("Global.mode=build_index", f"index={ix}", *common) == 1
    assert "holds a gallery index already: -o Index.overwrite=True" in capsys.readouterr().err
    assert _cli("Global.mode=build_index", f"index={ix}", "Index.overwrite=True", *common) == 0
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "ix.lock").write_text(f"{holder.pid}\nappend_index\n")
        assert _cli("Global.mode=append_index", f"index={ix}", *common) == 1
        assert f"gallery index {ix} is in use by another run (pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert _cli("Global.mode=append_index", f"index={ix}", *common) == 0  # the dead holder's lock is taken over
    assert json.loads((ix / "meta.json").read_text())["num_vectors"] == 16 and not (tmp_path / "ix.lock").exists()


@needs_lfw
def test_cli_yunet_gallery_on_lfw_photos_and_query_without_face(model_dir, tmp_path, capsys):
    g = tmp_path / "g"
    for person in LFW_PEOPLE[:2]:
        (g / person).mkdir(parents=True)
        for k in (1, 2):
            shutil.copyfile(os.path.join(LFW, "images", person, f"{person}_{k:04d}.jpg"), g / person / f"{k}.jpg")
    cv2.imwrite(str(g / LFW_PEOPLE[1] / "blank.png"), np.full((150, 150, 3), 90, np.uint8))
    q = tmp_path / "q"
    q.mkdir()
    cv2.imwrite(str(q / "blank.png"), np.full((150, 150, 3), 90, np.uint8))
    ix, out = tmp_path / "ix", tmp_path / "out"
    common = [f"SubModules.Recognition.model_dir={model_dir}", f"index={ix}", f"Global.output={out}"]
    assert _cli("Global.mode=build_index", f"Index.gallery={g}", *common) == 0
    assert "5 of 5 gallery image(s) enrolled (1 of them whole: no face detected), 0 skipped" in capsys.readouterr().out
    assert _cli("Global.mode=recognize", f"Predict.input={q}", *common) == 0
    assert json.loads((out / "blank_res.json").read_text())["boxes"] == []


def _export_fake_face_detector(folder):
    """A stand-in PaddleDetection face detector in `folder`: boxes 0.9 at (0.1w, 0.2h, 0.6w, 0.7h) and
    0.3 at (0, 0, 0.2w, 0.2h) of every image."""
    import paddle
    import yaml

    class FakeFaceDet(paddle.nn.Layer):
        def __init__(self):
            super().__init__()  # one weight, so the export has an inference.pdiparams like a real model
            self.gain = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(1.0))

        def forward(self, image, im_shape, scale_factor):
            hw = im_shape / scale_factor  # original image height, width
            h, w = hw[:, 0:1], hw[:, 1:2]
            bright = image.mean() * 0 + self.gain  # uses the image so the input is kept
            one = paddle.ones_like(h)
            good = paddle.concat([0 * one, 0.9 * one * bright, 0.1 * w, 0.2 * h, 0.6 * w, 0.7 * h], axis=1)
            weak = paddle.concat([0 * one, 0.3 * one, 0 * w, 0 * h, 0.2 * w, 0.2 * h], axis=1)
            return paddle.concat([good, weak], axis=0)

    spec = [paddle.static.InputSpec([1, 3, 64, 64], "float32", "image"),
            paddle.static.InputSpec([1, 2], "float32", "im_shape"),
            paddle.static.InputSpec([1, 2], "float32", "scale_factor")]
    paddle.jit.save(FakeFaceDet(), str(folder / "inference"), input_spec=spec)
    (folder / "inference.yml").write_text(yaml.safe_dump({"Preprocess": [
        {"type": "Resize", "target_size": [64, 64], "keep_ratio": False},
        {"type": "NormalizeImage", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "is_scale": True},
        {"type": "Permute"}]}))
    return str(folder)


def test_paddle_detector_adapter_runs_an_exported_detection_model(tmp_path):
    """A stand-in detection model with PaddleDetection's inputs (image, im_shape, scale_factor) and
    output rows [class, score, x1, y1, x2, y2] in original pixels: the adapter feeds it, scales and
    thresholds the boxes; build_detector(type="paddle") builds it from a folder."""
    from foundation.errors import UserError
    from models.face_detector import PaddleFaceDetector, build_detector

    folder = _export_fake_face_detector(tmp_path / "det")
    det = build_detector(enable=True, type="paddle", model_dir=str(folder), threshold=0.6)
    assert isinstance(det, PaddleFaceDetector) and det.target_size == (64, 64)
    faces = det.detect(np.zeros((200, 100, 3), np.uint8))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, [10, 40, 60, 140], atol=0.5)
    assert faces[0].score == pytest.approx(0.9)
    with pytest.raises(UserError, match="no inference.json"):
        PaddleFaceDetector(str(tmp_path))
    with pytest.raises(UserError, match="not one of yunet, paddle"):
        build_detector(type="haar")


def test_a_paddlex_detector_by_name_and_a_per_call_detection_threshold(model_dir, tmp_path):
    """SubModules.Detection.model_name BlazeFace with a model_dir runs the Paddle adapter; faces are
    kept at det_threshold, and predict(det_threshold=...) may go below the config's value."""
    from engine import create_pipeline
    from models.face_detector import PaddleFaceDetector

    folder = _export_fake_face_detector(tmp_path / "det")
    pipeline = create_pipeline("face_recognition", config={
        "SubModules.Detection.model_name": "BlazeFace", "SubModules.Detection.model_dir": folder,
        "SubModules.Detection.min_size": 1,
        "SubModules.Recognition.model_dir": model_dir, "det_threshold": 0.6})
    assert isinstance(pipeline.detector, PaddleFaceDetector)
    img = np.full((200, 100, 3), 120, np.uint8)
    index = pipeline.build_index([img], ["someone"])
    (res,) = pipeline.predict(img, index=index)
    assert [b["det_score"] for b in res["boxes"]] == [0.9]
    (res,) = pipeline.predict(img, index=index, det_threshold=0.25)
    assert [b["det_score"] for b in res["boxes"]] == [0.9, 0.3]


# --------------------------------------------------------------------------- drawn results
def test_drawn_result_shows_the_label_without_detection_and_landmarks_on_request(tmp_path):
    from engine.recognition.results import FaceRecognitionResult as RecognitionResult

    img = np.full((112, 112, 3), 90, np.uint8)
    face = {"coordinate": [0, 0, 112, 112], "det_score": 1.0, "labels": ["person_0"], "rec_scores": [0.93],
            "label": "person_0", "score": 0.93}
    path = RecognitionResult("x.png", [face], "x", img).save_to_img(str(tmp_path / "x.png"))
    out = cv2.imread(path).astype(int)
    assert np.abs(out[:18, :40] - 90).max() > 60  # the label's box and text at the top-left
    assert np.abs(out[40:, :] - 90).max() == 0  # no box drawn around the whole image
    big = np.full((200, 200, 3), 90, np.uint8)
    marked = dict(face, coordinate=[50, 50, 150, 150],
                  landmarks=[[80, 90], [120, 90], [100, 110], [85, 130], [115, 130]])
    plain = cv2.imread(RecognitionResult("a", [marked], "a", big).save_to_img(str(tmp_path / "a.png"))).astype(int)
    dots = cv2.imread(RecognitionResult("b", [marked], "b", big).save_to_img(str(tmp_path / "b.png"),
                                                                             draw_landmarks=True)).astype(int)
    for x, y in marked["landmarks"]:
        assert np.abs(dots[y, x] - plain[y, x]).max() > 60
    changed = np.argwhere(np.abs(dots - plain).max(axis=2) > 0)
    assert changed[:, 0].min() >= 85 and changed[:, 0].max() <= 135  # only around the 5 points


def test_rec_threshold_comes_from_the_model_unless_set(model_dir, tmp_path):
    """null: the threshold inference.yml records (FAR 1e-3, then 1e-2, then best accuracy); a set
    value wins; a folder without a record falls back to 0.4, and the pipeline says which."""
    import shutil

    import yaml

    from engine import create_pipeline

    def pipeline(folder, **more):
        return create_pipeline(config={"SubModules.Recognition.model_dir": str(folder),
                                       "SubModules.Detection.enable": False, **more})

    assert pipeline(model_dir).rec_threshold == 0.4
    folder = tmp_path / "with_record"
    shutil.copytree(model_dir, folder)
    path = folder / "inference.yml"
    info = yaml.safe_load(path.read_text())
    info["Verification"] = {"source": "val/pair_label.txt", "acc": 0.9, "best_threshold_cosine": 0.31,
                            "threshold_cosine_at_far": {"1e-1": 0.2, "1e-2": 0.35, "1e-3": None}}
    path.write_text(yaml.safe_dump(info))
    pipe = pipeline(folder)
    assert pipe.rec_threshold == 0.35 and "FAR 1e-2" in pipe.rec_threshold_source
    assert pipeline(folder, rec_threshold=0.5).rec_threshold == 0.5


def test_cli_build_streams_in_steps_and_resumes_an_interrupted_build(model_dir, gallery, tmp_path, capsys):
    from engine.recognition.pipeline import create_pipeline, gallery_items

    ix, out = tmp_path / "ix", tmp_path / "out"
    common = [f"SubModules.Recognition.model_dir={model_dir}", f"index={ix}", f"Global.output={out}",
              "SubModules.Detection.enable=False", "Index.build_batch=3"]
    # an interrupted build: its checkpoint holds the first 3 images, as the first step of 3 writes it
    pipe = create_pipeline(PIPELINE, config={"SubModules.Recognition.model_dir": model_dir,
                                             "SubModules.Detection.enable": False})
    items = gallery_items(str(gallery / "gallery"))
    pipe.build_index(items[:3]).save(str(ix) + ".partial")
    assert _cli("Global.mode=build_index", f"Index.gallery={gallery / 'gallery'}", *common) == 0
    assert "8 of 8 gallery image(s) enrolled" in capsys.readouterr().out
    log = (out / "build_index.log").read_text()  # under Global.output, never in the index folder
    assert "resuming, 3 of 8 image(s) are already in the index" in log
    assert "build index: 3 / 5 image(s) (60 %)" in log and "build index: 5 / 5 image(s) (100 %)" in log
    meta = json.loads((ix / "meta.json").read_text())
    assert meta["num_vectors"] == 8 and len(set(meta["sources"].values())) == 8  # none twice
    assert not os.path.exists(str(ix) + ".partial")
    # resume off: a leftover checkpoint is thrown away and the build starts again
    pipe.build_index(items[:2]).save(str(ix) + ".partial")
    assert _cli("Global.mode=build_index", f"Index.gallery={gallery / 'gallery'}", "Index.resume=False", "Index.overwrite=True",
                *common) == 0
    assert json.loads((ix / "meta.json").read_text())["num_vectors"] == 8


def test_cli_on_a_milvus_lite_collection(model_dir, gallery, tmp_path, capsys):
    from tests._milvus import need_milvus

    need_milvus()
    out = tmp_path / "out"
    common = [f"SubModules.Recognition.model_dir={model_dir}", "index=staff", f"Global.output={out}",
              "SubModules.Detection.enable=False", "Index.backend=milvus", f"Index.uri={tmp_path / 'g.db'}"]
    assert _cli("Global.mode=build_index", f"Index.gallery={gallery / 'gallery'}", *common) == 0
    assert "index staff holds 8 face(s) of 4 people" in capsys.readouterr().out
    assert _cli("Global.mode=recognize", f"Predict.input={gallery / 'queries'}", *common) == 0
    res = json.loads(open(os.path.join(out, "q2_res.json")).read())
    assert res["boxes"][0]["label"] == "person_2"
    assert _cli("Global.mode=remove_index", "Index.remove_labels=[person_2]", "Index.remove_ids=[5]", *common) == 0
    assert "removed 2 face(s); index staff holds 6 (was 8)" in capsys.readouterr().out
    assert _cli("Global.mode=append_index", f"Index.gallery={gallery / 'gallery'}", *common) == 0
    assert "index staff holds 14 face(s) of 4 people" in capsys.readouterr().out
    assert _cli("Global.mode=remove_index", "Index.remove_labels=[nobody]", *common) == 1
    assert "nothing removed" in capsys.readouterr().err
    assert _cli("Global.mode=recognize", f"Predict.input={gallery / 'queries'}", "index=nobody", *common[:1],
                *common[2:]) == 1
    assert "no gallery index 'nobody' on Milvus" in capsys.readouterr().err
    from engine.gallery.milvus_index import forget_client

    forget_client(str(tmp_path / "g.db"))  # stop this test's Milvus Lite server
