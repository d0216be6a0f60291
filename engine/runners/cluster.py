"""Global.mode=cluster: who is in these photos, grouped by person, named, and enrolled.

    python main.py -c configs/face_recognition/pipeline.yaml -o Global.mode=cluster -o Cluster.input=PHOTOS
    python main.py -c configs/face_recognition/pipeline.yaml -o Global.mode=cluster \\
        -o Cluster.names="{1: Alice, 2: Bob}" -o Cluster.enroll=True -o index=output/gallery_index

Cluster.output (output/clusters) receives cluster_result.json, clusters.csv, features.npy, faces/,
clusters/<id>_<name>/, sheets/ and overview.jpg (engine.clustering.pictures), with cluster.log. Run
again with more photos and they join the clusters there (their ids and names stay); Cluster.merge,
split, move and names edit it; Cluster.enroll puts the named clusters' faces into the gallery index.
Unreadable photos are skipped and listed, and the run then ends with exit code 1. A thin wrapper
over FaceRecognitionPipeline.cluster and engine.recognition.photo_clusters.enroll_named.
"""
import contextlib
import os

from engine.clustering.book import ClusterBook
from engine.clustering.pictures import CLUSTERS_DIR, CSV_FILE, FACES_DIR, OVERVIEW_FILE, SHEETS_DIR
from engine.config.output_folder import LOCK, OutputLock, check_output_folder
from engine.gallery.backend import GallerySettings
from engine.gallery.faiss_index import foreign_entries as foreign_index_entries
from engine.gallery.faiss_index import holds_index, listed
from engine.inference.inputs import configured_inputs
from engine.recognition.photo_clusters import PENDING_FEATURES, PENDING_FILE, enroll_named
from engine.recognition.pipeline import FaceRecognitionPipeline
from foundation.errors import UserError
from foundation.logger import log_to_file

LOG_FILE = "cluster.log"
OWN_NAMES = {"cluster_result.json", "features.npy", FACES_DIR, CLUSTERS_DIR, SHEETS_DIR, OVERVIEW_FILE, CSV_FILE,
             LOG_FILE, LOCK, PENDING_FILE, PENDING_FEATURES}


def _check_folder(folder):
    """Cluster.output is empty, missing, or a cluster folder: never a folder of someone else's files."""
    if not os.path.isdir(folder):
        return
    foreign = [name for name in sorted(os.listdir(folder))
               if name not in OWN_NAMES and not (name.startswith(".") and name.endswith(".tmp"))]
    if foreign:
        raise UserError(f"Cluster.output {folder} holds {', '.join(foreign[:3])}"
                        f"{' ...' if len(foreign) > 3 else ''}, which no clustering wrote: nothing was written; "
                        "choose an empty or new folder with -o Cluster.output=DIR")


def run(cfg):
    section = cfg.Cluster
    folder = check_output_folder(section.output, "Cluster.output")
    _check_folder(folder)
    existing = ClusterBook.exists(folder)
    items = configured_inputs(section.input, key="Cluster.input") if section.input is not None else None
    if items is None and not existing and not os.path.isfile(os.path.join(folder, PENDING_FILE)):
        raise UserError(f"Cluster.input is empty and {folder} holds no clusters yet: pass -o Cluster.input=<folder of "
                        "photos>")
    if section.enroll and not cfg.index:
        raise UserError("Cluster.enroll needs `index`: set -o index=<gallery index folder>")
    gallery = GallerySettings.from_config(cfg.Index) if section.enroll else None
    if gallery is not None and not gallery.milvus:
        foreign = foreign_index_entries(cfg.index)
        if foreign:
            raise UserError(f"index folder {cfg.index} holds {listed(foreign)}, which is not a gallery index: nothing "
                            "was written; choose another folder with -o index=...")
    os.makedirs(folder, exist_ok=True)
    with OutputLock(folder, what="cluster", subject=f"cluster folder {folder}",
                    fix="wait for that run to finish, then run this one again"):
        log = log_to_file(os.path.join(folder, LOG_FILE))
        pipe = FaceRecognitionPipeline.from_config(cfg)
        settings = pipe.cluster_settings()
        log.info(f"cluster: model {pipe.model.model_name}; threshold {settings.threshold:.3f} "
                 f"({pipe.cluster_threshold()[1]}); "
                 f"{settings.method}, {settings.neighbours} neighbours, groups of {settings.min_cluster_size}+; faces "
                 f"under {settings.min_face_size} px or scored under {settings.min_det_score} go to unsorted")
        book = pipe.cluster(items, output=folder, names=section.names, merge=section.merge, split=section.split,
                            move=section.move)
        if section.enroll:
            _enroll(cfg, pipe, gallery, book, folder, log)
    summary = book.to_json()["summary"]
    print(f"Cluster done: {summary['faces']} face(s) from {summary['photos']} photo(s) in {summary['clusters']} "
          f"cluster(s) ({summary['named']} named), {summary['unsorted']} unsorted; {folder} "
          f"({OVERVIEW_FILE}, {CSV_FILE}, {SHEETS_DIR}/, {CLUSTERS_DIR}/)")
    if pipe.failures:
        shown = "; ".join(f"{p}: {m}" for p, m in pipe.failures[:3])
        raise UserError(f"{len(pipe.failures)} photo(s) could not be read and were skipped ({shown}); the others are "
                        f"clustered in {folder}")
    return 0


def _enroll(cfg, pipe, gallery, book, folder, log):
    """The named clusters' faces into the index `index` (created when missing), one writer at a time."""
    if not book.names:
        raise UserError("no cluster is named, so none can be enrolled: name them first, e.g. -o Cluster.names=\"{1: "
                        "Alice}\" (ids in clusters.csv and overview.jpg)")
    index_dir = cfg.index
    if not gallery.milvus:
        os.makedirs(os.path.dirname(os.path.abspath(index_dir)), exist_ok=True)
    lock = contextlib.nullcontext() if gallery.milvus else OutputLock(
        None, what="cluster enroll", lock_file=os.path.abspath(index_dir).rstrip(os.sep) + ".lock",
        subject=f"gallery index {index_dir}", fix="wait for that run to finish, then run this one again")
    with lock:
        present = gallery.exists(index_dir) if gallery.milvus else holds_index(index_dir)
        index = pipe.resolve_index(gallery.open(index_dir)).copy() if present else pipe.new_index()
        added = enroll_named(pipe, book, index, os.path.abspath(index_dir) if not gallery.milvus else index_dir)
        if added:
            index.save(index_dir)
            book.save(folder)  # which faces are in that index now
    if added:
        print(f"Enrolled into {index_dir}: " + ", ".join(f"{name} ({n} face(s))" for name, n in added.items())
              + f"; it holds {len(index)} face(s) of {len(index.labels)} people")
    else:
        print(f"Enrolled into {index_dir}: nothing new (every named cluster's faces are there already)")
    log.info(f"cluster enroll: {sum(added.values())} face(s) added to {index_dir}")
