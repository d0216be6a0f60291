"""Gallery index management: Global.mode=build_index | append_index | remove_index.

    build_index   embed Index.gallery (one folder per person) or Index.label_file (PaddleX's
                  gallery.txt) and write a new index to `index`, replacing the old one atomically
    append_index  add Index.gallery / Index.label_file to the index in `index`
    remove_index  remove Index.remove_labels (and/or Index.remove_ids) from the index in `index`

Builds and appends stream: Index.build_batch images are embedded and added at a time (memory
bounded by the step, not the gallery), with a progress line per step; build_index writes a
checkpoint after each step and, run again after an interruption, resumes from it (Index.resume).
Removal is FaceRecognitionPipeline.remove_index. Gallery images in which no face is found are
embedded whole (face crops) and counted; images that cannot be read are listed, skipped and counted;
the index is still written when at least one image was enrolled.
With Index.backend=milvus, `index` names a collection on Index.uri.
"""
import contextlib
import os
import shutil
import time

from datasets.demo import ensure_demo
from engine.config.output_folder import OutputLock
from engine.gallery.backend import GallerySettings
from engine.gallery.faiss_index import foreign_entries, holds_index, listed
from engine.recognition.pipeline import FaceRecognitionPipeline, gallery_items
from foundation.errors import ConfigError, UserError
from foundation.logger import log_to_file

ACTIONS = ("build_index", "append_index", "remove_index")


def _report(summary, index_dir, action, log):
    if summary["skipped"]:
        log.warning(f"{summary['skipped']} gallery image(s) skipped (listed above)")
    if summary["whole"]:
        log.info(f"{summary['whole']} gallery image(s) had no face detected and were embedded whole (face crops "
                 f"need nothing more; photos among them may need a lower -o det_threshold)")
    print(f"{action} done: {summary['enrolled']} of {summary['images']} gallery image(s) enrolled "
          f"({summary['whole']} of them whole: no face detected), {summary['skipped']} skipped (unreadable); "
          f"index {index_dir} holds {summary['index_size']} face(s) of {summary['labels']} people")


def stream_into(pipe, items, index, batch, log, desc, checkpoint=None, skip_held=False):
    """Embed `items` and add them to `index` in steps of `batch` images (memory bounded by the step,
    not the gallery), logging progress and calling `checkpoint(index)` after each step. With
    `skip_held`, images whose path the index already holds are skipped: how an interrupted build resumes."""
    held = {e["path"] for e in index.entries.values() if e.get("path")} if skip_held and len(index) else set()
    todo = [it for it in items if not (isinstance(it[0], str) and it[0] in held)]
    if len(todo) < len(items):
        log.info(f"{desc}: resuming, {len(items) - len(todo)} of {len(items)} image(s) are already in the index")
    enrolled, skipped, whole, start = len(items) - len(todo), [], 0, time.perf_counter()
    for s in range(0, len(todo), batch):
        part = todo[s:s + batch]
        enrolment = pipe.enroll(part, f"{desc} {s + 1}-{s + len(part)} of {len(todo)}")
        if enrolment.labels:
            index.add(enrolment.features, enrolment.labels, enrolment.sources)
        enrolled += len(enrolment.labels)
        skipped += enrolment.skipped
        whole += len(enrolment.whole)
        if checkpoint is not None and len(index):
            checkpoint(index)
        done, elapsed = s + len(part), time.perf_counter() - start
        eta = elapsed / done * (len(todo) - done)
        log.info(f"{desc}: {done} / {len(todo)} image(s) ({100 * done / len(todo):.0f} %), index {len(index)} "
                 f"face(s), {elapsed:.0f} s, about {eta:.0f} s left")
    return {"images": len(items), "enrolled": enrolled, "skipped": len(skipped), "skipped_images": skipped,
            "whole": whole, "index_size": len(index), "labels": len(index.labels)}


def _none_enrolled(summary, items):
    first = summary["skipped_images"][0] if summary["skipped_images"] else ("-", "-")
    return UserError(f"none of the {len(items)} gallery images could be read (e.g. {first[0]}: {first[1]}); "
                     "nothing written")


def _build(cfg, pipe, items, index_dir, log):
    """build_index in steps of Index.build_batch with a checkpoint after each; Index.resume continues
    an interrupted build (faiss: from <index>.partial; milvus: the collection, marked unfinished by
    <Global.output>/build_index.<index>.partial)."""
    batch, resume = cfg.Index.build_batch, cfg.Index.resume
    if pipe.gallery.milvus:
        marker = _milvus_marker(cfg, index_dir)
        if resume and os.path.isfile(marker):
            index = pipe.resolve_index(index_dir)
            log.info(f"resuming the unfinished build of '{index_dir}' ({len(index)} face(s) in it)")
        else:
            index = pipe.new_index()
            os.makedirs(cfg.Global.output, exist_ok=True)
            with open(marker, "w", encoding="utf-8") as f:
                f.write("build_index of this collection did not finish; run it again to resume\n")
        summary = stream_into(pipe, items, index, batch, log, "build index", skip_held=True)
        if summary["enrolled"] == 0:
            raise _none_enrolled(summary, items)
        os.remove(marker)
        return summary
    partial = os.path.abspath(index_dir).rstrip(os.sep) + ".partial"
    if resume and os.path.isdir(partial):
        index = pipe.resolve_index(pipe.gallery.load_folder(partial))
        log.info(f"resuming the unfinished build in {partial} ({len(index)} face(s) in it); "
                 f"-o Index.resume=False starts again")
    else:
        shutil.rmtree(partial, ignore_errors=True)
        index = pipe.new_index()
    index.planned_size = len(items)  # IVF lists for the whole gallery, trained on the first step
    summary = stream_into(pipe, items, index, batch, log, "build index", checkpoint=lambda ix: ix.save(partial),
                          skip_held=True)
    if summary["enrolled"] == 0:
        raise _none_enrolled(summary, items)
    index.save(index_dir)
    shutil.rmtree(partial, ignore_errors=True)
    return summary


def _check_target(cfg, gallery_settings, index_dir, action):
    """Before any work: the index `index` names may be written as `action` would write it. A folder
    holding anything but an index is never touched; an existing index is rebuilt only with
    Index.overwrite=True (an unfinished build of it resumes)."""
    if gallery_settings.milvus:
        unfinished = os.path.isfile(_milvus_marker(cfg, index_dir))
        if action == "build_index" and not cfg.Index.overwrite and not unfinished and gallery_settings.exists(index_dir):
            raise UserError(f"collection '{index_dir}' on {cfg.Index.uri} exists: -o Index.overwrite=True replaces it "
                            "(append_index adds to it)")
        return
    foreign = foreign_entries(index_dir)
    if foreign:
        raise UserError(f"index folder {index_dir} holds {listed(foreign)}, which is not a gallery index: nothing was "
                        "written; choose another folder with -o index=...")
    if action == "build_index" and holds_index(index_dir) and not cfg.Index.overwrite:
        raise UserError(f"{index_dir} holds a gallery index already: -o Index.overwrite=True replaces it (the old one "
                        "stays until the new one is complete), append_index adds to it")


def _milvus_marker(cfg, name):
    return os.path.join(cfg.Global.output, f"build_index.{name}.partial")


def run(cfg):
    action = cfg.Global.mode
    if action not in ACTIONS:
        raise ConfigError(f"engine.runners.index runs {', '.join(ACTIONS)}, not '{action}'")
    index_dir = cfg.index
    if not index_dir:
        raise UserError("`index` is empty: set -o index=<folder> (where the gallery index is written and read; "
                        "with Index.backend=milvus the collection's name)")
    gallery = cfg.Index.gallery
    label_file = cfg.Index.label_file or None
    if action != "remove_index" and not gallery and not label_file:
        raise UserError("Index.gallery is empty: pass -o Index.gallery=<folder with one sub-folder per person> "
                        "or -o Index.label_file=<gallery.txt of '<path> <label>' lines>")
    settings = GallerySettings.from_config(cfg.Index)
    _check_target(cfg, settings, index_dir, action)
    items = None
    if action != "remove_index":
        ensure_demo(gallery)
        items = gallery_items(gallery, label_file)  # a bad gallery path or list line fails before the model loads
    # One writer per index folder: a second build/append/remove on it is refused, naming this run's
    # pid (a Milvus collection serialises its own writes, and every insert is kept).
    if not settings.milvus:
        os.makedirs(os.path.dirname(os.path.abspath(index_dir)), exist_ok=True)  # where the index and its lock go
    lock = contextlib.nullcontext() if settings.milvus else OutputLock(
        None, what=action, lock_file=os.path.abspath(index_dir).rstrip(os.sep) + ".lock",
        subject=f"gallery index {index_dir}", fix="wait for that run to finish, then run this one again")
    with lock:
        current = None if action == "build_index" else settings.open(index_dir)  # a broken index fails here
        # the log goes where the run's outputs go, never into the index folder (that holds the index alone)
        os.makedirs(cfg.Global.output, exist_ok=True)
        log = log_to_file(os.path.join(cfg.Global.output, f"{action}.log"))
        pipe = FaceRecognitionPipeline.from_config(cfg)
        if action == "build_index":
            _report(_build(cfg, pipe, items, index_dir, log), index_dir, action, log)
        elif action == "append_index":
            _append(cfg, pipe, items, current, index_dir, log)
        else:
            _remove(cfg, pipe, current, index_dir)
    return 0


def _append(cfg, pipe, items, current, index_dir, log):
    before = len(current)
    index = pipe.resolve_index(current).copy()  # milvus: the live collection, changed step by step
    summary = stream_into(pipe, items, index, cfg.Index.build_batch, log, "append to index")
    if summary["enrolled"]:
        index.save(index_dir)
    log.info(f"index grew from {before} to {len(index)} faces")
    _report(summary, index_dir, "append_index", log)


def _remove(cfg, pipe, current, index_dir):
    labels, ids = list(cfg.Index.remove_labels), list(cfg.Index.remove_ids)
    if not labels and not ids:
        raise UserError("nothing to remove: pass -o Index.remove_labels=[name,...] and/or -o Index.remove_ids=[3,7]")
    before, known = len(current), current.labels
    index = pipe.remove_index(ids, index=current, remove_labels=labels)
    removed = before - len(index)
    if removed == 0:
        raise UserError(f"none of labels {labels} / ids {ids} is in the index {index_dir}; nothing removed "
                        f"(labels in the index: {', '.join(known[:10])}"
                        f"{' ...' if len(known) > 10 else ''})")
    index.save(index_dir)
    missing = pipe.last_missing_ids
    not_found = f"; not in the index (ignored): ids {missing}" if missing else ""
    print(f"remove_index done: removed {removed} face(s); index {index_dir} holds {len(index)} "
          f"(was {before}) of {len(index.labels)} people{not_found}")
