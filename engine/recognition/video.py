"""Faces in a video, camera or stream: detected, tracked, named once per track, on a timeline.

    recognizer = VideoRecognizer(pipeline, VideoSettings(detect_every=5))
    result = recognizer.run(open_video("talk.mp4"), index)     # a VideoRecognitionResult
    result.save_to_json("output/")                               # talk_res.json
    # with writer=VideoWriterSink("output/talk_res.webm", fps, (w, h)): the annotated video as well

Per frame: every `detect_every`-th frame is a detection pass (the pipeline's detector and
alignment); the tracker (engine.recognition.tracking) ties its faces to tracks. A track's face is
embedded on its first view, then again after `embed_every` frames or when a clearly better view
comes (detection score x face size up by a quarter), and never more than `max_embeddings` times.
The track's label is a vote over those embeddings against the gallery: `mean` searches the mean
feature (one decision from all the views), `majority` the most frequent per-view decision; below
rec_threshold it is the explicit "unknown". When the vote changes, the track records when and to
what. Tracks shorter than `min_track_frames` detection passes are dropped as noise. The timeline
merges a person's tracks that are less than `merge_gap_seconds` apart.

A face that comes back to a track it lost (a miss, an occlusion, a jump) must be at least as alike
as a gallery match (rec_threshold, at least 0.5): the tracker's appearance test is on the model's
own scale.
"""
import os
import queue
import threading
from collections import Counter
from dataclasses import dataclass, fields

import cv2
import numpy as np

from engine.config.schema import VideoSection
from engine.evaluation.metrics import l2_normalize
from engine.gallery.faiss_index import UNKNOWN_LABEL, apply_threshold
from engine.inference.results import PaddleXResult
from engine.recognition.tracking import FaceTracker
from foundation.errors import UserError

VOTE_RULES = ("mean", "majority")


@dataclass
class VideoSettings(VideoSection):
    """The pipeline config's Video section (engine.config.schema.VideoSection: the defaults and what
    each means), checked when built from Python too."""

    def __post_init__(self):
        if self.vote not in VOTE_RULES:
            raise UserError(f"Video.vote must be one of {', '.join(VOTE_RULES)}, got {self.vote!r}")
        for name in ("detect_every", "embed_every", "max_embeddings", "min_track_frames"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"Video.{name} must be at least 1, got {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, section):
        return cls(**{f.name: getattr(section, f.name) for f in fields(VideoSection)})


class TrackEvidence:
    """What one track has gathered: its embeddings, its sampled boxes, its vote and its history."""

    def __init__(self, track_id):
        self.track_id = track_id
        self.features = []
        self.best_quality = 0.0
        self.last_embedded = None  # frame index
        self.samples = []  # [frame index, seconds, box, det_score]
        self.label, self.score = UNKNOWN_LABEL, None
        self.changes = []  # [{"time", "label", "score"}] every time the vote moved
        self.best_view = None  # (crop, seconds, box, det_score) of the best view embedded

    def wants_view(self, frame_index, quality, settings):
        if self.last_embedded is None:
            return True
        if len(self.features) >= settings.max_embeddings:
            return False
        return frame_index - self.last_embedded >= settings.embed_every or quality > 1.25 * self.best_quality

    def add_view(self, frame_index, quality, feature, view=None):
        self.features.append(np.asarray(feature, np.float32))
        self.last_embedded = frame_index
        if view is not None and (self.best_view is None or quality > self.best_quality):
            self.best_view = view
        self.best_quality = max(self.best_quality, quality)


def view_quality(box, det_score):
    """A face view's worth for recognition: its detection score times its size (short side, px)."""
    return float(det_score) * max(0.0, min(box[2] - box[0], box[3] - box[1]))


class VideoRecognitionResult(PaddleXResult):
    """One video's result: {"input_path", "fps", "frames", "duration", "partial", "ended_early",
    "tracks": [{"track_id", "label", "score", "start_time", "end_time", "embeddings", "changes",
    "boxes": [[seconds, x1, y1, x2, y2, det_score], ...]}], "timeline": {label: [[start, end], ...]}}."""

    def __str__(self):
        lines = [f"{self['input_path']}: {self['frames']} frames at {self['fps']:.2f} fps, "
                 f"{len(self['tracks'])} tracks" + (" (partial)" if self["partial"] else "")]
        for label, spans in self["timeline"].items():
            total = sum(end - start for start, end in spans)
            lines.append(f"  {label}: {len(spans)} appearance{'s' if len(spans) != 1 else ''}, {total:.1f} s in all, "
                         f"first at {spans[0][0]:.1f} s, last until {spans[-1][1]:.1f} s")
        return "\n".join(lines)

    def save_to_json(self, save_path, indent=4, ensure_ascii=False):
        """As PaddleXResult's (<name>_res.json in a folder, or the .json path given), creating the
        folder when it does not exist yet."""
        save_path = os.fspath(save_path)
        is_file = save_path.lower().endswith(".json") and not os.path.isdir(save_path)
        os.makedirs(os.path.dirname(os.path.abspath(save_path)) if is_file else save_path, exist_ok=True)
        return super().save_to_json(save_path, indent=indent, ensure_ascii=ensure_ascii)


def timeline(tracks, merge_gap):
    """{label: [[start, end], ...]} from reported tracks, a person's intervals merged across tracks."""
    spans = {}
    for t in sorted(tracks, key=lambda t: t["start_time"]):
        spans.setdefault(t["label"], []).append([t["start_time"], t["end_time"]])
    merged = {}
    for label, items in spans.items():
        out = []
        for start, end in items:
            if out and start - out[-1][1] <= merge_gap:
                out[-1][1] = max(out[-1][1], end)
            else:
                out.append([start, end])
        merged[label] = out
    known = sorted(k for k in merged if k != UNKNOWN_LABEL)
    return {k: merged[k] for k in known + ([UNKNOWN_LABEL] if UNKNOWN_LABEL in merged else [])}


class VideoRecognizer:
    """Runs the pipeline's detection, alignment and embedding over a video's frames, with a tracker."""

    def __init__(self, pipeline, settings=None, det_threshold=None, rec_threshold=None):
        self.pipeline = pipeline  # engine.recognition.pipeline.FaceRecognitionPipeline
        self.settings = settings or VideoSettings()
        self.det_threshold = pipeline.det_threshold if det_threshold is None else float(det_threshold)
        self.rec_threshold = pipeline.rec_threshold if rec_threshold is None else float(rec_threshold)

    def _decide(self, evidence, index):
        feats = np.stack(evidence.features)
        if self.settings.vote == "mean":
            query = l2_normalize(feats.mean(axis=0, keepdims=True))
            labels, scores, _ = index.search(query, 1)
            return apply_threshold(labels[0], scores[0], self.rec_threshold)
        labels, scores, _ = index.search(feats, 1)
        decisions = [apply_threshold(labels[i], scores[i], self.rec_threshold) for i in range(len(feats))]
        counts = Counter(label for label, _ in decisions)
        top = max(counts.values())
        tied = [label for label, n in counts.items() if n == top]
        mean_score = {lab: float(np.mean([s for label, s in decisions if label == lab and s is not None] or [0.0]))
                      for lab in tied}
        label = max(tied, key=lambda lab: (lab != UNKNOWN_LABEL, mean_score[lab]))
        best = max((s for lab, s in decisions if lab == label and s is not None), default=None)
        return label, best

    def session(self, index, fps, detect_every=None):
        """A VideoSession: one video's tracker and evidence, fed one detection pass at a time."""
        return VideoSession(self, index, fps, self.settings.detect_every if detect_every is None else detect_every)

    def run(self, source, index, writer=None, progress=None, stop=None):
        """A VideoRecognitionResult for an opened datasets.video.VideoSource. `writer(frame,
        drawn_faces)` receives every frame with its live tracks (for the annotated video);
        `progress` is a foundation.progress.Progress; `stop()` ends the run early (Ctrl-C, SIGTERM,
        a client gone), the result then marked partial. KeyboardInterrupt ends it the same way."""
        s = self.settings
        session = self.session(index, source.fps)
        live = []  # the last detection pass's faces, drawn where their motion takes them until the next
        partial = interrupted = False
        frames = 0
        try:
            # without an annotated video, frames between detection passes are only grabbed
            wanted = None if writer is not None else (lambda i: i % s.detect_every == 0)
            for frame_index, seconds, frame in source.frames(stop, wanted):
                frames = frame_index + 1
                if frame_index % s.detect_every == 0:
                    live = session.see(frame_index, seconds, frame)
                if writer is not None:
                    writer(frame, [(t.track_id, t.predicted(frame_index), ev) for t, ev in live])
                if progress is not None:
                    progress.update(1)
            partial = stop is not None and stop()
        except KeyboardInterrupt:
            partial = interrupted = True
        tracks = session.finish()
        name = os.path.splitext(os.path.basename(str(source.source)))[0] if source.kind == "file" else source.kind
        return VideoRecognitionResult({
            "input_path": source.name, "fps": round(source.fps, 3), "fps_from_container": source.fps_known,
            "frames": frames, "duration": round(frames / source.fps, 3), "partial": bool(partial),
            "ended_early": source.ended_early, "interrupted": interrupted, "detect_every": s.detect_every,
            "vote": s.vote, "rec_threshold": round(self.rec_threshold, 4), "tracks": tracks,
            "timeline": timeline(tracks, s.merge_gap_seconds),
        }, name)


class VideoSession:
    """One video's tracker and each track's evidence. `see(frame_index, seconds, frame)` runs a
    detection pass and returns [(Track, TrackEvidence)] of its faces; `finish()` ends every track
    and returns the reported ones (the service's live mode calls `see` per frame it receives)."""

    def __init__(self, recognizer, index, fps, detect_every):
        s = recognizer.settings
        self.recognizer, self.index, self.settings = recognizer, index, s
        self.pass_seconds = detect_every / float(fps)  # what one detection pass stands for
        similarity = s.reassociate_similarity
        self.tracker = FaceTracker(max_missed=max(1, int(round(s.max_missed_seconds / self.pass_seconds))),
                                   feature_match=max(0.5, recognizer.rec_threshold) if similarity is None else similarity)
        self.evidence = {}
        self.reported = []  # set by finish()

    def see(self, frame_index, seconds, frame):
        r, pipeline = self.recognizer, self.recognizer.pipeline
        found = pipeline.faces_of(frame, r.det_threshold)
        if not found:
            self.tracker.update(frame_index, np.zeros((0, 4)), [])
            return []
        boxes = np.array([f.box for f, _ in found], np.float64)
        scores = [float(f.score) for f, _ in found]
        crops = [c for _, c in found]
        tracks, embedded = self.tracker.update(frame_index, boxes, scores,
                                               lambda idx: pipeline.embed([crops[i] for i in idx]))
        wanted = []
        for i, track in enumerate(tracks):
            ev = self.evidence.setdefault(track.track_id, TrackEvidence(track.track_id))
            ev.samples.append((frame_index, seconds, boxes[i], scores[i]))
            quality = view_quality(boxes[i], scores[i])
            if ev.wants_view(frame_index, quality, self.settings):
                wanted.append((i, ev, quality))
        missing = [i for i, _, _ in wanted if i not in embedded]
        if missing:
            feats = pipeline.embed([crops[i] for i in missing])
            embedded.update({i: feats[j] for j, i in enumerate(missing)})
        for i, ev, quality in wanted:
            ev.add_view(frame_index, quality, embedded[i], (crops[i], seconds, boxes[i], scores[i]))
            if self.index is None:  # tracks only (clustering): nobody to name them after
                continue
            label, score = r._decide(ev, self.index)
            if label != ev.label or not ev.changes:
                ev.changes.append({"time": round(seconds, 3), "label": label,
                                   "score": None if score is None else round(score, 4)})
            ev.label, ev.score = label, score
        return [(t, self.evidence[t.track_id]) for t in tracks]

    def finish(self):
        """End every track; the reported ones (long enough, embedded at least once) as dicts, by
        start. `self.reported` then holds [(that dict, its TrackEvidence)]."""
        tracks = []
        for t in self.tracker.finish():
            ev = self.evidence.get(t.track_id)
            if ev is None or len(ev.samples) < self.settings.min_track_frames or not ev.features:
                continue
            tracks.append({"track_id": t.track_id, "label": ev.label,
                           "score": None if ev.score is None else round(ev.score, 4),
                           "start_time": round(ev.samples[0][1], 3),
                           "end_time": round(ev.samples[-1][1] + self.pass_seconds, 3),
                           "embeddings": len(ev.features), "changes": ev.changes,
                           "boxes": [[round(sec, 3), *[round(float(v), 1) for v in box], round(score, 4)]
                                     for _, sec, box, score in ev.samples]})
        tracks.sort(key=lambda t: (t["start_time"], t["track_id"]))  # ids as drawn on the video
        self.reported = [(t, self.evidence[t["track_id"]]) for t in tracks]
        return tracks


def recognize_video(pipeline, source, index, settings=None, name=None, save_dir=None, save_video=False,
                    progress=True, stop=None, max_pixels=None, det_threshold=None, rec_threshold=None):
    """Open `source` (a video file, a camera index, a stream URL), run the VideoRecognizer over it
    and return its VideoRecognitionResult; with save_dir and save_video, <name>_res.webm (the
    annotated video) is written there too, renamed into place only once it is complete (an error
    leaves no file; Ctrl-C leaves the frames up to it, the result marked partial)."""
    from datasets.video import open_video
    from foundation.progress import Progress

    settings = settings or VideoSettings()
    opened = open_video(source, max_pixels or pipeline.max_image_pixels, settings.reconnects)
    name = name or os.path.splitext(os.path.basename(str(source)))[0]
    writer = None
    try:
        if save_dir and save_video:
            os.makedirs(save_dir, exist_ok=True)
            writer = AnnotatedVideoWriter(os.path.join(save_dir, f"{name}_res.webm"), opened.fps,
                                          (opened.width, opened.height))
        with Progress(opened.frame_count or None, desc=f"video {name}", unit="frame", enabled=progress) as bar:
            recognizer = VideoRecognizer(pipeline, settings, det_threshold=det_threshold, rec_threshold=rec_threshold)
            result = recognizer.run(opened, index, writer=writer, progress=bar, stop=stop)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    finally:
        opened.close()
    result.name = name
    if writer is not None:
        if result["frames"]:
            result["video_path"] = writer.finish()
        else:
            writer.discard()
    return result


class AnnotatedVideoWriter:
    """Writes the annotated video (boxes, names, track ids) as WebM (VP8), which browsers play,
    to a temporary name renamed into place by `finish()`; `discard()` removes it.

    VP8 encoding is slower than the recognition (one thread of libvpx, about 21 frames/s at 720p on
    a Zen 5 core), so frames are drawn at most `max_width` pixels wide and encoded on a thread of
    their own, beside the recognition, through a short queue."""

    QUEUE = 8  # frames waiting for the encoder: the recognition waits beyond that

    def __init__(self, path, fps, size, max_width=640):
        self.path = path
        self.tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.part.webm")
        w, h = size
        self.scale = min(1.0, max_width / float(w)) if max_width else 1.0
        self.size = (max(2, int(round(w * self.scale)) // 2 * 2), max(2, int(round(h * self.scale)) // 2 * 2))
        self._writer = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*"VP80"), float(fps), self.size)
        if not self._writer.isOpened():
            raise UserError(f"cannot write {path}: OpenCV has no WebM (VP8) encoder here; turn the annotated "
                            "video off with -o Video.save_video=False")
        self._queue = queue.Queue(self.QUEUE)
        self._error = None
        self._thread = threading.Thread(target=self._encode, name="webm-encoder", daemon=True)
        self._thread.start()

    def _encode(self):
        while True:
            img = self._queue.get()
            if img is None:
                return
            try:
                self._writer.write(img)
            except cv2.error as e:  # reported by the next __call__ or finish
                self._error = e

    def __call__(self, frame, faces):
        if self._error is not None:
            raise UserError(f"writing {self.path} failed: {self._error}")
        img = frame if self.scale == 1.0 else cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        img = img.copy() if img is frame else img
        h, w = img.shape[:2]
        thick = max(1, int(round(max(h, w) / 400)))
        for track_id, box, ev in faces:
            x1, y1, x2, y2 = [int(round(v * self.scale)) for v in box]
            known = ev.label != UNKNOWN_LABEL
            color = (40, 200, 40) if known else (40, 40, 230)
            cv2.rectangle(img, (x1, y1), (x2, y2), color, thick)
            text = f"#{track_id} {ev.label}" + (f" {ev.score:.2f}" if ev.score is not None else "")
            scale = max(0.4, min(1.0, (x2 - x1) / 180))
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            ty = y1 - 4 if y1 - th - 6 >= 0 else min(h - base - 1, y2 + th + 4)
            tx = min(max(0, x1), max(0, w - tw - 4))
            cv2.rectangle(img, (tx, ty - th - 3), (tx + tw + 4, ty + base - 1), color, -1)
            cv2.putText(img, text, (tx + 2, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        self._queue.put(img)

    def _close(self):
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._writer.release()

    def finish(self):
        self._close()
        if self._error is not None:
            self.discard()
            raise UserError(f"writing {self.path} failed: {self._error}")
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self):
        self._close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
