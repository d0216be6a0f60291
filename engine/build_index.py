"""Gallery index management: Global.mode=build_index | append_index | remove_index.

    build_index   embed Index.gallery (one folder per person) or Index.label_file (PaddleX's
                  gallery.txt) and write a new index to `index`, replacing the old one atomically
    append_index  add Index.gallery / Index.label_file to the index in `index`
    remove_index  remove Index.remove_labels (and/or Index.remove_ids) from the index in `index`

Thin wrappers over FaceRecognitionPipeline.build_index / append_index / remove_index. Gallery
images that cannot be read or hold no face are listed, skipped and counted; the index is still
written when at least one face was enrolled.
"""
import os

from datasets.demo import ensure_demo
from engine.gallery_index import GalleryIndex
from engine.recognition import FaceRecognitionPipeline, gallery_items
from foundation.errors import ConfigError, UserError
from foundation.logger import log_to_file

ACTIONS = ("build_index", "append_index", "remove_index")


def _report(summary, index_dir, action, log):
    if summary["skipped"]:
        log.warning(f"{summary['skipped']} gallery image(s) skipped (listed above); with face crops instead of "
                    f"photos, set -o SubModules.Detection.enable=False")
    print(f"{action} done: {summary['enrolled']} of {summary['images']} gallery image(s) enrolled, "
          f"{summary['skipped']} skipped (no face or unreadable); index {index_dir} holds "
          f"{summary['index_size']} face(s) of {summary['labels']} people")


def run(cfg):
    action = cfg.Global.mode
    if action not in ACTIONS:
        raise ConfigError(f"engine.build_index runs {', '.join(ACTIONS)}, not '{action}'")
    index_dir = cfg.index
    if not index_dir:
        raise UserError("`index` is empty: set -o index=<folder> (where the gallery index is written and read)")
    gallery = cfg.Index.gallery
    label_file = cfg.Index.label_file or None
    if action != "remove_index" and not gallery and not label_file:
        raise UserError("Index.gallery is empty: pass -o Index.gallery=<folder with one sub-folder per person> "
                        "or -o Index.label_file=<gallery.txt of '<path> <label>' lines>")
    if action != "build_index" and not os.path.isdir(index_dir):
        raise UserError(f"gallery index folder '{index_dir}' does not exist: build it first with "
                        f"-o Global.mode=build_index -o Index.gallery=DIR -o index={index_dir}")
    items = current = None
    if action != "remove_index":
        ensure_demo(gallery)
        items = gallery_items(gallery, label_file)  # a bad gallery path or list line fails before the model loads
    if action != "build_index":
        current = GalleryIndex.load(index_dir, nprobe=cfg.Index.nprobe)  # ... and so does a broken index
    log_dir = index_dir if action != "build_index" else os.path.dirname(os.path.abspath(index_dir))
    log = log_to_file(os.path.join(log_dir, "build_index.log"))
    pipe = FaceRecognitionPipeline.from_config(cfg)
    if action == "build_index":
        index = pipe.build_index(items)
        index.save(index_dir)
        _report(pipe.last_enrolment.summary(index), index_dir, action, log)
    elif action == "append_index":
        index = pipe.append_index(items, index=current)
        if pipe.last_enrolment.labels:
            index.save(index_dir)
        log.info(f"index grew from {len(current)} to {len(index)} faces")
        _report(pipe.last_enrolment.summary(index), index_dir, action, log)
    else:
        labels, ids = list(cfg.Index.remove_labels), list(cfg.Index.remove_ids)
        if not labels and not ids:
            raise UserError("nothing to remove: pass -o Index.remove_labels=[name,...] and/or -o Index.remove_ids=[3,7]")
        index = pipe.remove_index(ids, index=current, remove_labels=labels)
        removed = len(current) - len(index)
        if removed == 0:
            raise UserError(f"none of labels {labels} / ids {ids} is in the index {index_dir}; nothing removed "
                            f"(labels in the index: {', '.join(current.labels[:10])}"
                            f"{' ...' if len(current.labels) > 10 else ''})")
        index.save(index_dir)
        missing = pipe.last_missing_ids
        not_found = f"; not in the index (ignored): ids {missing}" if missing else ""
        print(f"remove_index done: removed {removed} face(s); index {index_dir} holds {len(index)} "
              f"(was {len(current)}) of {len(index.labels)} people{not_found}")
    return 0
