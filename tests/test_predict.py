"""engine.runners.predict: CLI runner and Python API on files, folders, arrays and batches; bad inputs."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from _tiny_face_model import REPO_ROOT, config, make_face_images, save_random_checkpoint

from engine import create_model
from engine.runners import predict as P
from foundation.errors import UserError
from models.face_detector import MainFaceCropper


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_model")
    ckpt = save_random_checkpoint(str(root / "model.pdparams"), seed=1)
    from engine.inference.folder import export_checkpoint

    return export_checkpoint(ckpt, "MobileFaceNet", save_dir=str(root / "inference"))["dir"]


@pytest.fixture(scope="module")
def model(model_dir):
    return create_model(model_dir=model_dir, num_threads=2)


@pytest.fixture()
def folder(tmp_path):
    """img/ with 5 images (one in a sub-folder, one .pgm grey, one odd-sized), plus a non-image .txt."""
    imgs = list(make_face_images(n_people=5, per_person=1, seed=3).values())
    d = tmp_path / "img"
    (d / "sub").mkdir(parents=True)
    cv2.imwrite(str(d / "b.png"), imgs[0])
    cv2.imwrite(str(d / "a.jpg"), imgs[1])
    cv2.imwrite(str(d / "sub" / "c.bmp"), imgs[2])
    cv2.imwrite(str(d / "d.pgm"), cv2.cvtColor(imgs[3], cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(d / "e.png"), cv2.resize(imgs[4], (90, 130)))
    (d / "notes.txt").write_text("not an image")
    return d


def test_folder_is_recursive_sorted_and_features_are_unit_length(model, folder):
    res = list(model.predict(str(folder)))
    names = [os.path.relpath(r.input_path, folder) for r in res]
    assert names == ["a.jpg", "b.png", "d.pgm", "e.png", os.path.join("sub", "c.bmp")]
    for r in res:
        assert r.feature.shape == (128,) and abs(np.linalg.norm(r.feature) - 1) < 1e-5


def test_batch_4_gives_the_same_features_as_batch_1(model, folder):
    one = np.array([r.feature for r in model.predict(str(folder), batch_size=1)])
    four = np.array([r.feature for r in model.predict(str(folder), batch_size=4)])  # 5 images: 4 + 1
    np.testing.assert_allclose(four, one, atol=1e-5)
    assert np.allclose(np.linalg.norm(four, axis=1), 1, atol=1e-5)  # not only the first row
    assert not np.allclose(one[0], one[1])


def test_arrays_match_files_and_any_layout_works(model, folder):
    img = cv2.imread(str(folder / "b.png"))
    from_file = next(iter(model.predict(str(folder / "b.png")))).feature
    res = list(model.predict([img, cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA),
                              cv2.resize(img, (200, 160))], batch_size=2))
    assert [r.input_path for r in res] == [None] * 4
    assert [r.name for r in res] == ["array_0", "array_1", "array_2", "array_3"]
    np.testing.assert_allclose(res[0].feature, from_file, atol=1e-5)
    np.testing.assert_allclose(res[2].feature, from_file, atol=1e-5)  # alpha dropped
    assert all(abs(np.linalg.norm(r.feature) - 1) < 1e-5 for r in res)


def test_results_print_and_save(model, folder, tmp_path, capsys):
    r = next(iter(model.predict(str(folder / "a.jpg"))))
    r.print(json_format=False)
    r.print(json_format=True)
    out = capsys.readouterr().out
    assert "a.jpg" in out and "(128-d)" in out and '"feature": [' in out
    path = r.save_to_json(str(tmp_path / "out"))
    assert path == str(tmp_path / "out" / "a_res.json")
    data = json.load(open(path))
    assert data["input_path"] == str(folder / "a.jpg") and len(data["feature"]) == 128
    assert data["page_index"] is None and list(data) == ["input_path", "page_index", "feature"]  # PaddleX's fields
    assert isinstance(data["feature"][0], float) and abs(np.linalg.norm(data["feature"]) - 1) < 1e-5
    assert r.save_to_json(str(tmp_path / "x" / "named.json")) == str(tmp_path / "x" / "named.json")
    arr = next(iter(model.predict(np.zeros((50, 50, 3), np.uint8))))
    assert os.path.basename(arr.save_to_json(str(tmp_path / "out"))) == "array_0_res.json"
    assert json.load(open(tmp_path / "out" / "array_0_res.json"))["input_path"] is None


def test_paddlex_arguments_flip_and_input(model_dir, folder):
    """PaddleX's create_model(..., flip=True): each feature sums the image's and its mirror's, so an
    image and its mirror get one feature; predict(input=..., batch_size=...) as PaddleX calls it."""
    img = cv2.imread(str(folder / "a.jpg"))
    flipping = create_model(model_dir=model_dir, flip=True)
    (a,) = [r["feature"] for r in flipping.predict(input=img, batch_size=1)]
    (b,) = [r["feature"] for r in flipping.predict(input=np.ascontiguousarray(img[:, ::-1]), batch_size=1)]
    np.testing.assert_allclose(a, b, atol=1e-4)
    (plain,) = [r["feature"] for r in create_model(model_dir=model_dir).predict(input=img)]
    assert float(np.dot(a, plain)) < 0.99999 and abs(np.linalg.norm(a) - 1) < 1e-5


def test_compare(model, folder):
    a, b = str(folder / "a.jpg"), str(folder / "b.png")
    same = model.compare(a, cv2.imread(a))
    assert abs(same - 1.0) < 1e-5 and same.is_same is None
    s = model.compare(a, b, threshold=0.999)
    assert -1 <= s < 0.999 and s.is_same is False
    assert model.compare(a, b, threshold=-1.0).is_same is True
    with pytest.raises(UserError, match="expected one image"):
        model.compare(str(folder), b)


def test_create_model_by_path_and_unknown_names(model_dir, tmp_path):
    m = create_model(model_dir)  # the path of an inference folder works as the name
    assert m.model_name == "MobileFaceNet" and m.embedding_size == 128
    with pytest.raises(UserError, match="unknown model 'NoSuchNet'.*MobileFaceNet, ResNet50_face"):
        create_model("NoSuchNet")


def test_bad_inputs_name_the_path(model, folder, tmp_path):
    with pytest.raises(UserError, match="nope.jpg does not exist"):
        list(model.predict(str(tmp_path / "nope.jpg")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty holds no images"):
        list(model.predict(str(tmp_path / "empty")))
    with pytest.raises(UserError, match="notes.txt"):
        list(model.predict(str(folder / "notes.txt")))
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    with pytest.raises(UserError, match="no_model"):
        create_model(model_dir=str(no_model))
    with pytest.raises(UserError, match="cannot download http://127.0.0.1:9/face.jpg"):
        list(model.predict("http://127.0.0.1:9/face.jpg"))


def test_folder_with_a_bad_file_skips_it_and_reports(model, folder):
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    res = list(model.predict(str(folder), batch_size=4))
    assert len(res) == 5
    assert [os.path.basename(p) for p, _ in model.failures] == ["broken.jpg"]


def test_cli_writes_the_good_results_and_exits_1_on_a_bad_file(model_dir, folder, tmp_path):
    (folder / "sub" / "broken.jpg").write_bytes(b"garbage")
    (folder / "sub" / "a.jpg").write_bytes((folder / "a.jpg").read_bytes())  # same stem as a.jpg, other folder
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "main.py", "-c", "configs/face_recognition/MobileFaceNet.yaml",
                           "-o", "Global.mode=predict", "-o", f"Predict.model_dir={model_dir}",
                           "-o", f"Predict.input={folder}", "-o", f"Global.output={out}", "-o", "Predict.batch_size=3"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error:")]
    assert last and "1 of 7 images failed" in last[0] and "broken.jpg" in last[0]
    saved = sorted(f for f in os.listdir(out / "predict") if f.endswith("_res.json"))
    assert not any(f.endswith("_res.json") for f in os.listdir(out))  # results live in a folder of their own
    # named by stem as PaddleX names them; the two a.jpg of the run by their path inside the folder
    assert saved == ["a_res.json", "b_res.json", "c_res.json", "d_res.json", "e_res.json", "sub_a_res.json"]
    assert proc.stdout.count("'feature': [") == 6
    # Paddle's import-time banner and library warnings go to the log file, not the console
    assert "OMP_NUM_THREADS" not in proc.stderr and "UserWarning" not in proc.stderr + proc.stdout, proc.stderr
    assert "OMP_NUM_THREADS" in (out / "predict" / "predict.log").read_text(encoding="utf-8")


def test_cli_missing_input_fails_before_loading(model_dir, tmp_path):
    cfg = config(Global__mode="predict", Predict__model_dir=model_dir, Predict__input=str(tmp_path / "gone"),
                 Global__output=str(tmp_path / "out"))
    with pytest.raises(UserError, match="gone does not exist"):
        P.run(cfg)
    assert not (tmp_path / "out").exists()
    cv2.imwrite(str(tmp_path / "face.png"), np.zeros((20, 20, 3), np.uint8))
    cfg = config(Global__mode="predict", Predict__model_dir=str(tmp_path / "nomodel"),
                 Predict__input=str(tmp_path / "face.png"),
                 Global__output=str(tmp_path / "out"))
    with pytest.raises(UserError, match="nomodel does not exist"):
        P.run(cfg)


def test_cli_runner_with_a_list_of_inputs(model_dir, folder, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = config(Global__mode="predict", Predict__model_dir=model_dir, Global__output=str(out),
                 Predict__input=f"[{folder / 'a.jpg'},{folder / 'sub'}]", Predict__batch_size=2)
    assert P.run(cfg) == 0
    assert sorted(f for f in os.listdir(out / "predict") if f.endswith("_res.json")) == ["a_res.json", "c_res.json"]
    assert "Predict done: 2 result(s)" in capsys.readouterr().out


def test_same_file_twice_gets_two_result_files(model_dir, folder, tmp_path):
    out = tmp_path / "out"
    cfg = config(Global__mode="predict", Predict__model_dir=model_dir, Global__output=str(out),
                 Predict__input=f"[{folder / 'a.jpg'},{folder / 'a.jpg'}]")
    assert P.run(cfg) == 0
    assert sorted(f for f in os.listdir(out / "predict") if f.endswith("_res.json")) == ["a_2_res.json", "a_res.json"]


def test_api_results_with_the_same_stem_never_overwrite_each_other(model_dir, tmp_path):
    """a/00.jpg and b/00.jpg saved into one folder: two files, one per result."""
    for sub, value in (("a", 40), ("b", 200)):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "00.jpg"), np.full((112, 112, 3), value, np.uint8))
    model = create_model(model_dir=model_dir)
    out = tmp_path / "saved"
    results = list(model.predict([str(tmp_path / "a" / "00.jpg"), str(tmp_path / "b" / "00.jpg")]))
    paths = [r.save_to_json(str(out)) for r in results]
    assert len(set(paths)) == 2 and sorted(os.listdir(out)) == ["00_2_res.json", "00_res.json"]
    saved = [json.load(open(p))["input_path"] for p in paths]
    assert saved == [str(tmp_path / "a" / "00.jpg"), str(tmp_path / "b" / "00.jpg")]


# --------------------------------------------------------------------------- Predict.detect (raw photos)
LFW = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "lfw_dev"))
needs_lfw = pytest.mark.skipif(not os.path.isdir(LFW), reason="LFW photos not available at ../shared/data/lfw_dev")


@needs_lfw
def test_detect_embeds_the_aligned_main_face_and_skips_photos_without_one(model_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for rel in ("Colin_Powell/Colin_Powell_0001.jpg", "Tony_Blair/Tony_Blair_0002.jpg"):
        shutil.copyfile(os.path.join(LFW, "images", rel), photos / os.path.basename(rel))
    cv2.imwrite(str(photos / "grey.png"), np.full((200, 200, 3), 128, np.uint8))
    detecting = create_model(model_dir=model_dir, num_threads=2, detect=True)
    results = list(detecting.predict(str(photos), batch_size=2, num_workers=2))
    assert [os.path.basename(r["input_path"]) for r in results] == ["Colin_Powell_0001.jpg", "Tony_Blair_0002.jpg"]
    assert len(detecting.failures) == 1 and "no face found" in detecting.failures[0][1]
    # the same feature as embedding the aligned chip by hand with detection off
    chip, face, _ = MainFaceCropper().main(cv2.imread(str(photos / "Colin_Powell_0001.jpg")))
    plain = create_model(model_dir=model_dir, num_threads=2)
    np.testing.assert_allclose(results[0]["feature"], plain.feature(chip), atol=1e-5)
    assert results[0]["face"]["box"] == face.to_dict()["box"] and len(results[0]["face"]["landmarks"]) == 5
    saved = json.loads(open(results[0].save_to_json(str(tmp_path / "out"))).read())
    assert saved["face"]["det_score"] >= 0.6
    with pytest.raises(UserError, match="no face found in .*grey.png"):
        list(detecting.predict(str(photos / "grey.png")))


@needs_lfw
def test_cli_predict_detect(model_dir, tmp_path):
    src = os.path.join(LFW, "images", "Colin_Powell", "Colin_Powell_0001.jpg")
    cfg = config(Global__mode="predict", Global__output=str(tmp_path), Predict__model_dir=model_dir,
                 Predict__input=src, Predict__detect=True)
    assert P.run(cfg) == 0
    out = json.loads((tmp_path / "predict" / "Colin_Powell_0001_res.json").read_text())
    assert len(out["feature"]) == 128 and len(out["face"]["landmarks"]) == 5
