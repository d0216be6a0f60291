"""Gallery index management: Global.mode=build_index | append_index | remove_index.

    build_index   embed Index.gallery (one folder per person) or Index.label_file ('<path> <label>'
                  lines) and write a new index to Index.dir, replacing the old one atomically
    append_index  add Index.gallery / Index.label_file to the index in Index.dir
    remove_index  remove Index.remove_labels (and/or Index.remove_ids) from the index in Index.dir

Gallery images that cannot be read or hold no face are listed, skipped and counted; the index is
still written when at least one face was enrolled.
"""
import os

from datasets.demo import ensure_demo
from engine.recognition import RecognitionPipeline, gallery_items
from foundation.errors import ConfigError, UserError
from foundation.logger import log_to_file

ACTIONS = ("build_index", "append_index", "remove_index")


def _report(summary, index_dir, action, log):
    if summary["skipped"]:
        log.warning(f"{summary['skipped']} gallery image(s) skipped (listed above); with face crops instead of "
                    f"photos, set -o Det.enable=False")
    print(f"{action} done: {summary['enrolled']} of {summary['images']} gallery image(s) enrolled, "
          f"{summary['skipped']} skipped (no face or unreadable); index {index_dir} holds "
          f"{summary['index_size']} face(s) of {summary['labels']} people")


def run(cfg):
    action = cfg.Global.mode
    if action not in ACTIONS:
        raise ConfigError(f"engine.build_index runs {', '.join(ACTIONS)}, not '{action}'")
    index_dir = cfg.Index.dir
    gallery = cfg.Index.gallery
    label_file = cfg.Index.label_file or None
    if action != "remove_index" and not gallery and not label_file:
        raise UserError("Index.gallery is empty: pass -o Index.gallery=<folder with one sub-folder per person> "
                        "or -o Index.label_file=<list of '<path> <label>' lines>")
    if action != "build_index" and not os.path.isdir(index_dir):
        raise UserError(f"gallery index folder '{index_dir}' does not exist: build it first with "
                        f"-o Global.mode=build_index -o Index.gallery=DIR -o Index.dir={index_dir}")
    items = None
    if action != "remove_index":
        ensure_demo(gallery)
        items = gallery_items(gallery, label_file)  # a bad gallery path or list line fails before the model loads
    log_dir = index_dir if action != "build_index" else os.path.dirname(os.path.abspath(index_dir))
    log = log_to_file(os.path.join(log_dir, "build_index.log"))
    pipe = RecognitionPipeline.from_config(cfg, load_index=action != "build_index")
    if action == "build_index":
        summary = pipe.build_index(items, index_dir=index_dir)
        _report(summary, index_dir, action, log)
    elif action == "append_index":
        before = len(pipe.index)
        summary = pipe.append(items, index_dir=index_dir)
        log.info(f"index grew from {before} to {len(pipe.index)} faces")
        _report(summary, index_dir, action, log)
    else:
        labels = list(cfg.Index.remove_labels)
        ids = list(cfg.Index.remove_ids)
        if not labels and not ids:
            raise UserError("nothing to remove: pass -o Index.remove_labels=[name,...] and/or -o Index.remove_ids=[3,7]")
        before = len(pipe.index)
        removed = pipe.remove(labels, ids, index_dir)
        if removed == 0:
            raise UserError(f"none of labels {labels} / ids {ids} is in the index {index_dir}; nothing removed "
                            f"(labels in the index: {', '.join(pipe.index.labels[:10])}"
                            f"{' ...' if len(pipe.index.labels) > 10 else ''})")
        not_found = f"; not in the index (ignored): ids {pipe.missing_ids}" if pipe.missing_ids else ""
        print(f"remove_index done: removed {removed} face(s); index {index_dir} holds {len(pipe.index)} "
              f"(was {before}) of {len(pipe.index.labels)} people{not_found}")
    return 0
