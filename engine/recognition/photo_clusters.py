"""Who is in these photos: every face of every photo detected, aligned and embedded by the pipeline,
then grouped by person into a cluster folder (engine.clustering.book) that later runs grow.

    book = cluster_photos(pipe, "photos/", folder="output/clusters", settings=settings)

Photos already in the folder are skipped, so a re-run with a few new photos costs only those; the
new faces join the old clusters, whose ids and names stay. enroll_named puts the faces of named
clusters into a gallery index, labelled by name, from the stored features (nothing is embedded
again).
"""
import os
import time

import numpy as np

from engine.clustering.book import ClusterBook, read_names
from engine.clustering.pictures import save_crop, write_views
from engine.inference.inputs import expand_inputs, is_expanded
from foundation.errors import UserError
from foundation.logger import get_logger
from foundation.progress import Progress


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
    """Add the faces of `input` (image, folder read recursively, URL, numpy image or a list) to the
    cluster book of `folder` (or `book`, or a new one) and group them; with a folder, the face crops
    go there as they come, and with `save` the book and its pictures at the end. Returns the book;
    pipe.failures lists the photos that could not be read."""
    log = get_logger()
    book = book if book is not None else open_book(pipe, folder)
    items = [] if input is None else (input if is_expanded(input) else expand_inputs(input))
    videos = [item.input_path for item in items if item.video]
    if videos:
        raise UserError(f"{videos[0]} is a video: clustering reads photos (run Global.mode=recognize for videos)")
    todo = [item for item in items if photo_key(item) is None or photo_key(item) not in book.photos]
    if items and len(todo) < len(items):
        log.info(f"cluster: {len(items) - len(todo)} of {len(items)} photo(s) are in the cluster folder already "
                 "and are skipped")
    faces, rows, no_face = [], [], 0
    first_id = len(book.faces)
    pipe.failures = []
    start = time.perf_counter()
    with Progress(len(todo), desc="cluster: detect and embed", unit="photo", enabled=progress and bool(todo)) as bar:
        for queue, feats in (pipe.embedded(todo, det_threshold, keep_images=False) if todo else ()):
            k = 0
            for item, _, found in queue:
                for face, crop in found:
                    record = {"source": item.input_path if item.input_path is not None else item.name,
                              "box": [round(float(v), 1) for v in face.box], "det_score": round(float(face.score), 4)}
                    if face.landmarks is not None:
                        record["landmarks"] = face.to_dict()["landmarks"]
                    if folder:
                        save_crop(folder, first_id + len(faces), crop)
                    faces.append(record)
                    rows.append(feats[k])
                    k += 1
                key = photo_key(item)
                if key is not None:
                    book.photos[key] = len(found)
                no_face += not found
            elapsed = time.perf_counter() - start
            bar.update(len(queue), postfix=f"{len(faces)} faces, {len(faces) / max(elapsed, 1e-9):.1f} faces/s")
    failures = list(pipe.failures)
    if todo and not faces and not book.faces:
        read = len(todo) - len(failures)
        raise UserError(f"no face found in any of the {read} photo(s) read"
                        + (f" ({len(failures)} could not be read)" if failures else "")
                        + f" at det_threshold {pipe.det_threshold if det_threshold is None else det_threshold}: "
                          "nothing to cluster, no clusters written (a lower -o det_threshold finds fainter faces)")
    if no_face:
        log.info(f"cluster: {no_face} photo(s) without a face found in them")
    features = np.stack(rows) if rows else np.zeros((0, book.features.shape[1]), np.float32)
    book.add(faces, features, settings)
    pipe.failures = failures
    if folder and save:
        save_book(book, folder)
    return book


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
    """The book and its pictures into `folder`."""
    book.save(folder)
    write_views(folder, book)


def enroll_named(pipe, book, index, index_name):
    """Add the faces of every named cluster not yet enrolled into `index` (a GalleryIndex) under
    `index_name`, labelled by the cluster's name; returns {name: faces added}. Faces already
    enrolled there are not added twice (the book remembers them per index)."""
    done = book.enrolled.setdefault(index_name, set())
    ids, labels, sources = [], [], []
    for cid, name in sorted(book.names.items()):
        for face_id in book.members(cid):
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
