"""The face recognition pipeline, with PaddleX's Python API: detect faces, align, embed, search a gallery.

    from engine import create_pipeline
    pipeline = create_pipeline("configs/face_recognition/pipeline.yaml")   # or "face_recognition"
    index = pipeline.build_index(gallery_imgs="gallery/", gallery_label="gallery/gallery.txt")
    index.save("face_index")                                  # vector.index + id_map.yaml + meta.json
    index = pipeline.append_index("more/", "more/gallery.txt", index=index)
    index = pipeline.remove_index(remove_ids=[3, 7], index=index)
    for res in pipeline.predict("photos/", index=index):     # or index="face_index"
        res.print()
        res.save_to_json("output/")
        res.save_to_img("output/")

Per image: {"input_path", "boxes": [{"labels", "rec_scores", "det_score", "coordinate", "label",
"score", "ids", "landmarks"}]}. PaddleX's fields keep PaddleX's meaning: `labels` / `rec_scores`
are the rec_topk nearest gallery faces, best first, when the nearest one's cosine reaches
rec_threshold, and None when it does not. Ours stand beside them: `label` is the top-1 decision
(the gallery label, or the explicit "unknown"), `score` the nearest cosine either way, `ids` the
gallery ids of `labels` (None with them). An image without a face gives no boxes.

A gallery is a folder with one sub-folder of images per person, PaddleX's `gallery.txt`
('<path relative to the gallery root> <label>' lines), lists of paths or numpy images with a list
of labels, or [(path, label)]. Each gallery image contributes its main face (models.alignment.main_face);
one in which no face is found is embedded whole, as PaddleX embeds every gallery image (galleries of
face crops need no setting), and counted; an unreadable image is reported, skipped and counted.
Every face, gallery and query, is aligned by models.alignment.face_chip (5 landmarks onto the
112x112 template; a square crop with SubModules.Detection.margin for a face without landmarks).

build_index returns a new index; append_index and remove_index return a changed copy and leave
the index they were given as it was, so a copy being searched never sees half an update.
Shared by the gallery modes, recognize, the HTTP service and the Python API.
"""
import contextlib
import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np
import yaml

from datasets.transforms import DEFAULT_MAX_PIXELS
from engine.clustering.book import ClusterSettings
from engine.config.loader import load_config, pipeline_config_path
from engine.config.schema import ClusterSection
from engine.gallery.backend import GallerySettings
from engine.gallery.faiss_index import apply_threshold, list_gallery, set_search_threads
from engine.inference.backends import hpi_settings, pp_option_settings, translate_hpi_config
from engine.inference.folder import recorded_threshold
from engine.inference.inputs import expand_inputs, is_expanded, segments
from engine.inference.model import InferenceModel
from engine.inference.official_models import feature_model_dir, official_model_dir
from engine.recognition.photo_clusters import cluster_photos, edit_book, save_book
from engine.recognition.results import FaceRecognitionResult
from engine.recognition.stages import FaceStages, Refused, embed_crops, faces_in
from engine.recognition.video import VideoSettings, recognize_video
from engine.recognition.workers import TASKS_PER_WORKER, WorkerError, WorkerPool, WorkerRecipe, plan_workers
from foundation.atomic_io import file_digest
from foundation.errors import UserError
from foundation.logger import get_logger
from foundation.progress import Progress
from foundation.runtime import num_threads_from, parse_device, set_threads
from models.face_detector import build_detector

DEFAULT_REC_THRESHOLD = 0.4  # the reference's value, when the model folder records none
# The detector runs at this score (or the pipeline's det_threshold when lower) and the faces are
# then kept at the threshold of the call, so predict(det_threshold=...) may go below the config's.
DETECTION_FLOOR = 0.3


def gallery_items(gallery_imgs, gallery_label=None):
    """[(source, label)] of a gallery, source an absolute path or a numpy image; UserError when it
    holds no image. Accepts PaddleX's forms (a root folder and a gallery.txt; a list of paths or
    images and a list of labels), a folder with one sub-folder per person, or [(path, label)]."""
    if isinstance(gallery_label, (list, tuple)):
        imgs = [gallery_imgs] if isinstance(gallery_imgs, (str, os.PathLike, np.ndarray)) else list(gallery_imgs)
        if len(imgs) != len(gallery_label):
            raise UserError(f"gallery: {len(imgs)} images but {len(gallery_label)} labels; give one label per image")
        items = [(img if isinstance(img, np.ndarray) else os.path.abspath(os.fspath(img)), str(lbl))
                 for img, lbl in zip(imgs, gallery_label)]
    elif isinstance(gallery_imgs, (list, tuple)):
        items = [(os.path.abspath(os.fspath(p)), str(lbl)) for p, lbl in gallery_imgs]
    else:
        items = list_gallery(None if gallery_imgs is None else os.fspath(gallery_imgs),
                             None if gallery_label is None else os.fspath(gallery_label))
    if not items:
        where = gallery_label if isinstance(gallery_label, (str, os.PathLike)) else gallery_imgs
        raise UserError(f"the gallery {where} holds no images: put one folder of face images per person "
                        f"(the folder name is the label) or list '<path> <label>' lines in a gallery.txt")
    return items


def _source_name(source, position):
    return source if isinstance(source, str) else f"image #{position}"


@dataclass
class Enrolment:
    """What embedding a gallery gave: one feature per enrolled image, the images embedded whole (no
    face found in them) and the images skipped (unreadable)."""
    features: np.ndarray
    labels: list
    sources: list  # path, or None for a numpy image
    total: int
    skipped: list = field(default_factory=list)  # [(path or "image #i", why)]
    skipped_positions: list = field(default_factory=list)  # their positions in the enrolled items
    whole: list = field(default_factory=list)  # [path or "image #i"] embedded whole: no face found in them


class FaceRecognitionPipeline:
    """Detector + feature model + gallery search, built from a pipeline config by `from_config`
    (or `create_pipeline`): the detector and the feature model come built, the gallery settings
    are the config's Index section (engine.gallery.backend.GallerySettings).

    The feature model is not thread-safe: call one pipeline from one thread at a time (the HTTP
    service runs every model call on one worker thread).

    With num_threads >= 2 on the CPU, predict and enrol over many images run in worker processes
    (engine.recognition.workers: each reads, detects, aligns and embeds blocks of images with a
    detector and model of its own on 1 thread) while this process searches and keeps the input
    order; the results are the ones this process gives alone (it runs the same blocks). `detector_settings` (build_detector's
    arguments, which from_config passes) is what lets the workers build the detector again.
    """

    def __init__(self, model, detector, gallery=None, *, det_threshold=0.6, margin=0.2, rec_threshold=None,
                 rec_topk=5, batch_size=16, index=None, max_image_pixels=DEFAULT_MAX_PIXELS, num_threads=1,
                 device_kind="cpu", detector_settings=None, video=None, clustering=None):
        self.model = model  # engine.inference.model.InferenceModel
        self.detector = detector  # models.face_detector: runs at min(det_threshold, DETECTION_FLOOR)
        self.gallery = gallery or GallerySettings()
        self.det_threshold = float(det_threshold)
        self.margin = float(margin)
        self.fingerprint = file_digest(self.model.params_file)  # different weights never share an index
        self.batch_size = max(1, int(batch_size))
        self.rec_topk = int(rec_topk)
        self.rec_threshold, self.rec_threshold_source = self._threshold(rec_threshold)
        self.max_image_pixels = int(max_image_pixels)
        self.index = None  # the default index of predict(): a GalleryIndex, or a folder loaded on first use
        self._index_source = index
        self.failures = []  # (input path, message) of the images the last predict() skipped
        self.num_threads, self.device_kind = int(num_threads), device_kind
        self._detector_settings = detector_settings
        self._pool = None  # engine.recognition.workers.WorkerPool, started by the first long call
        self._plans_logged = set()
        self.video = video or VideoSettings()  # how predict() reads a video (the config's Video section)
        self.clustering = clustering or ClusterSection()  # how cluster() groups faces (the Cluster section)

    @property
    def index_name(self):
        """The config's `index` (a folder, or a Milvus collection): predict's index when none is given."""
        return self._index_source

    def _threshold(self, configured):
        """(cosine threshold, where it came from): the configured value, else the one the model
        folder's inference.yml records from its validation (FAR 1e-3, 1e-2, best accuracy), else 0.4."""
        if configured is not None:
            return float(configured), "set in the config"
        value, why = recorded_threshold(self.model.info)
        if value is None:
            return DEFAULT_REC_THRESHOLD, f"the default ({why})"
        return value, why

    @classmethod
    def from_config(cls, cfg):
        """The pipeline of a pipeline config (engine.config.schema.PipelineConfig)."""
        gallery = GallerySettings.from_config(cfg.Index)  # a bad backend or Milvus URI fails before the model loads
        threads = num_threads_from(cfg.Global.num_threads)
        set_threads(threads)
        set_search_threads(threads)
        det_cfg, rec = cfg.SubModules.Detection, cfg.SubModules.Recognition
        if det_cfg.model_name == "YuNet":
            det = {"type": "yunet"}
        else:
            det = {"type": "paddle",
                   "model_dir": det_cfg.model_dir or (official_model_dir(det_cfg.model_name) if det_cfg.enable else None)}
        det.update(enable=det_cfg.enable, min_size=det_cfg.min_size, threshold=min(cfg.det_threshold, DETECTION_FLOOR))
        detector = build_detector(num_threads=threads, **det)
        use_hpip, hpi_config = hpi_settings(rec)
        model = InferenceModel(feature_model_dir(rec.model_dir, rec.model_name, "SubModules.Recognition.model_dir"),
                               device=cfg.Global.device, num_threads=threads, run_mode=rec.run_mode,
                               use_hpip=use_hpip, hpi_config=hpi_config)
        return cls(model, detector, gallery, det_threshold=cfg.det_threshold, margin=det_cfg.margin,
                   rec_threshold=cfg.rec_threshold, rec_topk=cfg.rec_topk, batch_size=rec.batch_size,
                   index=cfg.index, max_image_pixels=cfg.Global.max_image_pixels, num_threads=threads,
                   device_kind=parse_device(cfg.Global.device)[0], detector_settings=det,
                   video=VideoSettings.from_config(cfg.Video),
                   clustering=ClusterSection(**{f.name: getattr(cfg.Cluster, f.name)
                                                for f in dataclasses.fields(ClusterSection)}))

    # ------------------------------------------------------------------ embedding
    def embed(self, crops):
        """L2-normalised features [N, D] of BGR face crops, in batches of batch_size."""
        return embed_crops(self.model, crops, self.batch_size)

    def faces_of(self, img_bgr, det_threshold=None):
        """[(Face, aligned 112x112 crop)] for every face scoring at least det_threshold, best first."""
        threshold = self.det_threshold if det_threshold is None else float(det_threshold)
        return faces_in(self.detector, img_bgr, threshold, self.margin)

    # ------------------------------------------------------------------ worker processes
    def start_workers(self):
        """Start the worker processes now (normally the first call of MIN_IMAGES_TO_START images or
        more starts them), so that later calls of any size use them; True when they run."""
        return self._workers_for(None) is not None

    @property
    def worker_processes(self):
        """How many worker processes run for this pipeline (0: none now)."""
        return self._pool.workers if self._pool is not None and not self._pool.closed else 0

    def close(self):
        """Stop the worker processes, if any (a later long call starts them again)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
            set_search_threads(self.num_threads)

    def _workers_for(self, images):
        """The WorkerPool a call of `images` images (None: any number) uses, started if need be, or
        None for this process; the choice (engine.recognition.workers.plan_workers) is logged once."""
        if self._pool is not None and self._pool.closed:  # a worker stopped: the pool closed itself
            self.close()
        running = self._pool is not None
        workers, why = plan_workers(self.num_threads, self.device_kind, float("inf") if images is None else images,
                                    running, rebuildable=self._detector_settings is not None)
        if not workers:
            self._log_plan("in-process", f"pipeline: runs in this process ({why})")
            return None
        if not running:
            recipe = WorkerRecipe.of(self.model, self._detector_settings, self.margin, self.max_image_pixels)
            try:
                self._pool = WorkerPool(recipe, workers)
            except WorkerError as e:
                self._log_plan("failed", f"pipeline: runs in this process: {e}", warning=True)
                self._detector_settings = None  # do not try again at every call
                return None
            # the cores are the workers' now: a search on several threads would wait for a core
            # at each of its OpenMP barriers (6 ms for 16 faces on a loaded 2-core machine)
            set_search_threads(1)
            self._log_plan("workers", f"pipeline: {workers} worker processes ({why}; started in "
                                      f"{self._pool.start_seconds:.1f} s), each reading, detecting, aligning and "
                                      f"embedding blocks of {self._block_size()} images on 1 thread "
                                      f"({self._pool.description}); this process searches on 1 thread and keeps the "
                                      "input order")
        return self._pool

    def _log_plan(self, kind, line, warning=False):
        """Log `line` the first time a plan of this kind is taken (not at every call)."""
        if kind not in self._plans_logged:
            self._plans_logged.add(kind)
            (get_logger().warning if warning else get_logger().info)(line)

    # ------------------------------------------------------------------ gallery
    def new_index(self, index_type=None, metric_type=None, name=None, in_memory=False):
        """An empty index for this pipeline's model: in memory (faiss, or any backend with in_memory),
        or with the milvus backend a new collection `name` (default: the config's `index`) on
        Index.uri, replacing one of that name."""
        return self.gallery.create(self.model.embedding_size, self.model.model_name, self.fingerprint,
                                   name=name or self._index_source, index_type=index_type, metric_type=metric_type,
                                   in_memory=in_memory)

    def enroll(self, items, desc="enrol", progress=True):
        """Embed the main face of each (source, label): an Enrolment. A source is a path, a numpy image,
        or a function returning one (decoded only when its turn comes, so one image is held at a time;
        such a gallery is enrolled in this process)."""
        log = get_logger()
        decoded_here = any(callable(source) for source, _ in items)
        pool = None if decoded_here else self._workers_for(len(items))
        stages = self._stages()
        labels, sources, feats = [], [], []
        skipped, skipped_positions, whole = [], [], []
        size = self._block_size()
        starts = range(0, len(items), size)

        def task(start):
            return [source for source, _ in items[start:start + size]], self.det_threshold, self.batch_size

        if pool:
            answers = pool.ordered((("gallery_faces_embedded", task(start)) for start in starts),
                                   self._blocks_ahead(pool))
        else:
            answers = (stages.gallery_faces_embedded(*task(start)) for start in starts)
        with Progress(len(items), desc=desc, unit="img", enabled=progress) as bar, \
                contextlib.closing(answers):  # stopped early: the blocks left at the workers are dropped
            for start, (outcomes, block_feats) in zip(starts, answers):
                for position, outcome in enumerate(outcomes, start):
                    source, label = items[position]
                    name = _source_name(source, position)
                    if isinstance(outcome, Refused):
                        skipped.append((name, outcome.message))
                        skipped_positions.append(position)
                        log.warning(f"skipped gallery image {name}: {outcome.message}")
                        continue
                    if outcome:  # a face crop already, most likely: the whole image is the face
                        whole.append(name)
                        log.info(f"gallery image {name}: no face detected, embedded whole")
                    labels.append(label)
                    sources.append(source if isinstance(source, str) else None)
                feats.append(block_feats)
                bar.update(len(outcomes))
        features = np.concatenate(feats) if feats else np.zeros((0, self.model.embedding_size), np.float32)
        return Enrolment(features, labels, sources, len(items), skipped, skipped_positions, whole)

    def _enrolled_or_fail(self, items, desc):
        enrolment = self.enroll(items, desc)
        if len(enrolment.labels) == 0:
            first = enrolment.skipped[0]
            raise UserError(f"none of the {len(items)} gallery images could be read (e.g. {first[0]}: {first[1]}); "
                            "nothing written")
        return enrolment

    def build_index(self, gallery_imgs, gallery_label=None, index_type=None, metric_type=None):
        """A new index of a gallery (see gallery_items); `.save(folder)` writes it. UserError when
        no image could be read. `self.last_enrolment` tells what was embedded whole or skipped."""
        items = gallery_items(gallery_imgs, gallery_label)
        enrolment = self._enrolled_or_fail(items, "build index")
        index = self.new_index(index_type, metric_type)
        index.add(enrolment.features, enrolment.labels, enrolment.sources)
        self.last_enrolment = enrolment
        return index

    def append_index(self, gallery_imgs, gallery_label=None, index=None):
        """A copy of `index` (a GalleryIndex or a folder; default: the pipeline's) with a gallery's faces added."""
        base = self.resolve_index(index)
        items = gallery_items(gallery_imgs, gallery_label)
        enrolment = self.enroll(items, "append to index")
        out = base.copy()
        out.add(enrolment.features, enrolment.labels, enrolment.sources)
        self.last_enrolment = enrolment
        return out

    def remove_index(self, remove_ids=(), index=None, remove_labels=()):
        """A copy of `index` without the faces with `remove_ids` (a list, or PaddleX's file of one id
        per line) and every face of `remove_labels`. Ids the index does not hold are named in a
        warning and in `self.last_missing_ids`."""
        base = self.resolve_index(index)
        ids = read_id_list(remove_ids) if isinstance(remove_ids, (str, os.PathLike)) else [int(i) for i in remove_ids]
        out = base.copy()
        self.last_missing_ids = sorted(set(ids) - set(out.entries))
        if self.last_missing_ids:
            shown = ", ".join(map(str, self.last_missing_ids[:20])) + (" ..." if len(self.last_missing_ids) > 20 else "")
            get_logger().warning(f"ids not in the gallery index (nothing to remove for them): {shown}")
        for label in remove_labels:
            if out.remove_label(label) == 0:
                get_logger().warning(f"label '{label}' is not in the gallery index")
        out.remove_ids(ids)
        return out

    def resolve_index(self, index=None):
        """`index` as a GalleryIndex checked against this model: a GalleryIndex, a saved folder, or
        None for the pipeline's own (its config's `index` folder, loaded on first use)."""
        if index is None:
            if self.index is None:
                if not self._index_source:
                    raise UserError("no gallery index: build one (build_index, or Global.mode=build_index) and pass "
                                    "index=<folder or index>, or set `index` in the pipeline config")
                self.index = self.gallery.open(self._index_source)
            index = self.index
        elif not hasattr(index, "search"):  # a folder (faiss) or a collection name (milvus)
            index = self.gallery.open(os.fspath(index))
        index.check_model(self.model.model_name, self.model.embedding_size, self.fingerprint,
                          what="recognition model's")
        return index

    # ------------------------------------------------------------------ recognition
    def predict(self, input, index=None, det_threshold=None, rec_threshold=None, hamming_radius=None,
                rec_topk=None, keep_images=True, topk=None):
        """Yield a FaceRecognitionResult per input image (path, folder, URL, numpy BGR image or a
        list), PaddleX's call: settings left None come from the config. Faces of consecutive images
        are embedded together in batches of batch_size; with worker processes (see the class) they
        are read, detected and embedded there, and the results are the same, in the same order.
        hamming_radius is PaddleX's setting for binary features, which face models do not make;
        `topk` is an older name of rec_topk."""
        del hamming_radius
        topk = rec_topk if rec_topk is not None else topk
        index = self.resolve_index(index)
        items = input if is_expanded(input) else expand_inputs(input, videos=True)
        if any(item.video for item in items):
            yield from self._predict_with_videos(items, index, det_threshold, rec_threshold, topk, keep_images)
            return
        for queue, feats in self.embedded(items, det_threshold, keep_images):
            yield from self._search(queue, feats, index, rec_threshold, topk, keep_images)

    def embedded(self, items, det_threshold=None, keep_images=True, keep_crops=False):
        """Yield (queue of (item, image, [(Face, crop)]), their faces' features [N, D]) for expanded
        image inputs (engine.inference.inputs.expand_inputs), in input order, a block of images at
        a time: what predict searches and cluster groups. Crops are None unless keep_crops. Unreadable
        images in a folder are skipped and listed in self.failures; one named directly raises
        UserError after the block's earlier images are yielded."""
        self.failures = []
        threshold = self.det_threshold if det_threshold is None else float(det_threshold)
        pool = self._workers_for(len(items))
        stages = self._stages()
        size = self._block_size()
        blocks = [items[s:s + size] for s in range(0, len(items), size)]

        def task(block):
            return ([(item.input_path, item.array) for item in block], threshold, self.batch_size, keep_images,
                    keep_crops)

        if pool:
            answers = pool.ordered((("faces_embedded", task(block)) for block in blocks), self._blocks_ahead(pool))
        else:
            answers = (stages.faces_embedded(*task(block)) for block in blocks)
        with contextlib.closing(answers):  # stopped early: the blocks left at the workers are dropped
            for block, (outcomes, feats) in zip(blocks, answers):
                queue, faces = [], 0
                for item, outcome in zip(block, outcomes):
                    if isinstance(outcome, Refused):
                        if item.explicit:
                            if queue:  # what came before the error, as this process alone yields it
                                yield queue, feats[:faces]
                            raise UserError(outcome.message)
                        self.failures.append((item.input_path, outcome.message))  # one bad file in a folder: skip it
                        get_logger().warning(f"skipped {item.input_path}: {outcome.message}")
                        continue
                    queue.append((item, *outcome))
                    faces += len(outcome[1])
                if queue:
                    yield queue, feats

    def _stages(self):
        """This process's FaceStages: the same work, with the same answers, as a worker's."""
        return FaceStages(self.detector, self.model, self.margin, self.max_image_pixels)

    def _block_size(self):
        """Images per block (a worker's task): half a batch, so blocks are many enough to share
        out and each is embedded in about one forward pass (photos hold one or two faces)."""
        return max(1, self.batch_size // 2)

    def _blocks_ahead(self, pool):
        """Blocks handed out ahead of the one the pipeline waits for: enough to keep every worker
        busy, few enough to bound the memory (each image is held decoded until it is yielded)."""
        return TASKS_PER_WORKER * pool.workers + 1

    def _predict_with_videos(self, items, index, det_threshold, rec_threshold, topk, keep_images):
        """predict() over inputs with videos: images as predict() yields them, and per video one
        engine.recognition.video.VideoRecognitionResult (tracks and timeline; self.video's settings)."""
        failures = []
        for segment in segments(items):
            if isinstance(segment, list):
                yield from self.predict(segment, index=index, det_threshold=det_threshold,
                                        rec_threshold=rec_threshold, rec_topk=topk, keep_images=keep_images)
                failures.extend(self.failures)
                continue
            try:
                yield recognize_video(self, segment.input_path, index, self.video, name=segment.name, progress=False,
                                      det_threshold=det_threshold, rec_threshold=rec_threshold)
            except UserError as e:
                if segment.explicit:
                    raise
                failures.append((segment.input_path, str(e)))  # one bad video in a folder: skip it
                get_logger().warning(f"skipped {segment.input_path}: {e}")
        self.failures = failures

    # ------------------------------------------------------------------ clustering
    def cluster_settings(self, **overrides):
        """engine.clustering.book.ClusterSettings of the config's Cluster section with `overrides`
        (those left None keep the config's); the threshold defaults to rec_threshold plus
        Cluster.threshold_margin, at most 0.95."""
        section = dataclasses.replace(self.clustering, **{k: v for k, v in overrides.items() if v is not None})
        return ClusterSettings.from_config(section, self.cluster_threshold(section)[0])

    def cluster_threshold(self, section=None):
        """(the cosine at which faces join when clustering, where it came from)."""
        section = section or self.clustering
        if section.threshold is not None:
            return float(section.threshold), "Cluster.threshold"
        value = min(0.95, self.rec_threshold + section.threshold_margin)
        return value, (f"rec_threshold {self.rec_threshold:.3f} ({self.rec_threshold_source}) + Cluster.threshold_margin "
                       f"{section.threshold_margin:g}")

    def cluster(self, input=None, output=None, threshold=None, method=None, seed=None, names=None, merge=(),
                split=(), move=None, det_threshold=None, progress=True):
        """Group every face of `input` (image, folder read recursively, URL, numpy image or a list)
        by person: an engine.clustering.book.ClusterBook (`faces`: source, box, det_score, cluster;
        cluster ids per face, -1 unsorted). With `output` (a folder), the clusters are saved there
        with crops, a folder and a contact sheet per cluster, an overview picture and a CSV; a later
        call with the same folder adds new photos to those clusters, keeping their ids and names.
        names / merge / split / move edit the clusters as the Cluster config keys of those names do."""
        settings = self.cluster_settings(threshold=threshold, method=method, seed=seed)
        folder = os.fspath(output) if output is not None else None
        book = cluster_photos(self, input, folder=folder, settings=settings, det_threshold=det_threshold,
                              progress=progress, save=False)
        for line in edit_book(book, settings, names=names, merge=merge, split=split, move=move):
            get_logger().info(f"cluster: {line}")
        if folder:
            save_book(book, folder)
        return book

    def recognize_image(self, img_bgr, index=None, det_threshold=None, rec_threshold=None, rec_topk=None, name="image"):
        """One decoded image's FaceRecognitionResult (what the service calls per request)."""
        found = self.faces_of(img_bgr, det_threshold)
        feats = self.embed([c for _, c in found])
        return next(self._search([(_Named(name), img_bgr, found)], feats, self.resolve_index(index), rec_threshold,
                                 rec_topk))

    def _search(self, queue, feats, index, rec_threshold, topk, keep_images=True):
        """The results of a queue of (item, img, [(Face, crop)]) whose faces' features are `feats`."""
        threshold = self.rec_threshold if rec_threshold is None else float(rec_threshold)
        k_max = self.rec_topk if topk is None else max(1, int(topk))
        labels, scores, ids = index.search(feats, k_max) if len(feats) else ([], [], [])
        k = 0
        for item, img, found in queue:
            boxes = []
            for face, _ in found:
                decided, best = apply_threshold(labels[k], scores[k], threshold)
                matched = best is not None and best >= threshold  # PaddleX: None unless the nearest matches
                entry = {
                    "labels": list(labels[k]) if matched else None,
                    "rec_scores": [round(float(v), 4) for v in scores[k]] if matched else None,
                    "det_score": round(float(face.score), 4),
                    "coordinate": [round(float(v), 2) for v in face.box],
                    "label": decided,
                    "score": None if best is None else round(best, 4),
                    "ids": [int(v) for v in ids[k]] if matched else None,
                }
                if face.landmarks is not None:
                    entry["landmarks"] = face.to_dict()["landmarks"]
                boxes.append(entry)
                k += 1
            yield FaceRecognitionResult(item.input_path, boxes, item.name, img if keep_images else None)


class _Named:
    """The two fields of an InputItem that _search reads, for an image decoded elsewhere."""

    def __init__(self, name):
        self.input_path, self.name = None, name


def read_id_list(path):
    """PaddleX's remove list: one id per line (the first field of the line); UserError naming the line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"remove id list {path} does not exist: give a file with one id per line, or a list of ids")
    ids = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                ids.append(int(text.split()[0]))
            except ValueError:
                raise UserError(f"{path}:{lineno}: '{text}' does not start with an integer id; fix or remove the line") \
                    from None
    return ids


def create_pipeline(pipeline="face_recognition", device=None, config=None, use_hpip=None, hpi_config=None,
                    pp_option=None):
    """PaddleX's create_pipeline: "face_recognition" (the bundled configs/face_recognition/pipeline.yaml)
    or the path of a pipeline YAML. `device` overrides Global.device; `config` is applied on top: a
    dict of 'Key.sub' -> value (e.g. {"SubModules.Recognition.model_dir": "..."}) or, as PaddleX
    takes it, nested ({"SubModules": {"Recognition": {"model_dir": "..."}}});
    use_hpip / hpi_config (PaddleX's high-performance inference, its keys or ours) apply to the
    feature model, and so does pp_option (PaddleX's PaddlePredictorOption: run_mode, cpu_threads,
    device)."""
    path = pipeline_config_path(pipeline)
    overrides = {}
    for key, value in pp_option_settings(pp_option).items():
        overrides[{"run_mode": "SubModules.Recognition.run_mode", "num_threads": "Global.num_threads",
                   "device": "Global.device"}[key]] = value
    overrides.update(_dotted(config or {}))
    if use_hpip is not None:
        overrides["SubModules.Recognition.use_hpip"] = bool(use_hpip)
    for key, value in translate_hpi_config(hpi_config).items():
        overrides[f"SubModules.Recognition.hpi_config.{key}"] = value
    settings = [f"{k}={_override_text(v)}" for k, v in overrides.items()]
    if device is not None:
        settings.append(f"Global.device={device}")
    return FaceRecognitionPipeline.from_config(load_config(path, settings))


def _dotted(config, prefix=""):
    """{'A.b': value} of a config dict, nested mappings flattened into dotted keys."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_dotted(value, name + "."))
        else:
            out[name] = value
    return out


def _override_text(value):
    """A Python value as the text of an -o override (YAML reads it back as the same value)."""
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
