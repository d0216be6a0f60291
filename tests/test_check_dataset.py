"""check_dataset: the demo passes with the full result; each bad input is caught with file, line and fix."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from datasets.demo import generate_demo
from datasets.label_files import load_pair_list, load_train_list
from engine.config.loader import load_config
from foundation.errors import ConfigError, DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "face_recognition", "MobileFaceNet.yaml")
REFERENCE_FIELDS = {"done_flag", "check_pass", "attributes", "analysis", "dataset_path", "show_type", "dataset_type"}
ATTRIBUTE_FIELDS = {"train_label_file", "train_num_classes", "train_samples", "train_sample_paths",
                    "val_label_file", "val_num_classes", "val_samples", "val_sample_paths"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "face")
    generate_demo(out, train_identities=10, images_per_identity=3, val_identities=4, val_pairs=8, seed=1, workers=1)
    return out


@pytest.fixture
def data(demo, tmp_path):
    """A private copy of the small demo dataset, to break."""
    dst = str(tmp_path / "data")
    shutil.copytree(demo, dst)
    return dst


def check(dataset_dir, output, *overrides):
    from engine.runners import check_dataset

    cfg = load_config(CONFIG, ["Global.mode=check_dataset", f"Global.dataset_dir={dataset_dir}",
                               f"Global.output={output}", *overrides])
    code = check_dataset.run(cfg)
    with open(os.path.join(output, "check_dataset_result.json"), encoding="utf-8") as f:
        result = json.load(f)
    with open(os.path.join(output, "check_dataset.log"), encoding="utf-8") as f:
        log = f.read()
    return code, result, log


def lines_of(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def train_label(d):
    return os.path.join(d, "train", "label.txt")


def pair_label(d):
    return os.path.join(d, "val", "pair_label.txt")


def set_line(path, number, text):
    """Replace 1-based line `number` of a label file."""
    lines = lines_of(path)
    lines[number - 1] = text
    write_lines(path, lines)


def errors(result):
    return [(e["file"], e["line"], e["message"]) for e in result["analysis"]["errors"]]


def assert_failed_at(code, result, log, file_suffix, line, words):
    assert code == 1
    assert result["check_pass"] is False
    errs = errors(result)
    hits = [e for e in errs if e[0].endswith(file_suffix) and e[1] == line and words in e[2]]
    assert hits, f"no error at {file_suffix}:{line} containing {words!r}; got {errs}"
    assert "Check dataset failed. We encountered the following error:" in log
    assert "Please try to resolve the issue as follows:" in log
    where = f"{file_suffix}:{line}" if line is not None else file_suffix
    assert where in log


# --------------------------------------------------------------------------- the passing case
def test_demo_passes_with_full_result(demo, tmp_path):
    out = str(tmp_path / "out")
    code, result, log = check(demo, out)
    assert code == 0, log
    assert "Check dataset passed !" in log
    assert set(result) == REFERENCE_FIELDS
    assert set(result["attributes"]) == ATTRIBUTE_FIELDS
    a, an = result["attributes"], result["analysis"]
    assert result["check_pass"] is True and result["done_flag"] is True
    assert result["show_type"] == "image" and result["dataset_type"] == "ClsDataset"
    assert a["train_num_classes"] == 10 and a["train_samples"] == 30
    assert a["val_num_classes"] == 2 and a["val_samples"] == 8
    assert len(a["train_sample_paths"]) == 10 and len(a["val_sample_paths"]) == 8
    for rel in a["train_sample_paths"] + a["val_sample_paths"]:
        assert rel.startswith("check_dataset/demo_img/")
        assert os.path.isfile(os.path.join(out, rel))
    # label files are written relative to the output folder, like the sample paths
    assert os.path.samefile(os.path.join(out, a["train_label_file"]), train_label(demo))
    assert os.path.samefile(os.path.join(out, a["val_label_file"]), pair_label(demo))
    assert os.path.isfile(os.path.join(out, an["histogram"]))
    assert an["train"]["identities"] == 10
    assert an["train"]["images_per_identity"] == {"min": 3, "median": 3.0, "max": 3, "mean": 3.0}
    assert an["val"]["same_pairs"] == 4 and an["val"]["different_pairs"] == 4
    assert an["image_size"]["min_width"] == an["image_size"]["max_width"] == 112
    assert an["errors"] == [] and an["num_errors"] == 0


def test_pair_images_side_by_side(demo, tmp_path):
    import cv2

    out = str(tmp_path / "out")
    _, result, _ = check(demo, out)
    pair = cv2.imread(os.path.join(out, result["attributes"]["val_sample_paths"][0]))
    single = cv2.imread(os.path.join(out, result["attributes"]["train_sample_paths"][0]))
    assert pair.shape[0] == single.shape[0] and pair.shape[1] > 2 * single.shape[1] - 10


def test_blank_lines_and_comments_are_allowed(data, tmp_path):
    lines = lines_of(train_label(data))
    write_lines(train_label(data), ["# header", "", lines[1], "   ", "# another comment"] + lines[2:])
    code, result, log = check(data, str(tmp_path / "out"))
    assert code == 0, log
    assert result["attributes"]["train_samples"] == 30


# --------------------------------------------------------------------------- folder structure
def test_missing_dataset_dir(tmp_path):
    missing = str(tmp_path / "nope")
    code, result, log = check(missing, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "nope", None, "does not exist")


def test_missing_train_dir(data, tmp_path):
    shutil.rmtree(os.path.join(data, "train"))
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "train", None, "'train/' folder is missing")


def test_missing_val_dir(data, tmp_path):
    shutil.rmtree(os.path.join(data, "val"))
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "val", None, "'val/' folder is missing")


def test_missing_label_file(data, tmp_path):
    os.remove(train_label(data))
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, os.path.join("train", "label.txt"), None, "missing")


def test_empty_label_file(data, tmp_path):
    write_lines(pair_label(data), ["# only a comment"])
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, os.path.join("val", "pair_label.txt"), None, "lists no pairs")


# --------------------------------------------------------------------------- train/label.txt lines
def test_wrong_field_count(data, tmp_path):
    set_line(train_label(data), 3, "images/00000/01.jpg")
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "label.txt", 3, "expected 2 fields")


def test_non_integer_id(data, tmp_path):
    set_line(train_label(data), 4, "images/00001/00.jpg one")
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "label.txt", 4, "not an integer")


def test_ids_not_starting_at_zero(data, tmp_path):
    lines = lines_of(train_label(data))
    shifted = [lines[0]] + [f"{ln.split()[0]} {int(ln.split()[1]) + 1}" for ln in lines[1:]]
    write_lines(train_label(data), shifted)
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "label.txt", 2, "must start at 0")


def test_gaps_in_ids_are_a_warning_with_count(data, tmp_path):
    lines = lines_of(train_label(data))
    write_lines(train_label(data), [ln for ln in lines if not ln.endswith(" 2") and not ln.endswith(" 5")])
    code, result, log = check(data, str(tmp_path / "out"))
    assert code == 0, log
    warns = result["analysis"]["warnings"]
    assert any("2 ids between 0 and 9 have no images" in w["message"] for w in warns), warns
    assert result["analysis"]["train"]["unused_ids"] == 2
    assert "have no images" in log


def test_duplicate_lines_are_a_warning(data, tmp_path):
    lines = lines_of(train_label(data))
    write_lines(train_label(data), lines + [lines[1]])
    pairs = lines_of(pair_label(data))
    a, b, label = pairs[1].split()
    write_lines(pair_label(data), pairs + [f"{b} {a} {label}"])  # the same pair, swapped
    code, result, log = check(data, str(tmp_path / "out"))
    assert code == 0, log
    warns = [(w["file"], w["line"], w["message"]) for w in result["analysis"]["warnings"]]
    assert any(f.endswith("label.txt") and ln == len(lines) + 1 and "duplicate of line 2" in m for f, ln, m in warns)
    assert any(f.endswith("pair_label.txt") and ln == len(pairs) + 1 and "duplicate" in m for f, ln, m in warns)


def test_image_with_two_ids_is_an_error(data, tmp_path):
    lines = lines_of(train_label(data))
    write_lines(train_label(data), lines + [lines[1].split()[0] + " 7"])
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "label.txt", len(lines) + 1, "but id 0 on line 2")


@pytest.mark.parametrize("path", ["../../outside.jpg", "../val/../../x.jpg", "/etc/hostname"])
def test_paths_escaping_the_root(data, tmp_path, path):
    set_line(train_label(data), 5, f"{path} 1")
    code, result, log = check(data, str(tmp_path / "out"))
    words = "absolute path" if path.startswith("/") else "outside the dataset folder"
    assert_failed_at(code, result, log, "label.txt", 5, words)


# --------------------------------------------------------------------------- images
def test_missing_image(data, tmp_path):
    os.remove(os.path.join(data, "train", "images", "00002", "01.jpg"))
    line = lines_of(train_label(data)).index("images/00002/01.jpg 2") + 1
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "label.txt", line, "file not found")


def test_file_that_is_not_an_image(data, tmp_path):
    with open(os.path.join(data, "train", "images", "00003", "00.jpg"), "wb") as f:
        f.write(b"this is a text file, not a JPEG")
    line = lines_of(train_label(data)).index("images/00003/00.jpg 3") + 1
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "label.txt", line, "does not decode")


def test_truncated_png_found_from_its_header_alone(data, tmp_path):
    import cv2

    path = os.path.join(data, "train", "images", "00004", "02.jpg")
    ok, buf = cv2.imencode(".png", cv2.imread(path))
    with open(path, "wb") as f:  # a PNG cut in half (the checker goes by content, not by extension)
        f.write(buf.tobytes()[: len(buf) // 2])
    line = lines_of(train_label(data)).index("images/00004/02.jpg 4") + 1
    # decode_sample=0: only the header reader runs, and it must still catch the cut file
    code, result, log = check(data, str(tmp_path / "out"), "CheckDataset.decode_sample=0")
    assert_failed_at(code, result, log, "label.txt", line, "truncated")
    assert result["analysis"]["image_check"]["decoded"] == 0


def test_truncated_jpeg_is_decoded_even_outside_the_sample(data, tmp_path):
    path = os.path.join(data, "train", "images", "00004", "02.jpg")
    with open(path, "rb") as f:
        body = f.read()
    with open(path, "wb") as f:
        f.write(body[: len(body) * 2 // 3])
    line = lines_of(train_label(data)).index("images/00004/02.jpg 4") + 1
    code, result, log = check(data, str(tmp_path / "out"), "CheckDataset.decode_sample=0")
    assert_failed_at(code, result, log, "label.txt", line, "does not decode")
    assert any("no end marker" in w["message"] and w["line"] == line for w in result["analysis"]["warnings"])
    assert result["analysis"]["image_check"]["decoded"] == 1


# --------------------------------------------------------------------------- val/pair_label.txt lines
def test_pair_label_not_0_or_1(data, tmp_path):
    a, b, _ = lines_of(pair_label(data))[2].split()
    set_line(pair_label(data), 3, f"{a} {b} 2")
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "pair_label.txt", 3, "not 0 or 1")


def test_pair_wrong_field_count(data, tmp_path):
    a, b, _ = lines_of(pair_label(data))[2].split()
    set_line(pair_label(data), 3, f"{a} {b}")
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "pair_label.txt", 3, "expected 3 fields")


def test_pair_naming_the_same_file_twice(data, tmp_path):
    a = lines_of(pair_label(data))[4].split()[0]
    set_line(pair_label(data), 5, f"{a} ./{a} 1")
    code, result, log = check(data, str(tmp_path / "out"))
    assert_failed_at(code, result, log, "pair_label.txt", 5, "same image twice")


# --------------------------------------------------------------------------- reporting
def test_all_problems_are_reported(data, tmp_path):
    set_line(train_label(data), 2, "images/00000/00.jpg x")
    set_line(train_label(data), 6, "a b c")
    a, b, _ = lines_of(pair_label(data))[1].split()
    set_line(pair_label(data), 2, f"{a} {b} yes")
    code, result, log = check(data, str(tmp_path / "out"))
    assert code == 1
    where = {(os.path.basename(f), ln) for f, ln, _ in errors(result)}
    assert {("label.txt", 2), ("label.txt", 6), ("pair_label.txt", 2)} <= where
    assert "[3]" in log


def test_error_list_is_capped(data, tmp_path):
    lines = lines_of(train_label(data))
    write_lines(train_label(data), [lines[0]] + [f"{ln.split()[0]} bad" for ln in lines[1:8]] + lines[8:])
    code, result, log = check(data, str(tmp_path / "out"), "CheckDataset.max_errors=3")
    assert code == 1
    assert len(result["analysis"]["errors"]) == 3
    assert result["analysis"]["num_errors"] >= 7
    assert "more errors" in log


def test_num_classes_must_agree_with_the_data(data, tmp_path):
    code, result, log = check(data, str(tmp_path / "out"), "Train.num_classes=12")
    assert code == 1
    assert any("Train.num_classes is 12" in m for _, _, m in errors(result))


@pytest.mark.parametrize("part", ["convert", "split"])
def test_convert_and_split_are_not_supported(demo, tmp_path, part):
    with pytest.raises(ConfigError, match="not supported for face features"):
        check(demo, str(tmp_path / "out"), f"CheckDataset.{part}.enable=True")


# --------------------------------------------------------------------------- the loaders share the parser
def test_loaders_return_absolute_paths(demo):
    train = load_train_list(demo)
    pairs = load_pair_list(demo)
    assert len(train) == 30 and len(pairs) == 8
    assert all(os.path.isabs(p) and os.path.isfile(p) for p, _ in train)
    assert sorted({i for _, i in train}) == list(range(10))
    assert {label for _, _, label in pairs} == {0, 1}


def test_loaders_raise_naming_file_and_line(data):
    set_line(train_label(data), 7, "images/00002/00.jpg")
    with pytest.raises(DatasetError, match=r"label\.txt:7: expected 2 fields"):
        load_train_list(data)
    set_line(pair_label(data), 4, "x.jpg y.jpg 5")
    with pytest.raises(DatasetError, match=r"pair_label\.txt:4: pair label '5'"):
        load_pair_list(data)


# --------------------------------------------------------------------------- the command line
def test_cli_failure_message_and_exit_code(data, tmp_path):
    set_line(train_label(data), 3, "images/00000/01.jpg zero")
    out = str(tmp_path / "out")
    proc = subprocess.run([sys.executable, "main.py", "-c", CONFIG, "-o", "Global.mode=check_dataset",
                           "-o", f"Global.dataset_dir={data}", "-o", f"Global.output={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "Check dataset failed. We encountered the following error:" in text
    assert f"{train_label(data)}:3" in text
    assert "Please try to resolve the issue as follows:" in text
    with open(os.path.join(out, "check_dataset_result.json"), encoding="utf-8") as f:
        assert json.load(f)["check_pass"] is False


# --------------------------------------------------------------------------- header reader and sampling
@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".pgm", ".ppm"])
def test_header_reader_sizes(tmp_path, ext):
    import cv2
    import numpy as np

    from datasets.image_headers import HeaderError, image_header

    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    if ext == ".pgm":
        img = img[:, :, 0]
    path = str(tmp_path / ("x" + ext))
    assert cv2.imwrite(path, img)
    kind, w, h, note = image_header(path)
    assert (w, h) == (53, 37) and kind is not None and note is None
    with open(path, "rb") as f:
        body = f.read()
    with open(path, "wb") as f:
        f.write(body[: len(body) // 2])
    if ext == ".jpg":
        assert image_header(path)[3] is not None  # a doubt (warning), then the decoder decides
    else:
        with pytest.raises(HeaderError, match="truncated"):
            image_header(path)
    with pytest.raises(HeaderError, match="not found"):
        image_header(str(tmp_path / "missing.png"))


def test_only_a_sample_is_decoded(demo, tmp_path):
    code, result, log = check(demo, str(tmp_path / "out"), "CheckDataset.decode_sample=5")
    assert code == 0, log
    ic = result["analysis"]["image_check"]
    assert ic["headers_read"] == ic["listed_files"] > 5 and ic["decoded"] == 5
