"""Folder-per-identity import: identity split, balanced pairs, clear errors, ORL import passes check_dataset."""
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from datasets.import_folders import import_folders
from datasets.import_folders import main as import_main
from datasets.label_files import load_pair_list, load_train_list
from engine.align_folders import main as align_main
from foundation.errors import DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORL = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "orl_faces"))


def make_source(root, sizes, ext=".png"):
    """root/<person>/<k><ext> small random images; sizes: {person name: image count}."""
    rng = np.random.default_rng(0)
    for name, count in sizes.items():
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for k in range(count):
            cv2.imwrite(os.path.join(folder, f"img {k}{ext}"), rng.integers(0, 255, (40, 32, 3), dtype=np.uint8))
    return root


@pytest.fixture
def source(tmp_path):
    sizes = {f"person_{i}": 4 for i in range(8)}
    sizes["Jane Doe"] = 3  # a space in the folder name
    sizes["single"] = 1
    src = make_source(str(tmp_path / "src"), sizes)
    os.makedirs(os.path.join(src, "empty_person"))
    with open(os.path.join(src, "README"), "w") as f:
        f.write("not an identity")
    return src


def identity_of(path):
    return os.path.basename(os.path.dirname(path))


def test_split_by_identity(source, tmp_path):
    dst = str(tmp_path / "dst")
    s = import_folders(source, dst, val_identities=4, pairs=8, seed=0, log=lambda *a: None)
    train = load_train_list(dst)
    pairs = load_pair_list(dst)
    train_people = {identity_of(p) for p, _ in train}
    val_people = {identity_of(p) for a, b, _ in pairs for p in (a, b)}
    assert len(train_people) == s["train_identities"] == 6
    assert s["val_identities"] == 4 and s["skipped_empty"] == ["empty_person"]
    assert not train_people & set(s["val_names"])
    assert val_people <= set(s["val_names"])
    # ids are 0..N-1, one per person
    assert sorted({i for _, i in train}) == list(range(6))
    assert all(len({identity_of(p) for p, i in train if i == k}) == 1 for k in range(6))
    # balanced, unique, same-person pairs really are the same folder
    assert [lab for _, _, lab in pairs].count(1) == 4 and len(pairs) == 8
    assert len({frozenset((a, b)) for a, b, _ in pairs}) == 8
    assert all((identity_of(a) == identity_of(b)) == bool(lab) for a, b, lab in pairs)
    # spaces never reach the space-separated label files
    assert all(" " not in os.path.relpath(p, dst) for p, _ in train)


def test_fixed_seed_same_split(source, tmp_path):
    a = import_folders(source, str(tmp_path / "a"), val_identities=3, pairs=6, seed=7, log=lambda *a: None)
    b = import_folders(source, str(tmp_path / "b"), val_identities=3, pairs=6, seed=7, log=lambda *a: None)
    assert a["val_names"] == b["val_names"]
    with open(tmp_path / "a" / "val" / "pair_label.txt") as fa, open(tmp_path / "b" / "val" / "pair_label.txt") as fb:
        assert fa.read().splitlines()[1:] == fb.read().splitlines()[1:]


def test_too_many_pairs_says_how_many_same_pairs_are_possible(tmp_path):
    src = make_source(str(tmp_path / "src"), {"a": 2, "b": 1, "c": 1, "d": 5})
    with pytest.raises(DatasetError, match=r"allow only 1 \(2 of them have a single image"):
        import_folders(src, str(tmp_path / "dst"), val_identities=3, pairs=4, seed=1, log=lambda *a: None)
    assert not os.path.exists(tmp_path / "dst")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_empty_source_is_a_clear_error(tmp_path):
    (tmp_path / "src" / "nobody").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no identity folders with images"):
        import_folders(str(tmp_path / "src"), str(tmp_path / "dst"), val_identities=0, log=lambda *a: None)
    with pytest.raises(DatasetError, match="does not exist"):
        import_folders(str(tmp_path / "missing"), str(tmp_path / "dst"), log=lambda *a: None)


def test_too_many_val_identities(source, tmp_path):
    with pytest.raises(DatasetError, match="must be between 0 and 9"):
        import_folders(source, str(tmp_path / "dst"), val_identities=10, log=lambda *a: None)


def test_linked_import_passes_check_dataset(source, tmp_path):
    from datasets.check import check

    dst = str(tmp_path / "linked")
    import_folders(source, dst, val_identities=3, pairs=6, seed=0, mode="link", log=lambda *a: None)
    first = load_train_list(dst)[0][0]
    assert os.path.islink(first)
    result, problems = check(dst, str(tmp_path / "out"))
    assert result["check_pass"], [p for p in problems.errors]
    assert result["analysis"]["image_size"]["most_common"] == "32x40"


def test_command_line(source, tmp_path):
    dst = str(tmp_path / "cli")
    proc = subprocess.run([sys.executable, "-m", "datasets.import_folders", source, dst, "--val-identities", "3",
                           "--pairs", "6"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "same-person pairs were possible" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "datasets.import_folders", source, dst, "--val-identities", "3"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "already exists" in proc.stderr


@pytest.mark.skipif(not os.path.isdir(ORL), reason="ORL faces (../shared/data/orl_faces) not present")
def test_orl_import_passes_check_dataset(tmp_path):
    from datasets.check import check

    dst = str(tmp_path / "orl")
    s = import_folders(ORL, dst, val_identities=10, seed=0, log=lambda *a: None)
    assert s["train_identities"] == 30 and s["val_identities"] == 10
    assert s["pairs"] == 600 and s["same_pairs"] == 300 and s["same_pairs_possible"] == 450
    result, problems = check(dst, str(tmp_path / "out"))
    assert result["check_pass"], problems.errors
    a, an = result["attributes"], result["analysis"]
    assert a["train_num_classes"] == 30 and a["train_samples"] == 300 and a["val_samples"] == 600
    assert an["image_size"]["most_common"] == "92x112"
    assert len(a["train_sample_paths"]) == 10 and len(a["val_sample_paths"]) == 10


# --------------------------------------------------------------------------- aligned import (engine.align_folders)
LFW = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "lfw_dev"))
needs_lfw = pytest.mark.skipif(not os.path.isdir(LFW), reason="LFW photos not available at ../shared/data/lfw_dev")
LFW_PEOPLE = {"Abdullah_Gul": 4, "Adrien_Brody": 4, "Al_Sharpton": 4, "Albert_Costa": 4}


@needs_lfw
def test_aligned_import_of_lfw_people_and_a_photo_without_a_face(tmp_path, capsys):
    """Four LFW people (4 photos each) and one flat grey 'photo': every real photo becomes an aligned
    112x112 PNG, the grey one is left out, counted, printed and listed in convert_report.txt."""
    src = tmp_path / "src"
    for person, n in LFW_PEOPLE.items():
        (src / person).mkdir(parents=True)
        for k in range(1, n + 1):
            name = f"{person}_{k:04d}.jpg"
            shutil.copyfile(os.path.join(LFW, "images", person, name), src / person / name)
    cv2.imwrite(str(src / "Al_Sharpton" / "grey.png"), np.full((250, 250, 3), 128, np.uint8))
    dst = tmp_path / "aligned"
    assert align_main([str(src), str(dst), "--val-identities", "2", "--pairs", "8"]) == 0
    out = capsys.readouterr().out
    assert "1 image(s) left out" in out and "grey.png (no face)" in out and "convert_report.txt" in out
    train, pairs = load_train_list(str(dst)), load_pair_list(str(dst))
    images = [p for p, _ in train] + [p for a, b, _ in pairs for p in (a, b)]
    written = [os.path.join(r, f) for r, _, fs in os.walk(dst) for f in fs if f.endswith(".png")]
    assert len(written) == 16  # every real photo had its face found
    for path in images:
        img = cv2.imread(path)
        assert path.endswith(".png") and img.shape == (112, 112, 3)
    report = (dst / "convert_report.txt").read_text()
    assert "grey.png\tdropped: no face" in report
    assert not any(".convert" in name for name in os.listdir(dst))
    # the aligned set passes check_dataset
    proc = subprocess.run([sys.executable, "main.py", "-c", "configs/face_recognition/MobileFaceNet.yaml",
                           "-o", "Global.mode=check_dataset", "-o", f"Global.dataset_dir={dst}",
                           "-o", f"Global.output={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_convert_hook_drops_and_notes_images_and_refuses_link(source, tmp_path):
    """The importer's convert hook (what engine.align_folders plugs a detector into): an image the
    callable rejects is left out and reported; a person left with nothing is skipped."""
    def convert(path):
        if "single" in path:
            return None, "no face"
        img = cv2.imread(path)
        return cv2.resize(img, (112, 112)), ("2 faces, the main one kept" if path.endswith("img 0.png") else "")

    dst = tmp_path / "dst"
    s = import_folders(source, str(dst), val_identities=2, pairs=4, seed=0, log=lambda *a: None, convert=convert)
    assert [os.path.basename(p) for p, _ in s["dropped"]] == ["img 0.png"] and "single" in s["skipped_empty"]
    assert len(s["noted"]) == 9  # every remaining person's img 0
    report = (dst / "convert_report.txt").read_text().splitlines()
    assert sum("dropped: no face" in line for line in report) == 1
    assert all(p.endswith(".png") and cv2.imread(p).shape == (112, 112, 3) for p, _ in load_train_list(str(dst)))
    with pytest.raises(DatasetError, match="--link cannot be used"):
        import_folders(source, str(tmp_path / "d2"), 2, 4, 0, "link", convert=convert)


def test_import_folders_align_flag_points_at_the_aligning_command(source, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        import_main([source, str(tmp_path / "d"), "--align"])
    assert e.value.code == 2 and "python -m engine.align_folders" in capsys.readouterr().err
