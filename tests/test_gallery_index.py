"""GalleryIndex on faiss with random unit vectors: no Paddle, no images."""
import json
import os

import faiss
import numpy as np
import pytest
import yaml

from engine.gallery.faiss_index import (
    COMPRESSED_TYPES,
    EXACT_FILE,
    INDEX_TYPES,
    UNKNOWN_LABEL,
    GalleryIndex,
    IndexMismatchError,
    apply_threshold,
    choose_nlist,
    l2_normalize_rows,
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
    assert sorted(os.listdir(tmp_path / "ix")) == ["id_map.yaml", "meta.json", "vector.index"]
    meta = json.loads((tmp_path / "ix" / "meta.json").read_text())
    assert meta["model_name"] == "MobileFaceNet" and meta["embedding_size"] == DIM
    assert meta["index_type"] == index_type and meta["metric_type"] == "IP" and meta["normalized"] is True
    assert meta["sources"]["2"] == "/g/2.jpg" and "0" not in meta["sources"]
    info = yaml.safe_load((tmp_path / "ix" / "id_map.yaml").read_text())
    assert info["id_map"][2] == "person_00" and 0 not in info["id_map"]
    assert info["metric_type"] == "IP" and info["index_type"] == index_type
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


@pytest.mark.parametrize("rerank", [0, 4])
@pytest.mark.parametrize("index_type", COMPRESSED_TYPES)
def test_compressed_types_train_search_remove_and_round_trip(index_type, rerank, tmp_path):
    dim = 64
    feats, labels, centres = _people(n_people=40, per_person=10, noise=0.3, seed=3, dim=dim)
    index = GalleryIndex(dim, "m", index_type, nprobe=64, rerank=rerank)
    index.add(feats, labels)
    assert index.index_type == index_type and len(index) == len(feats)
    if index_type == "IVFPQ":
        assert index.pq_m == dim // 8 and faiss_type(index) == "IndexIVFPQ"
    out_labels, out_scores, _ = index.search(centres, top_k=3)
    assert [lab[0] for lab in out_labels] == [f"person_{p:02d}" for p in range(len(centres))]
    exact = l2_normalize_rows(feats) @ l2_normalize_rows(centres).T
    best = np.max(exact, axis=0)
    if rerank:  # re-scored on the exact features: the top-1 cosine is the exact one
        np.testing.assert_allclose([s[0] for s in out_scores], best, atol=1e-5)
    else:  # compressed scores are close to, not equal to, the exact cosine
        assert np.max(np.abs(np.array([s[0] for s in out_scores]) - best)) < 0.15
    assert index.remove_label("person_05") == 10
    assert "person_05" not in index.search(centres[5], top_k=10)[0][0]
    index.save(str(tmp_path / "ix"))
    assert os.path.isfile(tmp_path / "ix" / EXACT_FILE) == bool(rerank)
    loaded = GalleryIndex.load(str(tmp_path / "ix"))
    assert loaded.index_type == index_type and loaded.rerank == rerank and len(loaded) == len(index)
    a, b = index.search(centres, top_k=3), loaded.search(centres, top_k=3)
    assert a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[2], b[2]))
    changed = loaded.copy()  # the loaded exact features are memory-mapped read-only; the copy can change
    changed.add(centres[5:6], ["person_05"])
    assert changed.search(centres[5], top_k=1)[0][0][0] == "person_05"
    assert changed.remove_ids(list(changed.ids_of_label("person_06"))) == 10
    assert len(loaded) == len(index)
    # the loaded index itself changes too (a resumed build adds to what it loaded)
    loaded.add(centres[5:6], ["person_05"])
    assert loaded.remove_label("person_07") == 10 and loaded.search(centres[5], top_k=1)[0][0][0] == "person_05"


def test_compressed_types_on_a_tiny_gallery_and_bad_settings():
    feats, labels, centres = _people(n_people=3, per_person=2, dim=64)
    for index_type in COMPRESSED_TYPES:
        index = GalleryIndex(64, "m", index_type, rerank=2)
        index.add(feats, labels)  # fewer vectors than 256 PQ centroids: fewer bits per code
        assert index.search(centres, top_k=1)[0] == [["person_00"], ["person_01"], ["person_02"]]
    with pytest.raises(UserError, match="pq_m 7 must divide the embedding size 64"):
        GalleryIndex(64, "m", "IVFPQ", pq_m=7)
    with pytest.raises(UserError, match="rerank"):
        GalleryIndex(64, "m", "IVFPQ", rerank=-1)
    assert normalize_index_type("ivf_pq") == "IVFPQ" and normalize_index_type("HNSWSQ8") == "HNSWSQ"


def faiss_type(index):
    import faiss

    return type(faiss.downcast_index(index.index)).__name__


def test_hnsw_removal_rebuilds_and_keeps_the_rest_searchable():
    feats, labels, centres = _people(n_people=30, per_person=4, seed=1)
    index = GalleryIndex(DIM, "m", "HNSW32")
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
    (tmp_path / "ix" / "id_map.yaml").write_text(yaml.safe_dump({"id_map": {0: "a"}, "metric_type": "IP",
                                                                 "index_type": "Flat"}))
    with pytest.raises(UserError, match="inconsistent"):
        GalleryIndex.load(str(tmp_path / "ix"))
    with pytest.raises(UserError, match="index_type"):
        normalize_index_type("LSH")
    assert normalize_index_type("hnsw") == "HNSW32" and normalize_index_type("ivf") == "IVF"


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


def test_gallery_txt_with_a_bom_crlf_and_spaces_in_paths(tmp_path):
    """A gallery.txt saved by a Windows editor (UTF-8 BOM, CRLF) keeps its first line, and a path may
    hold spaces: it runs up to its image extension, the label is the rest."""
    (tmp_path / "g" / "Mary Ann").mkdir(parents=True)
    lst = tmp_path / "gallery.txt"
    lst.write_bytes("\ufeffMary Ann/1.jpg Mary Ann\r\nMary Ann/2.PNG mary\r\nbob/x.jpg bob\r\n".encode("utf-8"))
    items = list_gallery(str(tmp_path / "g"), str(lst))
    assert [(os.path.relpath(p, tmp_path / "g"), lbl) for p, lbl in items] == [
        ("Mary Ann/1.jpg", "Mary Ann"), ("Mary Ann/2.PNG", "mary"), ("bob/x.jpg", "bob")]


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


# --------------------------------------------------------------------------- PaddleX's index layout
def _read_like_paddlex(folder):
    """What PaddleX's IndexData.load and FaissIndexer do with a folder: read id_map.yaml with PyYAML,
    check its three keys, key the id map by int64, read vector.index with faiss, check the counts."""
    import faiss

    with open(os.path.join(folder, "id_map.yaml"), encoding="utf-8") as f:
        info = yaml.load(f, Loader=yaml.FullLoader)
    assert {"id_map", "metric_type", "index_type"} <= set(info)
    id_map = {np.int64(k): str(v) for k, v in info["id_map"].items()}
    index = faiss.read_index(os.path.join(folder, "vector.index"))
    assert index.ntotal == len(id_map)
    return index, id_map, info


def _paddlex_search(index, id_map, queries, threshold, topk=3):
    """PaddleX's FaissIndexer.__call__ for an IP index: labels of ids >= 0, None below the threshold."""
    scores, ids = index.search(np.ascontiguousarray(queries, np.float32), topk)
    preds = [[id_map[i] for s, i in zip(row_s, row_i) if i >= 0] for row_s, row_i in zip(scores, ids)]
    return [None if row_s[0] < threshold else p for p, row_s in zip(preds, scores)]


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_our_saved_index_reads_and_searches_the_way_paddlex_reads_it(index_type, tmp_path):
    feats, labels, centres = _people(n_people=40, per_person=3, seed=4)
    ours = GalleryIndex(DIM, "MobileFaceNet", index_type, nprobe=64)
    ours.add(feats, labels)
    ours.save(str(tmp_path / "ix"))
    index, id_map, info = _read_like_paddlex(str(tmp_path / "ix"))
    assert info["index_type"] == index_type and info["metric_type"] == "IP"
    if index_type == "IVF":
        index.nprobe = 64
    found = _paddlex_search(index, id_map, l2_normalize_rows(centres), threshold=0.5)
    assert [p[0] for p in found] == [f"person_{p:02d}" for p in range(40)]
    assert _paddlex_search(index, id_map, -l2_normalize_rows(centres[:2]), threshold=0.5) == [None, None]
    if index_type != "HNSW32":  # PaddleX's remove: faiss remove_ids, then drop the ids from the map
        drop = np.asarray(ours.ids_of_label("person_07"), dtype=np.int64)
        assert index.remove_ids(drop) == 3
        id_map = {k: v for k, v in id_map.items() if k not in drop}
        after = _paddlex_search(index, id_map, l2_normalize_rows(centres[6:9]), threshold=-1.0)
        assert after[0][0] == "person_06" and after[2][0] == "person_08" and "person_07" not in after[1]


def _write_like_paddlex(folder, feats, labels, index_type, metric_type):
    """An index folder as PaddleX's FaissBuilder.build + IndexData.save write it: index_factory
    ("Flat", "IVF<n//8>,Flat", "HNSW32") inside an IndexIDMap2, trained, ids 0..n-1, then vector.index
    and id_map.yaml (index_type, metric_type, id_map {int: str}); no meta.json."""
    import faiss

    spec = {"Flat": "Flat", "IVF": f"IVF{len(feats) // 8},Flat", "HNSW32": "HNSW32"}[index_type]
    metric = faiss.METRIC_INNER_PRODUCT if metric_type == "IP" else faiss.METRIC_L2
    index = faiss.IndexIDMap2(faiss.index_factory(feats.shape[1], spec, metric))
    index.train(feats)
    ids = np.arange(len(feats), dtype=np.int64)
    index.add_with_ids(feats, ids)
    os.makedirs(folder)
    faiss.write_index(index, os.path.join(folder, "vector.index"))
    with open(os.path.join(folder, "id_map.yaml"), "w", encoding="utf-8") as f:
        yaml.dump({"index_type": index_type, "metric_type": metric_type,
                   "id_map": {int(i): str(lbl) for i, lbl in zip(ids, labels)}}, f, default_flow_style=False)


@pytest.mark.parametrize("index_type,metric_type", [("Flat", "IP"), ("IVF", "IP"), ("HNSW32", "IP"), ("Flat", "L2"),
                                                    ("IVF", "L2")])
def test_an_index_paddlex_built_loads_searches_and_removes_here(index_type, metric_type, tmp_path, capsys):
    feats, labels, centres = _people(n_people=30, per_person=8, noise=0.1, seed=5)
    feats = l2_normalize_rows(feats)
    folder = str(tmp_path / "paddlex_index")
    _write_like_paddlex(folder, feats, labels, index_type, metric_type)
    loaded = GalleryIndex.load(folder, nprobe=1000)
    assert "no meta.json" in "".join(capsys.readouterr())
    assert len(loaded) == len(feats) and loaded.metric_type == metric_type and loaded.model_name is None
    out_labels, out_scores, _ = loaded.search(feats[::8], top_k=2)
    assert [lab[0] for lab in out_labels] == [f"person_{p:02d}" for p in range(30)]
    # every score is a cosine, whatever the metric: a stored vector finds itself at 1.0
    np.testing.assert_allclose([s[0] for s in out_scores], 1.0, atol=1e-4)
    # removal keeps the ids right, also for PaddleX's IVF inside an IndexIDMap2 (unwrapped at load)
    if index_type != "HNSW32":
        assert loaded.remove_ids(list(range(8, 16))) == 8  # every photo of person_01
        out_labels, _, out_ids = loaded.search(feats[::8], top_k=1)
        assert out_labels[1][0] != "person_01"
        assert [lab[0] for i, lab in enumerate(out_labels) if i != 1] == [f"person_{p:02d}" for p in range(30) if p != 1]
        assert all(loaded.entries[int(i[0])]["label"] == lab[0] for i, lab in zip(out_ids, out_labels))
    # what it saves is our layout, which reads back the same
    loaded.save(str(tmp_path / "resaved"))
    again = GalleryIndex.load(str(tmp_path / "resaved"))
    assert again.search(feats[::8], top_k=1)[0] == loaded.search(feats[::8], top_k=1)[0]


def test_l2_index_scores_are_cosines_and_share_the_threshold(tmp_path):
    feats, labels, centres = _people(n_people=5, per_person=4, seed=6)
    ip, l2 = GalleryIndex(DIM, "m", metric_type="IP"), GalleryIndex(DIM, "m", metric_type="L2")
    ip.add(feats, labels)
    l2.add(feats, labels)
    a, b = ip.search(centres, top_k=3), l2.search(centres, top_k=3)
    assert a[0] == b[0]
    np.testing.assert_allclose(np.concatenate(a[1]), np.concatenate(b[1]), atol=1e-5)


def test_paddlex_index_bytes_round_trip_and_a_code_carrying_pickle_is_refused():
    import pickle

    feats, labels, _ = _people(n_people=4, per_person=2, seed=7)
    index = GalleryIndex(DIM, "m", "Flat")
    index.add(feats, labels)
    back = GalleryIndex.from_bytes(index.to_bytes())
    assert back.id_map == index.id_map and back.search(feats, 1)[0] == index.search(feats, 1)[0]
    # PaddleX's IndexData: index_info and index_bytes are properties, and its from_bytes reads ours
    assert index.index_info == {"index_type": "Flat", "metric_type": "IP", "id_map": index.id_map}
    raw, info = pickle.loads(index.to_bytes())  # what PaddleX's IndexData.from_bytes does
    assert isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and info == index.index_info
    assert faiss.deserialize_index(raw).ntotal == len(index)
    assert np.array_equal(index.index_bytes, raw)
    # ... and ours reads PaddleX's, whichever pickle protocol its Python wrote (5 from Python 3.14)
    for protocol in (2, 4, 5):
        theirs = pickle.dumps((faiss.serialize_index(index.index), dict(info)), protocol=protocol)
        assert GalleryIndex.from_bytes(theirs).id_map == index.id_map

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/facefeat_pwned",))

    with pytest.raises(UserError, match="refused to load"):
        GalleryIndex.from_bytes(pickle.dumps((b"x", {"id_map": Payload()})))
    assert not os.path.exists("/tmp/facefeat_pwned")
    with pytest.raises(UserError, match="not a PaddleX IndexData pickle"):
        GalleryIndex.from_bytes(b"not a pickle")


def test_copy_is_independent():
    feats, labels, _ = _people(n_people=3, per_person=2, seed=8)
    index = GalleryIndex(DIM, "m", "Flat")
    index.add(feats, labels)
    other = index.copy()
    other.remove_label("person_00")
    other.add(feats[:1], ["someone"])
    assert len(index) == 6 and "person_00" in index.labels and "someone" not in index.labels
    assert len(other) == 5 and "person_00" not in other.labels


def test_old_layout_still_loads(tmp_path):
    """Format 1 of this project (id_map.json {id: {label, path}} + meta.json) loads; saving writes the new one."""
    import faiss

    feats, labels, _ = _people(n_people=3, per_person=2, seed=9)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(l2_normalize_rows(feats), np.arange(6, dtype=np.int64))
    folder = tmp_path / "old"
    folder.mkdir()
    faiss.write_index(index, str(folder / "vector.index"))
    (folder / "id_map.json").write_text(json.dumps({str(i): {"label": lbl, "path": f"/g/{i}.jpg"}
                                                    for i, lbl in enumerate(labels)}))
    (folder / "meta.json").write_text(json.dumps({"model_name": "m", "embedding_size": DIM, "index_type": "Flat",
                                                  "metric": "inner_product", "normalized": True, "next_id": 6}))
    loaded = GalleryIndex.load(str(folder))
    assert loaded.entries[3] == {"label": labels[3], "path": "/g/3.jpg"} and loaded.model_name == "m"
    loaded.save(str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path / "new")) == ["id_map.yaml", "meta.json", "vector.index"]


def test_the_service_store_never_follows_a_current_file_out_of_its_key(tmp_path):
    """A CURRENT edited to point outside its key's folder is refused (not served, not pruned from)."""
    from engine.gallery.backend import GallerySettings

    feats, labels, _ = _people(n_people=3, per_person=2, seed=9)
    index = GalleryIndex(DIM, "m", "Flat")
    index.add(feats, labels)
    store = GallerySettings().store(str(tmp_path / "keys"))
    key = store.create(index)
    store.update(key, lambda ix: ix.remove_ids([0]))
    elsewhere = tmp_path / "gal" / "idx3"
    index.save(str(elsewhere))
    folder = tmp_path / "keys" / key
    before = sorted(os.listdir(folder))
    (folder / "CURRENT").write_text("../../gal/idx3\n")
    store._cache.clear()
    with pytest.raises(UserError, match="damaged on the server") as e:
        store.get(key)
    assert str(tmp_path) not in str(e.value)  # no server path for the client
    with pytest.raises(UserError, match="damaged on the server"):
        store.update(key, lambda ix: ix.remove_ids([1]))
    assert sorted(os.listdir(folder)) == before and sorted(os.listdir(elsewhere)) == ["id_map.yaml", "meta.json",
                                                                                        "vector.index"]
