"""engine/recognition/tracking.py: faces tied across frames by overlap, then appearance (no Paddle)."""
import numpy as np
import pytest

from engine.recognition.tracking import FaceTracker, box_iou, greedy_pairs


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


PEOPLE = {"a": unit([1, 0, 0, 0]), "b": unit([0, 1, 0, 0]), "c": unit([0, 0, 1, 0])}


def run(tracker, frames):
    """frames: [(frame_index, [(person, box)])] -> {frame_index: {person: track_id}}; counts embeddings."""
    out, embedded = {}, []
    for frame_index, faces in frames:
        boxes = [box for _, box in faces]

        def features_of(indices, faces=faces):
            embedded.append((frame_index, list(indices)))
            return np.stack([PEOPLE[faces[i][0]] for i in indices])

        tracks, _ = tracker.update(frame_index, boxes, [0.9] * len(faces), features_of)
        out[frame_index] = {person: t.track_id for (person, _), t in zip(faces, tracks)}
    return out, embedded


def test_iou_and_greedy_pairs():
    assert box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]) == pytest.approx(
        np.array([[1.0, 1 / 3, 0.0]]))
    score = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert greedy_pairs(score, 0.5) == [(0, 0)]  # row 1's best column is taken; 0.1 is below the threshold
    assert greedy_pairs(np.array([[0.9, 0.8], [0.85, 0.6]]), 0.5) == [(0, 0), (1, 1)]
    assert greedy_pairs(np.zeros((0, 3)), 0.5) == []


def test_two_moving_faces_keep_their_tracks_and_only_new_faces_are_embedded():
    frames = [(f, [("a", [10 + 4 * f, 10, 60 + 4 * f, 70]), ("b", [300 - 4 * f, 50, 350 - 4 * f, 110])])
              for f in range(20)]
    ids, embedded = run(FaceTracker(), frames)
    assert all(ids[f] == ids[0] for f in ids) and ids[0]["a"] != ids[0]["b"]
    assert embedded == [(0, [0, 1])]  # the boxes placed every later face


def test_a_short_miss_is_survived_and_a_long_gap_ends_the_track():
    tracker = FaceTracker(max_missed=3)
    box = [100, 100, 160, 170]
    frames = [(f, [("a", box)] if f not in (5, 6, 7) else []) for f in range(12)]  # 3 passes without it
    ids, _ = run(tracker, frames)
    assert len({v["a"] for v in ids.values() if v}) == 1
    later, _ = run(tracker, [(f, [("a", box)] if f >= 17 else []) for f in range(12, 20)])  # 5 passes without
    assert later[17]["a"] != ids[0]["a"]
    tracks = tracker.finish()
    assert [(t.first_frame, t.last_frame) for t in tracks] == [(0, 11), (17, 19)]


def test_a_jump_without_overlap_is_placed_by_appearance():
    tracker = FaceTracker(max_missed=5)
    ids, embedded = run(tracker, [(0, [("a", [10, 10, 60, 70]), ("b", [400, 10, 450, 70])]),
                                  (1, [("a", [10, 10, 60, 70]), ("b", [400, 10, 450, 70])]),
                                  # a zooms and moves far (no overlap), c appears
                                  (2, [("a", [200, 200, 330, 360]), ("b", [400, 10, 450, 70]),
                                       ("c", [600, 10, 650, 70])])])
    assert ids[2]["a"] == ids[0]["a"] and ids[2]["b"] == ids[0]["b"]
    assert ids[2]["c"] not in (ids[0]["a"], ids[0]["b"])
    assert embedded == [(0, [0, 1]), (2, [0, 2])]  # only the faces the boxes could not place
    assert {t.track_id: t.matched_by for t in tracker.live}[ids[2]["a"]] == "appearance"


def test_a_stranger_in_a_lost_face_s_place_starts_a_new_track():
    tracker = FaceTracker(max_missed=5)
    ids, _ = run(tracker, [(0, [("a", [10, 10, 60, 70])]), (1, []), (2, [("b", [300, 300, 350, 370])])])
    assert ids[2]["b"] != ids[0]["a"]


def test_no_features_means_overlap_only():
    tracker = FaceTracker()
    t0, feats = tracker.update(0, [[0, 0, 50, 50]], [0.9])
    t1, _ = tracker.update(1, [[300, 300, 350, 350]], [0.9])
    assert feats == {} and t0[0].track_id != t1[0].track_id


def test_a_stranger_where_a_missed_face_was_is_told_apart_by_appearance():
    tracker = FaceTracker(max_missed=5)
    box = [100, 100, 160, 170]
    ids, embedded = run(tracker, [(0, [("a", box)]), (1, []), (2, [("b", box)]), (3, [("b", box)]),
                                  (4, []), (5, [("b", box)])])
    assert ids[2]["b"] != ids[0]["a"]  # same place, another face: a new track
    assert ids[3]["b"] == ids[2]["b"] == ids[5]["b"]  # and b itself comes back after its miss
    assert embedded == [(0, [0]), (2, [0]), (5, [0])]
