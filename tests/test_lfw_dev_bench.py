"""benchmarks/lfw_dev.py train: the fold datasets it builds (on 3 lfw_dev people; skipped without them)."""
import importlib.util
import os

import cv2
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LFW = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "lfw_dev"))
PEOPLE = ("Abel_Pacheco", "Akhmed_Zakayev", "Aaron_Sorkin")


def _bench():
    spec = importlib.util.spec_from_file_location("lfw_dev_bench", os.path.join(REPO, "benchmarks", "lfw_dev.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not all(os.path.isdir(os.path.join(LFW, "images", p)) for p in PEOPLE),
                    reason="LFW photos not available at ../shared/data/lfw_dev")
def test_fold_datasets_split_by_fold_keep_pair_order_and_give_both_variants(tmp_path):
    bench = _bench()
    data = tmp_path / "lfw"
    (data / "images").mkdir(parents=True)
    for p in PEOPLE:
        os.symlink(os.path.join(LFW, "images", p), data / "images" / p)
    a, b, c = PEOPLE
    # fold size 1: fold 1 (train) holds a's pair, fold 2 (val) b/c pairs in this order
    (data / "pair_label.txt").write_text(
        f"images/{a}/{a}_0001.jpg images/{a}/{a}_0002.jpg 1\n"
        f"images/{b}/{b}_0002.jpg images/{b}/{b}_0003.jpg 1\n"
        f"images/{b}/{b}_0001.jpg images/{c}/{c}_0001.jpg 0\n")
    s = bench.build_fold_datasets(str(data), str(tmp_path / "work"), crop=150, train_folds=(1,),
                                  val_folds=(2, 3), fold_size=1, log=lambda *_: None)
    n_a = len(os.listdir(os.path.join(LFW, "images", a)))
    assert (s["train_identities"], s["train_images"], s["val_pairs"], s["val_images"]) == (1, n_a, 2, 4)
    for v in bench.VARIANTS:
        root = tmp_path / "work" / v
        train = [ln.split() for ln in (root / "train" / "label.txt").read_text().splitlines() if not ln.startswith("#")]
        assert len(train) == n_a and {ident for _, ident in train} == {"0"}
        assert all(p.startswith(f"images/{a}/") and p.endswith(".png") for p, _ in train)
        pairs = [ln.split() for ln in (root / "val" / "pair_label.txt").read_text().splitlines()
                 if not ln.startswith("#")]
        assert pairs == [[f"images/{b}/{b}_0002.png", f"images/{b}/{b}_0003.png", "1"],
                         [f"images/{b}/{b}_0001.png", f"images/{c}/{c}_0001.png", "0"]]
        for rel in [p for p, _ in train] + [p for pr in pairs for p in pr[:2]]:
            split = "train" if rel.startswith(f"images/{a}/") else "val"
            assert cv2.imread(str(root / split / rel)).shape == (112, 112, 3)
    # the aligned face differs from the centre crop (a face was found), the centre crop is the photo's middle
    photo = cv2.imread(os.path.join(LFW, "images", a, f"{a}_0001.jpg"))
    centre = cv2.imread(str(tmp_path / "work" / "center" / "train" / "images" / a / f"{a}_0001.png"))
    aligned = cv2.imread(str(tmp_path / "work" / "aligned" / "train" / "images" / a / f"{a}_0001.png"))
    assert abs(centre.astype(int) - bench.center_crop(photo, 150).astype(int)).max() <= 1
    assert abs(centre.astype(int) - aligned.astype(int)).mean() > 5
    assert s["no_face_train"] == [] and s["no_face_val"] == []


def test_fold_datasets_refuse_people_in_both_splits(tmp_path):
    bench = _bench()
    (tmp_path / "images").mkdir()
    (tmp_path / "pair_label.txt").write_text("images/x/x_0001.jpg images/x/x_0002.jpg 1\n"
                                             "images/x/x_0001.jpg images/y/y_0001.jpg 0\n")
    with pytest.raises(SystemExit, match="both the train and the val"):
        bench.build_fold_datasets(str(tmp_path), str(tmp_path / "work"), train_folds=(1,), val_folds=(2,),
                                  fold_size=1, log=lambda *_: None)
