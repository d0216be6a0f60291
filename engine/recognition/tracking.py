"""Faces tied across video frames: a small tracker by box overlap, then appearance.

    tracker = FaceTracker(max_missed=25)
    for frame_index, faces in detections:            # faces: [(box [x1, y1, x2, y2], det_score)]
        tracks = tracker.update(frame_index, boxes, scores, features_of)   # one Track per face

Each detection pass first matches faces to the live tracks by the overlap (IoU) of the face's box
with the track's box moved on by its recent motion, best pairs first; a track that missed its face
in the last pass is not continued by overlap alone (another person may stand where it was). Faces
left over are then embedded (`features_of`, only for them) and matched to the tracks without a
face in this pass by cosine similarity of the face features: a face that moved or zoomed too fast
for any overlap, or came back from behind something, keeps its track. The rest start tracks. A track that finds no
face for more than `max_missed` passes ends.

Why our own and not a library's: ByteTrack-style trackers (supervision, boxmot's) associate by
boxes only, and boxmot's appearance trackers need PyTorch re-identification models; a face
pipeline already has the best appearance cue there is, the face embedding, and needs it only for
the few faces boxes cannot place. Plain numpy, tested without Paddle (tests/test_tracking.py).
"""
from dataclasses import dataclass, field

import numpy as np


def box_iou(a, b):
    """IoU of every box in a [N, 4] with every box in b [M, 4] (x1, y1, x2, y2): [N, M]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def greedy_pairs(score, threshold):
    """[(row, col)] pairs of a score matrix, best first, each row and column used once, >= threshold."""
    pairs, used_r, used_c = [], set(), set()
    if score.size == 0:
        return pairs
    order = np.argsort(-score, axis=None, kind="stable")
    for flat in order:
        r, c = divmod(int(flat), score.shape[1])
        if score[r, c] < threshold:
            break
        if r in used_r or c in used_c:
            continue
        pairs.append((r, c))
        used_r.add(r)
        used_c.add(c)
    return pairs


@dataclass
class Track:
    """One face followed through a video."""
    track_id: int
    box: np.ndarray  # [x1, y1, x2, y2] where it was last seen
    first_frame: int
    last_frame: int
    det_score: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # box change per frame
    missed: int = 0  # detection passes since it was last seen
    hits: int = 1  # detection passes that found it
    feature: np.ndarray = None  # the last face feature taken of it (L2-normalised), for re-association
    matched_by: str = "new"  # how this pass found it: new, overlap or appearance

    def predicted(self, frame_index):
        """Its box moved on to `frame_index` by its recent motion (at most 10 frames ahead)."""
        ahead = min(max(frame_index - self.last_frame, 0), 10)
        return self.box + self.velocity * ahead

    def seen(self, frame_index, box, det_score, how):
        box = np.asarray(box, np.float64)
        gap = max(frame_index - self.last_frame, 1)
        if how == "overlap":  # motion from overlapping boxes only: an appearance jump is not motion
            self.velocity = 0.5 * self.velocity + 0.5 * (box - self.box) / gap
        else:
            self.velocity = np.zeros(4)
        self.box, self.last_frame, self.det_score = box, frame_index, float(det_score)
        self.missed, self.matched_by = 0, how
        self.hits += 1


class FaceTracker:
    """Tracks faces over the detection passes of one video; `update` once per pass, in frame order.

    iou_match: least overlap of a face with a track's predicted box to continue it.
    feature_match: least cosine between a left-over face's feature and a track's last feature to
        continue it (faces of one person in one video are far closer than that; two people rarely).
    max_missed: detection passes a track may go without its face before it ends.
    """

    def __init__(self, iou_match=0.3, feature_match=0.5, max_missed=25):
        self.iou_match = float(iou_match)
        self.feature_match = float(feature_match)
        self.max_missed = int(max_missed)
        self.live = []  # tracks still going, oldest first
        self.ended = []  # tracks that ended, in the order they ended
        self._next_id = 1

    def update(self, frame_index, boxes, scores, features_of=None):
        """Match this pass's faces to tracks. `boxes` [N, 4], `scores` [N]; `features_of(indices)`
        returns the L2-normalised features [len(indices), D] of those faces (called at most once,
        only for faces the overlap did not place; None: no appearance matching).
        Returns (tracks, features): the Track of each face, in the faces' order, and {face index:
        feature} for the faces features_of embedded (so the caller need not embed them again)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        n = len(boxes)
        result = [None] * n
        if self.live and n:
            predicted = np.stack([t.predicted(frame_index) for t in self.live])
            overlap = box_iou(boxes, predicted)
            if features_of is not None:  # back after a miss: someone else may stand there now; appearance decides
                overlap[:, [k for k, t in enumerate(self.live) if t.missed and t.feature is not None]] = 0.0
            for face, k in greedy_pairs(overlap, self.iou_match):
                self.live[k].seen(frame_index, boxes[face], scores[face], "overlap")
                result[face] = self.live[k]
        leftover = [i for i in range(n) if result[i] is None]
        features = {}
        if leftover and features_of is not None:
            feats = np.asarray(features_of(leftover), np.float32)
            features = {i: feats[j] for j, i in enumerate(leftover)}
            lost = [t for t in self.live if t.last_frame != frame_index and t.feature is not None]
            if lost:
                sim = feats @ np.stack([t.feature for t in lost]).T
                for j, k in greedy_pairs(sim, self.feature_match):
                    lost[k].seen(frame_index, boxes[leftover[j]], scores[leftover[j]], "appearance")
                    result[leftover[j]] = lost[k]
        for i in range(n):
            if result[i] is None:
                track = Track(self._next_id, boxes[i].copy(), frame_index, frame_index, float(scores[i]))
                self._next_id += 1
                self.live.append(track)
                result[i] = track
            if i in features:
                result[i].feature = features[i]
        still = []
        for t in self.live:
            if t.last_frame != frame_index:
                t.missed += 1
            (self.ended if t.missed > self.max_missed else still).append(t)
        self.live = still
        return result, features

    def finish(self):
        """End every live track (the video is over); returns all tracks, by id."""
        self.ended.extend(self.live)
        self.live = []
        return sorted(self.ended, key=lambda t: t.track_id)
