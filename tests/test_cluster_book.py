"""engine/clustering/book.py and pictures.py without Paddle: grouping, growing with stable ids,
naming, merging, splitting, moving, the saved folder and its pictures."""
import csv
import json
import os

import cv2
import numpy as np
import pytest

from engine.clustering.book import ClusterBook, ClusterSettings, read_names
from engine.clustering.pictures import save_crop, write_views
from engine.evaluation.clustering import UNSORTED, bcubed
from foundation.errors import UserError

MODEL = {"name": "MobileFaceNet", "embedding_size": 32, "fingerprint": "abc"}


def people(sizes, dim=32, spread=0.2, seed=0, centres=None):
    """Unit features around one centre per person (sizes[p] faces of person p), and the truth."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.standard_normal((len(sizes), dim))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    feats = centres[truth] + spread * rng.standard_normal((len(truth), dim)) / np.sqrt(dim)
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32), truth, centres


def faces(n, start=0, size=100, score=0.95):
    return [{"source": f"photo_{start + k}.jpg", "path": f"/p/photo_{start + k}.jpg", "box": [0, 0, size, size],
             "det_score": score} for k in range(n)]


SETTINGS = ClusterSettings(threshold=0.6, neighbours=16, min_cluster_size=2)


def test_first_grouping_numbers_clusters_largest_first_and_sorts_singletons_out():
    feats, truth, _ = people([3, 6, 4, 1])
    book = ClusterBook.new(MODEL)
    book.add(faces(len(feats)), feats, SETTINGS)
    labels = book.labels
    assert bcubed(labels[truth != 3], truth[truth != 3]) == pytest.approx((1.0, 1.0, 1.0))
    assert labels[truth == 1][0] == 1 and labels[truth == 2][0] == 2 and labels[truth == 0][0] == 3
    assert labels[truth == 3].tolist() == [UNSORTED]  # a person seen once joins nobody
    assert book.cluster_ids() == [1, 2, 3] and book.next_id == 4


def test_small_and_low_score_faces_join_nobody():
    feats, truth, _ = people([4])
    records = faces(4)
    records[1]["box"] = [0, 0, 20, 20]
    records[2]["det_score"] = 0.5
    book = ClusterBook.new(MODEL)
    book.add(records, feats, SETTINGS)
    assert [f["quality"] for f in book.faces] == ["ok", "small", "low score", "ok"]
    assert book.labels.tolist() == [1, UNSORTED, UNSORTED, 1]


def test_new_faces_join_old_clusters_and_keep_every_id_and_name(tmp_path):
    feats, truth, centres = people([5, 5, 5], seed=1)
    book = ClusterBook.new(MODEL)
    book.add(faces(15), feats, SETTINGS)
    book.rename({"2": "Alice"})
    before = book.labels.copy()
    book.save(str(tmp_path))
    again = ClusterBook.load(str(tmp_path), MODEL)
    # three more of each old person, and a new person of four faces
    more, more_truth, _ = people([3, 3, 3], seed=2, centres=centres)
    newcomer, _, _ = people([4], seed=3)
    again.add(faces(13, start=15), np.concatenate([more, newcomer]), SETTINGS)
    labels = again.labels
    assert np.array_equal(labels[:15], before)  # old faces keep their clusters
    for p in range(3):
        assert set(labels[15:24][more_truth == p].tolist()) == {before[truth == p][0]}
    assert set(labels[24:].tolist()) == {4}  # the newcomer: a new id, never a reused one
    assert again.names == {2: "Alice"} and again.resolve("Alice") == 2


def test_merge_split_move_and_names():
    feats, truth, _ = people([6, 6], seed=4)
    book = ClusterBook.new(MODEL)
    book.add(faces(12), feats, SETTINGS)
    book.rename({1: "Alice"})
    keep, gone = book.merge([2, "Alice"])
    assert keep == 2 and gone == [1] and book.names == {2: "Alice"} and set(book.labels.tolist()) == {2}
    parts, threshold = book.split("Alice", SETTINGS)
    assert parts[0] == 2 and len(parts) == 2 and threshold > SETTINGS.threshold
    assert book.names == {2: "Alice"} and bcubed(book.labels, truth)[2] == pytest.approx(1.0)
    other = parts[1]
    assert book.move({"unsorted": [0], str(other): ["1"]}) == 2
    assert book.labels[0] == UNSORTED and book.labels[1] == other
    fresh = book.next_id
    assert book.move({"new": [2, 3]}) == 2 and book.labels[2] == book.labels[3] == fresh
    assert book.next_id == fresh + 1
    with pytest.raises(UserError, match="would name two clusters"):
        book.rename({other: "Alice"})
    with pytest.raises(UserError, match="no cluster 'Carol'"):
        book.merge(["Carol", 2])
    with pytest.raises(UserError, match="no face 99"):
        book.move({"Alice": [99]})
    with pytest.raises(UserError, match="cannot name a cluster"):
        book.rename({2: "a/b"})


def test_names_file_errors_name_the_line(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# id name\n3 Alice Smith\n\n7\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"names.txt:4: '7' has no name"):
        read_names(str(path))
    path.write_text("3 Alice Smith\nBob Robert\n", encoding="utf-8")
    assert read_names(str(path)) == {"3": "Alice Smith", "Bob": "Robert"}


def test_saved_folder_round_trips_and_refuses_another_model(tmp_path):
    feats, _, _ = people([3, 3])
    book = ClusterBook.new(MODEL)
    book.add(faces(6), feats, SETTINGS)
    book.save(str(tmp_path))
    data = json.loads((tmp_path / "cluster_result.json").read_text())
    assert data["summary"] == {"faces": 6, "clusters": 2, "named": 0, "unsorted": 0, "photos": 0}
    assert data["clusters"][0]["representative"] in data["clusters"][0]["faces"]
    loaded = ClusterBook.load(str(tmp_path), MODEL)
    assert np.array_equal(loaded.features, book.features) and loaded.labels.tolist() == book.labels.tolist()
    with pytest.raises(UserError, match="another recognition model"):
        ClusterBook.load(str(tmp_path), {**MODEL, "fingerprint": "other"})
    (tmp_path / "cluster_result.json").write_text("{", encoding="utf-8")
    with pytest.raises(UserError, match="not valid JSON"):
        ClusterBook.load(str(tmp_path), MODEL)


def test_pictures_csv_and_cluster_folders_follow_renames(tmp_path):
    feats, _, _ = people([3, 2, 1])
    book = ClusterBook.new(MODEL)
    book.add(faces(6), feats, SETTINGS)
    rng = np.random.default_rng(0)
    for face_id in range(6):
        save_crop(str(tmp_path), face_id, rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    write_views(str(tmp_path), book)
    assert sorted(os.listdir(tmp_path / "clusters")) == ["0001", "0002", "unsorted"]
    book.rename({1: "Zoë Smith"})
    write_views(str(tmp_path), book)
    assert sorted(os.listdir(tmp_path / "clusters")) == ["0001_Zoë_Smith", "0002", "unsorted"]
    assert sorted(os.listdir(tmp_path / "clusters" / "0001_Zoë_Smith")) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert os.path.samefile(tmp_path / "clusters" / "0001_Zoë_Smith" / "000000.jpg", tmp_path / "faces" / "000000.jpg")
    assert sorted(os.listdir(tmp_path / "sheets")) == ["0001_Zoë_Smith.jpg", "0002.jpg"]
    sheet = cv2.imread(str(tmp_path / "sheets" / "0001_Zoë_Smith.jpg"))
    overview = cv2.imread(str(tmp_path / "overview.jpg"))
    assert sheet.shape[0] > 112 and overview.shape[1] >= 2 * 112
    with open(tmp_path / "clusters.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["cluster"] for r in rows] == ["1", "1", "1", "2", "2", "unsorted"]
    assert rows[0]["name"] == "Zoë Smith" and rows[0]["source"] == "photo_0.jpg"


def test_a_new_face_groups_with_an_old_unsorted_one_and_strangers_stay_apart():
    feats, truth, centres = people([1, 1, 1, 1], seed=5)  # four people seen once: all unsorted
    book = ClusterBook.new(MODEL)
    book.add(faces(4), feats, SETTINGS)
    assert set(book.labels.tolist()) == {UNSORTED}
    again, _, _ = people([0, 1, 0, 0], seed=6, centres=centres)  # person 1 seen a second time
    book.add(faces(1, start=4), again, SETTINGS)
    assert book.labels.tolist() == [UNSORTED, 1, UNSORTED, UNSORTED, 1]


def test_a_run_killed_between_its_writes_leaves_a_folder_the_next_run_reads(tmp_path):
    feats, _, _ = people([3, 3])
    book = ClusterBook.new(MODEL)
    book.add(faces(6), feats, SETTINGS)
    book.save(str(tmp_path))
    write_views(str(tmp_path), book)
    # the next run saved its grown features, then was killed before its cluster_result.json, and
    # left a half-built clusters/ under its temporary name
    more, _, _ = people([2], seed=9)
    np.save(tmp_path / "features.npy", np.concatenate([feats, more]))
    (tmp_path / ".clusters.abc123.tmp").mkdir()
    again = ClusterBook.load(str(tmp_path), MODEL)
    assert len(again.features) == 6 and again.labels.tolist() == book.labels.tolist()
    write_views(str(tmp_path), again)
    assert not (tmp_path / ".clusters.abc123.tmp").exists()


def test_a_collapsed_grouping_is_pointed_out():
    one, _, _ = people([120], spread=0.2)  # as a too loose threshold makes of many people (or one person's album)
    book = ClusterBook.new(MODEL)
    book.add(faces(120), one, SETTINGS)
    hint = book.collapse_hint()
    assert "cluster 1 holds 120 of the 120 clustered faces" in hint and "Cluster.threshold" in hint
    feats, _, _ = people([60, 60], spread=0.2)
    fine = ClusterBook.new(MODEL)
    fine.add(faces(120), feats, SETTINGS)
    assert fine.collapse_hint() is None  # two clusters of 60
