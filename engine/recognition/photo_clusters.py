"""Who is in these photos: every face of every photo detected, aligned and embedded by the pipeline,
then grouped by person into a cluster folder (engine.clustering.book) that later runs grow.

    book = cluster_photos(pipe, "photos/", folder="output/clusters", settings=settings)

Photos already in the folder are skipped, so a re-run with a few new photos costs only those; the
new faces join the old clusters, whose ids and names stay. enroll_named puts the faces of named
clusters into a gallery index, labelled by name, from the stored features (nothing is embedded
again).
"""
import contextlib
import json
import os
import time

import numpy as np

from datasets.video import open_video
from engine.clustering.book import ClusterBook, read_names, write_npy
from engine.clustering.pictures import save_crop, write_views
from engine.evaluation.metrics import l2_normalize
from engine.inference.inputs import expand_inputs, is_expanded, segments
from engine.recognition.video import VideoRecognizer
from foundation.atomic_io import atomic_save, atomic_write_json
from foundation.errors import UserError
from foundation.logger import get_logger
from foundation.progress import Progress

PENDING_FILE, PENDING_FEATURES = "pending.json", "pending.npy"  # a stopped run's faces, until the book holds them
CHECKPOINT_INPUTS = 1000  # inputs read between two checkpoints (about 5 s of work on 2 cores)


def model_record(pipe):
    """What a cluster folder records of the model that embedded its faces."""
    return {"name": pipe.model.model_name, "embedding_size": int(pipe.model.embedding_size),
            "fingerprint": pipe.fingerprint}


def open_book(pipe, folder):
    """The cluster folder's book (refusing one another model made), or a new one."""
    if folder and ClusterBook.exists(folder):
        return ClusterBook.load(folder, model_record(pipe))
    return ClusterBook.new(model_record(pipe))


def photo_key(item):
    """The key under which a photo is remembered (its absolute path; None for an image in memory)."""
    if item.input_path is None or "://" in str(item.input_path):
        return None if item.input_path is None else str(item.input_path)
    return os.path.abspath(item.input_path)


def cluster_photos(pipe, input, folder=None, settings=None, book=None, det_threshold=None, progress=True, save=True):
    """Add the faces of `input` (image, folder read recursively, URL, numpy image, video file or a
    list) to the cluster book of `folder` (or `book`, or a new one) and group them; a video adds
    one face per track (its mean feature, its best view). With a folder, the face crops go there as
    they come, and with `save` the book and its pictures at the end. Returns the book;
    pipe.failures lists the inputs that could not be read."""
    log = get_logger()
    book = book if book is not None else open_book(pipe, folder)
    items = [] if input is None else (input if is_expanded(input) else expand_inputs(input, videos=True))
    cameras = [item.input_path for item in items if item.video and not os.path.isfile(str(item.input_path))]
    if cameras:
        raise UserError(f"{cameras[0]} is a camera or a stream: clustering reads photos and video files (recognize "
                        "follows live sources)")
    collected = Collected.resumed(book, folder)
    todo = [item for item in items if photo_key(item) is None or not collected.seen(photo_key(item))]
    if items and len(todo) < len(items):
        log.info(f"cluster: {len(items) - len(todo)} of {len(items)} input(s) are in the cluster folder already "
                 "and are skipped")
    failures = []
    for segment in segments(todo):
        if isinstance(segment, list):
            _photo_faces(pipe, segment, collected, det_threshold, progress)
            failures.extend(pipe.failures)
            continue
        try:
            _video_faces(pipe, segment, collected, det_threshold, progress)
        except UserError as e:
            if segment.explicit:
                raise
            failures.append((segment.input_path, str(e)))  # one bad video in a folder: skip it
            log.warning(f"skipped {segment.input_path}: {e}")
    if todo and not collected.faces and not book.faces:
        read = len(todo) - len(failures)
        raise UserError(f"no face found in any of the {read} photo(s) read"
                        + (f" ({len(failures)} could not be read)" if failures else "")
                        + f" at det_threshold {pipe.det_threshold if det_threshold is None else det_threshold}: "
                          "nothing to cluster, no clusters written (a lower -o det_threshold finds fainter faces)")
    if collected.empty_inputs:
        log.info(f"cluster: {collected.empty_inputs} input(s) without a face found in them")
    collected.checkpoint(force=True)  # a failure from here on (an edit, a full disk) embeds nothing again
    book.add(collected.faces, collected.features(), settings)
    book.photos.update(collected.photos)
    hint = book.collapse_hint()
    if hint:
        log.warning(f"cluster: {hint}")
    pipe.failures = failures
    if folder and save:
        save_book(book, folder)
    return book


class Collected:
    """The faces a run gathers before they are grouped: their records and features, their crops
    written to the folder as they come (face ids are known: they follow the book's), and the inputs
    read. With a folder, they are checkpointed every CHECKPOINT_INPUTS inputs (pending.json and
    pending.npy), so a run that is stopped is resumed by the next one instead of started again;
    save_book removes the checkpoint once the book holds the faces."""

    def __init__(self, book, folder):
        self.book, self.folder = book, folder
        self.faces, self.rows, self.empty_inputs = [], [], 0
        self.photos = {}  # inputs read by this run (or the one it resumes): key -> faces found
        self._unsaved = 0

    @classmethod
    def resumed(cls, book, folder):
        """The faces a stopped run gathered into `folder` for this book (and its model), or none."""
        collected = cls(book, folder)
        path = os.path.join(folder, PENDING_FILE) if folder else None
        if not path or not os.path.isfile(path):
            return collected
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            feats = np.load(os.path.join(folder, PENDING_FEATURES), allow_pickle=False)
            usable = (data["model"] == book.model["fingerprint"] and data["first_face_id"] == len(book.faces)
                      and len(feats) >= len(data["faces"]))
        except (OSError, ValueError, KeyError, TypeError):
            usable = False
        if not usable:
            get_logger().warning(f"cluster: {path} is not a checkpoint of this cluster folder as it is now; "
                                 "its photos are read again")
            return collected
        collected.faces, collected.rows = data["faces"], list(feats[:len(data["faces"])])
        collected.photos, collected.empty_inputs = data["photos"], data["empty_inputs"]
        get_logger().info(f"cluster: resuming a stopped run: {len(collected.photos)} input(s) read, "
                          f"{len(collected.faces)} face(s)")
        return collected

    def seen(self, key):
        return key in self.book.photos or key in self.photos

    def add(self, record, feature, crop):
        if self.folder:
            save_crop(self.folder, len(self.book.faces) + len(self.faces), crop)
        self.faces.append(record)
        self.rows.append(np.asarray(feature, np.float32))

    def input_done(self, item, faces):
        key = photo_key(item)
        if key is not None:
            self.photos[key] = faces
        self.empty_inputs += not faces
        self._unsaved += 1
        self.checkpoint()

    def checkpoint(self, force=False):
        """Write the gathered faces when CHECKPOINT_INPUTS inputs came since the last time (or now)."""
        if not self.folder or not self._unsaved or (not force and self._unsaved < CHECKPOINT_INPUTS):
            return
        atomic_save(lambda tmp: write_npy(tmp, self.features()), os.path.join(self.folder, PENDING_FEATURES))
        atomic_write_json(os.path.join(self.folder, PENDING_FILE), {
            "model": self.book.model["fingerprint"], "first_face_id": len(self.book.faces), "faces": self.faces,
            "photos": self.photos, "empty_inputs": self.empty_inputs}, indent=None)
        self._unsaved = 0

    def features(self):
        return np.stack(self.rows) if self.rows else np.zeros((0, self.book.features.shape[1]), np.float32)


def _photo_faces(pipe, items, collected, det_threshold, progress):
    start, before = time.perf_counter(), len(collected.faces)
    with Progress(len(items), desc="cluster: detect and embed", unit="photo", enabled=progress) as bar:
        for queue, feats in pipe.embedded(items, det_threshold, keep_images=False, keep_crops=True):
            k = 0
            for item, _, found in queue:
                for face, crop in found:
                    record = {"source": item.input_path if item.input_path is not None else item.name,
                              "box": [round(float(v), 1) for v in face.box], "det_score": round(float(face.score), 4)}
                    if face.landmarks is not None:
                        record["landmarks"] = face.to_dict()["landmarks"]
                    collected.add(record, feats[k], crop)
                    k += 1
                collected.input_done(item, len(found))
            faces = len(collected.faces) - before
            rate = faces / max(time.perf_counter() - start, 1e-9)
            bar.update(len(queue), postfix=f"{faces} faces, {rate:.1f} faces/s")


def _video_faces(pipe, item, collected, det_threshold, progress):
    """One face per track of a video file: the mean of the track's features, its best view's crop and box."""
    opened = open_video(item.input_path, pipe.max_image_pixels, pipe.video.reconnects)
    try:
        session = VideoRecognizer(pipe, pipe.video, det_threshold=det_threshold).session(None, opened.fps)
        every = pipe.video.detect_every
        with Progress(opened.frame_count or None, desc=f"cluster: video {item.name}", unit="frame",
                      enabled=progress) as bar:
            for frame_index, seconds, frame in opened.frames(None, lambda i: i % every == 0):
                if frame_index % every == 0:
                    session.see(frame_index, seconds, frame)
                bar.update(1)
    finally:
        opened.close()
    session.finish()
    for track, evidence in session.reported:
        crop, _, box, score = evidence.best_view
        record = {"source": item.input_path, "box": [round(float(v), 1) for v in box],
                  "det_score": round(float(score), 4), "track_id": track["track_id"],
                  "time": [track["start_time"], track["end_time"]]}
        collected.add(record, l2_normalize(np.mean(evidence.features, axis=0, keepdims=True))[0], crop)
    collected.input_done(item, len(session.reported))


def edit_book(book, settings, names=None, merge=(), split=(), move=None):
    """Apply the edits a run asks for, in this order: names, merges, splits, moves (so a merge or a
    split can name the clusters the same command names). Returns a line per edit, for the log."""
    lines = []
    wanted = read_names(names)
    if wanted:
        for cid, name in book.rename(wanted).items():
            lines.append(f"cluster {cid} named '{name}'" if name else f"cluster {cid}: name removed")
    for refs in merge or ():
        refs = [refs] if isinstance(refs, (str, int)) else list(refs)
        keep, gone = book.merge(refs)
        lines.append(f"merged cluster(s) {', '.join(map(str, gone))} into {book.label_of(keep)} (id {keep})")
    for ref in split or ():
        parts, threshold = book.split(ref, settings)
        lines.append(f"split {ref} at cosine {threshold}: cluster(s) {', '.join(map(str, parts))}")
    if move:
        lines.append(f"moved {book.move(move)} face(s)")
    return lines


def save_book(book, folder):
    """The book and its pictures into `folder`; a stopped run's checkpoint is then done with."""
    book.save(folder)
    for name in (PENDING_FILE, PENDING_FEATURES):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))
    write_views(folder, book)


def enroll_named(pipe, book, index, index_name):
    """Add the faces of every named cluster not yet enrolled into `index` (a GalleryIndex) under
    `index_name`, labelled by the cluster's name; returns {name: faces added}. Faces already
    enrolled there are not added twice (the book remembers them per index)."""
    done = book.enrolled.setdefault(index_name, set())
    ids, labels, sources = [], [], []
    groups = book.groups()
    for cid, name in sorted(book.names.items()):
        for face_id in groups.get(cid, ()):
            if face_id not in done and book.faces[face_id]["quality"] == "ok":
                ids.append(face_id)
                labels.append(name)
                sources.append(book.faces[face_id]["source"])
    if not ids:
        return {}
    index.add(book.features[ids], labels, sources)
    done.update(ids)
    added = {}
    for name in labels:
        added[name] = added.get(name, 0) + 1
    return added
