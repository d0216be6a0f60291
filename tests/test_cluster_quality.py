"""benchmarks/cluster_quality.py: which face of a photo is scored, and how misses count (no Paddle, no photos)."""
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    spec = importlib.util.spec_from_file_location("cluster_quality", os.path.join(REPO, "benchmarks", "cluster_quality.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_labelled_face_is_the_box_holding_the_centre_nearest_first():
    cq = _bench()
    size = (100, 100)
    assert cq.central_face([], size) is None
    assert cq.central_face([[0, 0, 40, 40]], size) is None  # beside the centre
    assert cq.central_face([[0, 0, 40, 40], [30, 30, 70, 70]], size) == 1
    # both hold the centre: the one whose centre is nearer wins
    assert cq.central_face([[10, 10, 60, 60], [40, 40, 62, 62]], size) == 1
    assert cq.central_face([[40, 40, 62, 62], [10, 10, 60, 60]], size) == 0


def test_misses_and_unsorted_faces_are_clusters_of_their_own():
    cq = _bench()
    size = (100, 100)

    def face(cluster, central=True):
        return {"box": [40, 40, 60, 60] if central else [0, 0, 20, 20], "cluster": cluster}

    truth = ["a", "a", "a", "b", "b"]
    # photo 3 is a miss (only a face beside the centre), photo 4's face is unsorted; photo 0 has a
    # second face (clustered, found, not scored)
    photos = [[face(0), face(7, central=False)], [face(0)], [face(1, central=False)], [face(-1)], [face(1)]]
    s = cq.score(photos, truth, [size] * 5)
    assert (s["photos"], s["people"], s["faces_found"], s["misses"], s["labelled_faces"]) == (5, 2, 6, 1, 4)
    assert s["unsorted_labelled"] == 1 and s["unsorted_faces"] == 1
    # scored labels: 0, 0, miss, unsorted, 1 -> clusters {0: 2 faces}, miss, unsorted, {1}
    assert s["clusters_scored"] == 4 and s["clusters_scored_2plus"] == 1
    assert s["clusters_all_faces"] == 3 + 1  # clusters 0, 7, 1 and the unsorted face
    # BCubed precision: every cluster pure -> 1; recall: a's three items 2/3, 2/3, 1/3, b's 1/2, 1/2
    assert s["bcubed"]["precision"] == pytest.approx(1.0)
    assert s["bcubed"]["recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 / 2 + 1 / 2) / 5)
    # pairwise: predicted pairs 1 (the two a's), true pairs 3 + 1
    assert s["pairwise"]["precision"] == pytest.approx(1.0) and s["pairwise"]["recall"] == pytest.approx(1 / 4)
    # a photo the system could not read is a miss too
    assert cq.score([None], ["a"], [size])["misses"] == 1


def test_photo_set_takes_the_first_people_in_name_order(tmp_path):
    cq = _bench()
    for person, n in (("Zed", 1), ("Ann", 2), ("Bob", 1)):
        (tmp_path / "images" / person).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "images" / person / f"{person}_{i + 1:04d}.jpg").write_bytes(b"")
    paths, truth = cq.photo_set(str(tmp_path), limit_people=2)
    assert truth == ["Ann", "Ann", "Bob"]
    assert [os.path.basename(p) for p in paths] == ["Ann_0001.jpg", "Ann_0002.jpg", "Bob_0001.jpg"]
    with pytest.raises(SystemExit, match="does not exist"):
        cq.photo_set(str(tmp_path / "nowhere"))
