"""GalleryIndex on faiss with random unit vectors: no Paddle, no images."""
import json
import os

import numpy as np
import pytest

from engine.gallery_index import (
    INDEX_TYPES,
    UNKNOWN_LABEL,
    GalleryIndex,
    IndexMismatchError,
    apply_threshold,
    choose_nlist,
    list_gallery,
    normalize_index_type,
)
from foundation.errors import UserError

DIM = 32


def _people(n_people=20, per_person=5, noise=0.15, seed=0, dim=DIM):
    """Unit vectors clustered per person: (features, labels, centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    feats, labels = [], []
    for p in range(n_people):
        for _ in range(per_person):
            feats.append(centres[p] + noise * rng.normal(size=dim).astype(np.float32) / np.sqrt(dim))
            labels.append(f"person_{p:02d}")
    return np.asarray(feats, np.float32), labels, centres


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_build_search_remove_save_load(index_type, tmp_path):
    feats, labels, centres = _people()
    index = GalleryIndex(DIM, "MobileFaceNet", index_type, nprobe=64)
    ids = index.add(feats * 3.0, labels, [f"/g/{i}.jpg" for i in range(len(labels))])  # scale: normalised inside
    assert len(index) == len(feats) and ids.tolist() == list(range(len(feats)))

    # every person's centre finds that person first, with cosine scores best first and <= 1
    out_labels, out_scores, out_ids = index.search(centres, top_k=5)
    for p in range(len(centres)):
        assert out_labels[p][0] == f"person_{p:02d}"
        assert np.all(np.diff(out_scores[p]) <= 1e-6) and out_scores[p][0] <= 1.0 + 1e-5
        assert out_scores[p][0] > 0.9
    # a stored vector finds itself with cosine 1
    lab, sc, i = index.search(feats[7], top_k=1)
    assert i[0][0] == 7 and sc[0][0] == pytest.approx(1.0, abs=1e-4)

    # remove by label: that person can no longer be found; others unaffected
    assert index.remove_label("person_03") == 5
    assert index.remove_label("person_03") == 0
    out_labels, _, _ = index.search(centres[3:5], top_k=10)
    assert "person_03" not in out_labels[0]
    assert out_labels[1][0] == "person_04"
    # remove by id
    assert index.remove_ids([0, 1, 999]) == 2
    assert len(index) == len(feats) - 7
    lab, _, found_ids = index.search(centres[0], top_k=3)
    assert 0 not in found_ids[0] and 1 not in found_ids[0] and lab[0][0] == "person_00"

    # save / load round trip keeps ids, labels, paths and answers
    index.save(str(tmp_path / "ix"))
    assert sorted(os.listdir(tmp_path / "ix")) == ["id_map.json", "meta.json", "vector.index"]
    meta = json.loads((tmp_path / "ix" / "meta.json").read_text())
    assert meta["model_name"] == "MobileFaceNet" and meta["embedding_size"] == DIM
    assert meta["index_type"] == index_type and meta["metric"] == "inner_product" and meta["normalized"] is True
    id_map = json.loads((tmp_path / "ix" / "id_map.json").read_text())
    assert id_map["2"] == {"label": "person_00", "path": "/g/2.jpg"} and "0" not in id_map
    loaded = GalleryIndex.load(str(tmp_path / "ix"))
    assert len(loaded) == len(index) and loaded.index_type == index_type
    a = index.search(centres, top_k=4)
    b = loaded.search(centres, top_k=4)
    assert a[0] == b[0]
    np.testing.assert_allclose(np.concatenate(a[1]), np.concatenate(b[1]), atol=1e-5)

    # ids keep growing after a reload (no reuse of a removed id)
    new_ids = loaded.add(centres[3:4], ["person_03"])
    assert new_ids[0] == len(feats)
    assert loaded.search(centres[3], top_k=1)[0][0][0] == "person_03"
    # removing what was appended after the reload works too
    assert loaded.remove_ids(new_ids) == 1
    assert "person_03" not in loaded.labels


def test_hnsw_removal_rebuilds_and_keeps_the_rest_searchable():
    feats, labels, centres = _people(n_people=30, per_person=4, seed=1)
    index = GalleryIndex(DIM, "m", "HNSW")
    index.add(feats, labels)
    index.remove_ids(list(range(0, 120, 2)))  # every second vector
    assert len(index) == 60
    _, _, ids = index.search(feats[1::2], top_k=1)
    assert [int(i[0]) for i in ids] == list(range(1, 120, 2))


def test_ivf_nlist_grows_with_gallery_and_is_trained():
    assert choose_nlist(10) == 1
    assert choose_nlist(10_000) == 256  # min(4 * sqrt(N) = 400, N // 39 = 256)
    assert choose_nlist(100_000) == round(4 * np.sqrt(100_000))
    feats, labels, _ = _people(n_people=50, per_person=40, seed=2)
    index = GalleryIndex(DIM, "m", "IVF", nprobe=4)
    index.add(feats, labels)
    assert index.nlist == choose_nlist(len(feats)) and index.index.is_trained


def test_threshold_direction_and_explicit_unknown():
    # cosine: higher = more alike, so a best score below the threshold is unknown
    assert apply_threshold(["ann", "bob"], np.array([0.80, 0.30]), 0.4) == ("ann", pytest.approx(0.80))
    assert apply_threshold(["ann"], np.array([0.35]), 0.4) == (UNKNOWN_LABEL, pytest.approx(0.35))
    assert apply_threshold(["ann"], np.array([0.4]), 0.4)[0] == "ann"
    assert apply_threshold([], np.array([]), 0.4) == (UNKNOWN_LABEL, None)
    assert UNKNOWN_LABEL == "unknown"


def test_query_from_another_model_is_refused(tmp_path):
    feats, labels, _ = _people(n_people=3, per_person=2)
    index = GalleryIndex(DIM, "MobileFaceNet", "Flat", model_fingerprint="abc")
    index.add(feats, labels)
    with pytest.raises(IndexMismatchError, match="embedding size 64 != 32"):
        index.search(np.ones((1, 64), np.float32))
    with pytest.raises(IndexMismatchError, match="ResNet50_face"):
        index.search(feats[:1], model_name="ResNet50_face")
    with pytest.raises(IndexMismatchError, match="weights differ"):
        index.search(feats[:1], model_name="MobileFaceNet", model_fingerprint="other")
    with pytest.raises(IndexMismatchError):
        index.add(np.ones((1, 64), np.float32), ["x"])
    index.save(str(tmp_path / "ix"))
    loaded = GalleryIndex.load(str(tmp_path / "ix"))
    with pytest.raises(IndexMismatchError, match="rebuild the index"):
        loaded.check_model("ResNet50_face", 512)
    loaded.check_model("MobileFaceNet", DIM, "abc")  # the right model passes


def test_small_gallery_returns_fewer_than_top_k_and_empty_gallery_is_handled(tmp_path):
    index = GalleryIndex(DIM, "m", "Flat")
    labels, scores, ids = index.search(np.ones((2, DIM), np.float32), top_k=5)
    assert labels == [[], []] and all(len(s) == 0 for s in scores)
    with pytest.raises(UserError, match="empty gallery"):
        index.save(str(tmp_path / "empty"))
    assert not (tmp_path / "empty").exists()
    feats, lab, _ = _people(n_people=2, per_person=1)
    index.add(feats, lab)
    labels, scores, _ = index.search(feats[:1], top_k=5)
    assert len(labels[0]) == 2 and len(scores[0]) == 2


def test_load_errors_name_the_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist: build it first"):
        GalleryIndex.load(str(tmp_path / "missing"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "meta.json").write_text("{}")
    with pytest.raises(UserError, match="has no vector.index"):
        GalleryIndex.load(str(tmp_path / "half"))
    feats, labels, _ = _people(n_people=2, per_person=2)
    index = GalleryIndex(DIM, "m")
    index.add(feats, labels)
    index.save(str(tmp_path / "ix"))
    (tmp_path / "ix" / "id_map.json").write_text(json.dumps({"0": {"label": "a", "path": None}}))
    with pytest.raises(UserError, match="inconsistent"):
        GalleryIndex.load(str(tmp_path / "ix"))
    with pytest.raises(UserError, match="index_type"):
        normalize_index_type("LSH")
    assert normalize_index_type("hnsw32") == "HNSW" and normalize_index_type("ivf") == "IVF"


def test_list_gallery_folders_and_list_file(tmp_path):
    for person in ("bob", "ann"):
        (tmp_path / "g" / person).mkdir(parents=True)
        for k in range(2):
            (tmp_path / "g" / person / f"{k}.jpg").write_bytes(b"x")
    (tmp_path / "g" / "ann" / "notes.txt").write_text("not an image")
    items = list_gallery(str(tmp_path / "g"))
    assert [(os.path.relpath(p, tmp_path / "g"), lbl) for p, lbl in items] == [
        ("ann/0.jpg", "ann"), ("ann/1.jpg", "ann"), ("bob/0.jpg", "bob"), ("bob/1.jpg", "bob")]
    lst = tmp_path / "list.txt"
    lst.write_text("# gallery\nann/0.jpg Ann Lee\n\nbob/1.jpg bob\n")
    items = list_gallery(str(tmp_path / "g"), str(lst))
    assert [lbl for _, lbl in items] == ["Ann Lee", "bob"]
    assert items[0][0] == str(tmp_path / "g" / "ann" / "0.jpg")
    lst.write_text("ann/0.jpg ann\nonly_a_path.jpg\n")
    with pytest.raises(UserError, match=r"list.txt:2: expected '<image path> <label>'"):
        list_gallery(str(tmp_path / "g"), str(lst))
    with pytest.raises(UserError, match="does not exist"):
        list_gallery(str(tmp_path / "nope"))


def test_orl_identification_protocol_counts_rank1_per_enrolment_choice():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                        "orl_identification.py")
    spec = importlib.util.spec_from_file_location("orl_identification", path)
    orl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(orl)
    feats, labels, _ = _people(n_people=6, per_person=4, noise=0.1, seed=5)
    image = [str(k + 1) for _ in range(6) for k in range(4)]
    rows = orl.identification(feats, labels, image)
    assert len(rows) == 4 and all(r["queries"] == 18 and r["rank1"] == 1.0 for r in rows)
    # swap two people's labels on every image but the first: queries of those two now fail at rank 1
    swapped = [("person_01" if lbl == "person_00" else "person_00" if lbl == "person_01" else lbl)
               if img != "1" else lbl for lbl, img in zip(labels, image)]
    rows = orl.identification(feats, swapped, image)
    assert rows[0]["rank1"] == pytest.approx(1 - 6 / 18)
