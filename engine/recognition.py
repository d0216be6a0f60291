"""The face recognition pipeline: detect faces, align, embed, and search a gallery index.

    from engine.recognition import RecognitionPipeline
    pipe = RecognitionPipeline(model_dir="output/best_model/inference", det={"enable": True})
    pipe.build_index("gallery/", index_dir="output/gallery_index")   # one folder per person
    pipe.append("more_people/")                                       # then pipe.save_index()
    pipe.remove(labels=["bob"])
    for res in pipe.recognize("photos/"):
        print(res["input_path"], [(f["label"], f["score"]) for f in res["faces"]])
        res.save_to_json("output/recognition"); res.save_to_img("output/recognition")

Per image: {"input_path", "faces": [{"box", "det_score", "labels", "scores", "label", "score"}]}
where labels/scores are the top-k gallery matches (cosine, best first) and `label` is the top-1
decision: the gallery label, or "unknown" when its cosine is below rec_threshold (or the gallery
is empty). An image without a face gives an empty face list.

Every face, gallery and query, is aligned by models.alignment.face_chip (5 landmarks onto the
112x112 template; a square crop with Det.margin for a face without landmarks).
Gallery images: each contributes its main face (models.alignment.main_face: highest detection
score, then largest, then closest to the centre);
an unreadable image or one without a face is reported, skipped and counted.

Shared by the build_index / append_index / remove_index and recognize modes and the Python API.
"""
import os

import numpy as np

from datasets.transforms import ImageReadError, read_image
from engine.gallery_index import GalleryIndex, apply_threshold, list_gallery, set_search_threads
from engine.inference_folder import recorded_threshold
from engine.inference_model import InferenceModel
from engine.metrics import l2_normalize
from engine.model_inputs import expand_inputs, is_expanded, load_item
from engine.official_models import feature_model_dir
from engine.results import RecognitionResult
from foundation.atomic_io import file_digest
from foundation.errors import UserError
from foundation.logger import get_logger
from foundation.progress import Progress
from foundation.runtime import num_threads_from, set_threads
from models.alignment import face_chip, main_face
from models.face_detector import build_detector

DEFAULT_REC_THRESHOLD = 0.4  # the reference's value, when the model folder records none


def gallery_items(gallery, label_file=None):
    """[(abs path, label)] of a gallery folder (one sub-folder per person), a '<path> <label>' list
    file, or a list of (path, label) pairs; UserError when it holds no image."""
    if isinstance(gallery, (list, tuple)):
        return [(os.path.abspath(str(p)), str(lbl)) for p, lbl in gallery]
    items = list_gallery(gallery, label_file)
    if not items:
        where = label_file or gallery
        raise UserError(f"the gallery {where} holds no images: put one folder of face images per person "
                        f"(the folder name is the label) or list '<path> <label>' lines in Index.label_file")
    return items


class RecognitionPipeline:
    """Detector + feature model + gallery index. Every argument has the config's default."""

    def __init__(self, model_dir, index_dir=None, det=None, device="cpu", num_threads=2, batch_size=16,
                 run_mode="paddle", top_k=5, rec_threshold=None, index_type="Flat", nprobe=32):
        threads = num_threads_from(num_threads)
        set_threads(threads)
        set_search_threads(threads)
        det = dict(det or {})
        self.margin = float(det.pop("margin", 0.2))
        self.detector = build_detector(num_threads=threads, **det)
        self.model = InferenceModel(model_dir, device=device, num_threads=threads, run_mode=run_mode)
        self.fingerprint = file_digest(self.model.params_file)  # different weights never share an index
        self.batch_size = max(1, int(batch_size))
        self.top_k = int(top_k)
        self.rec_threshold, self.rec_threshold_source = self._threshold(rec_threshold)
        self.index_type = index_type
        self.nprobe = int(nprobe)
        self.index_dir = index_dir
        self.index = None
        self.failures = []  # (input path, message) of images recognize() skipped
        self.missing_ids = []  # ids the last remove() was asked for that the index does not hold
        if index_dir is not None and os.path.isdir(index_dir):
            self.load_index(index_dir)

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
    def from_config(cls, cfg, load_index=True, index=None):
        """The pipeline of a pipeline config; with `index` (a GalleryIndex loaded already) it is
        checked against the model and used, instead of reading Index.dir again."""
        det = {
            "enable": cfg.Det.enable,
            "type": cfg.Det.type,
            "model_dir": cfg.Det.model_dir,  # Det.type paddle only
            "threshold": cfg.Det.threshold,
            "min_size": cfg.Det.min_size,
            "margin": cfg.Det.margin,
        }
        model_dir = feature_model_dir(cfg.Rec.model_dir, cfg.Global.model, "Rec.model_dir")
        pipe = cls(model_dir, None, det, device=cfg.Global.device,
                   num_threads=cfg.Global.num_threads, batch_size=cfg.Rec.batch_size,
                   run_mode=cfg.Rec.run_mode, top_k=cfg.Index.top_k,
                   rec_threshold=cfg.Index.rec_threshold, index_type=cfg.Index.index_type,
                   nprobe=cfg.Index.nprobe)
        pipe.index_dir = cfg.Index.dir
        if index is not None:
            pipe.use_index(index, pipe.index_dir)
        elif load_index:
            pipe.load_index(pipe.index_dir)
        return pipe

    # ------------------------------------------------------------------ embedding
    def embed(self, crops):
        """L2-normalised features [N, D] of BGR face crops, in batches of batch_size."""
        out = np.zeros((len(crops), self.model.embedding_size), dtype=np.float32)
        for s in range(0, len(crops), self.batch_size):
            batch = np.stack([self.model.preprocess(c) for c in crops[s:s + self.batch_size]])
            feats = self.model.predict(batch)
            out[s:s + len(batch)] = l2_normalize(feats)
        return out

    def faces_of(self, img_bgr):
        """[(Face, aligned 112x112 crop)] for every detected face, best first."""
        return [(f, face_chip(img_bgr, f, self.margin)) for f in self.detector.detect(img_bgr)]

    # ------------------------------------------------------------------ gallery
    def _new_index(self):
        return GalleryIndex(self.model.embedding_size, self.model.model_name, self.index_type, self.nprobe,
                            model_fingerprint=self.fingerprint)

    def _enroll(self, items, desc):
        """Embed the main face of each (path, label); returns (features, labels, paths, skipped)."""
        log = get_logger()
        feats, labels, paths, skipped = [], [], [], []
        pending = []  # (crop, label, path) waiting for a full batch

        def flush():
            if pending:
                feats.append(self.embed([c for c, _, _ in pending]))
                labels.extend(lbl for _, lbl, _ in pending)
                paths.extend(p for _, _, p in pending)
                pending.clear()

        with Progress(len(items), desc=desc, unit="img") as bar:
            for path, label in items:
                try:
                    img = read_image(path)
                except ImageReadError as e:
                    skipped.append((path, str(e)))
                    log.warning(f"skipped gallery image {path}: {e}")
                    bar.update(1)
                    continue
                found = self.faces_of(img)
                if not found:
                    skipped.append((path, "no face detected"))
                    log.warning(f"skipped gallery image {path}: no face detected")
                else:
                    face = main_face([f for f, _ in found], img.shape)
                    crop = next(c for f, c in found if f is face)
                    pending.append((crop, label, path))
                    if len(pending) >= self.batch_size:
                        flush()
                bar.update(1)
        flush()
        features = np.concatenate(feats) if feats else np.zeros((0, self.model.embedding_size), np.float32)
        return features, labels, paths, skipped

    def build_index(self, gallery, label_file=None, index_dir=None, save=True):
        """A new index from a gallery folder (or a `path label` list, or [(path, label)]), replacing
        any previous one; returns a summary dict. Raises UserError when no face could be enrolled."""
        items = gallery_items(gallery, label_file)
        feats, labels, paths, skipped = self._enroll(items, "build index")
        if len(feats) == 0:
            raise UserError(f"no face found in any of the {len(items)} gallery images ({len(skipped)} skipped, "
                            f"e.g. {skipped[0][0]}: {skipped[0][1]}); nothing written. For face crops set "
                            f"-o Det.enable=False")
        index = self._new_index()
        index.add(feats, labels, paths)
        self.index = index
        if save:
            self.save_index(index_dir)
        return self._summary(len(items), len(feats), skipped)

    def append(self, gallery, label_file=None, index_dir=None, save=True):
        """Add a gallery's faces to the current index (built or loaded first)."""
        if self.index is None:
            raise UserError("no gallery index to append to: build_index first or load one")
        items = gallery_items(gallery, label_file)
        feats, labels, paths, skipped = self._enroll(items, "append to index")
        self.index.add(feats, labels, paths)
        if save and len(feats):
            self.save_index(index_dir)
        return self._summary(len(items), len(feats), skipped)

    def remove(self, labels=(), ids=(), index_dir=None, save=True):
        """Remove every face of `labels` and the faces with `ids`; returns how many were removed."""
        if self.index is None:
            raise UserError("no gallery index to remove from: build_index first or load one")
        removed = 0
        for label in labels:
            n = self.index.remove_label(label)
            if n == 0:
                get_logger().warning(f"label '{label}' is not in the gallery index")
            removed += n
        self.missing_ids = sorted({int(i) for i in ids} - set(self.index.entries))
        if self.missing_ids:
            get_logger().warning(f"ids not in the gallery index (nothing to remove for them): "
                                 f"{', '.join(map(str, self.missing_ids[:20]))}{' ...' if len(self.missing_ids) > 20 else ''}")
        removed += self.index.remove_ids(ids)
        if save and removed:
            self.save_index(index_dir)
        return removed

    def _summary(self, total, enrolled, skipped):
        return {"images": total, "enrolled": enrolled, "skipped": len(skipped), "skipped_images": skipped,
                "index_size": len(self.index) if self.index is not None else 0,
                "labels": len(self.index.labels) if self.index is not None else 0}

    def save_index(self, index_dir=None):
        index_dir = index_dir or self.index_dir
        if not index_dir:
            raise UserError("no index folder given: set Index.dir (or pass index_dir=)")
        self.index.save(index_dir)
        self.index_dir = index_dir
        return index_dir

    def load_index(self, index_dir):
        """Load a saved index; refuse one built by another model."""
        return self.use_index(GalleryIndex.load(index_dir, nprobe=self.nprobe), index_dir)

    def use_index(self, index, index_dir=None):
        """Search `index` from now on; refuse one built by another model."""
        index.check_model(self.model.model_name, self.model.embedding_size, self.fingerprint, what="recognition model's")
        index.nprobe = self.nprobe
        self.index, self.index_dir = index, index_dir
        return index

    # ------------------------------------------------------------------ recognition
    def recognize(self, inputs, keep_images=True):
        """Yield a RecognitionResult per input image (path, folder, numpy BGR image or a list).
        Faces of consecutive images are embedded together in batches of batch_size."""
        if self.index is None:
            raise UserError("no gallery index loaded: build one (Global.mode=build_index) or load Index.dir")
        items = inputs if is_expanded(inputs) else expand_inputs(inputs)
        queue = []  # (item, img, faces, crops) not yet embedded

        def drain():
            crops = [c for _, _, _, cs in queue for c in cs]
            feats = self.embed(crops) if crops else np.zeros((0, self.model.embedding_size), np.float32)
            labels, scores, ids = self.index.search(feats, self.top_k) if len(feats) else ([], [], [])
            k = 0
            for item, img, faces, _ in queue:
                entries = []
                for face in faces:
                    label, best = apply_threshold(labels[k], scores[k], self.rec_threshold)
                    entry = face.to_dict()
                    entry.update({"labels": list(labels[k]), "scores": [round(float(s), 4) for s in scores[k]],
                                  "ids": [int(i) for i in ids[k]],
                                  "label": label, "score": None if best is None else round(best, 4)})
                    entries.append(entry)
                    k += 1
                yield RecognitionResult(item.input_path, entries, item.name, img if keep_images else None)
            queue.clear()

        pending_crops = 0
        self.failures = []
        for item in items:
            try:
                img = load_item(item)
            except UserError as e:
                if item.explicit:
                    raise
                self.failures.append((item.input_path, str(e)))  # one bad file in a folder: skip it
                get_logger().warning(f"skipped {item.input_path}: {e}")
                continue
            found = self.faces_of(img)
            queue.append((item, img, [f for f, _ in found], [c for _, c in found]))
            pending_crops += len(found)
            if pending_crops >= self.batch_size or len(queue) >= self.batch_size:  # bounded memory
                yield from drain()
                pending_crops = 0
        yield from drain()
