"""Face detectors for the recognition pipeline, predict/evaluate with detection, and the aligned importer.

    detector = build_detector(type="yunet")            # or type="paddle", model_dir=...
    faces = detector.detect(img_bgr)                   # [Face(box, score, landmarks), ...], best first
    chip = face_chip(img_bgr, faces[0], margin=0.2)    # models.alignment: 112x112, aligned
    chip, faces = MainFaceCropper().crop(img_bgr)      # the main face of a raw photo, aligned

Default detector: YuNet (models/weights/face_detection_yunet_2026may.onnx, MIT, from the OpenCV
Zoo; see the README beside it), run by OpenCV's own cv2.FaceDetectorYN, so it needs neither a
download nor another runtime. Its file is checked against YUNET_SHA256 when loaded. YuNet gives
a box, a score in [0, 1] and 5 landmarks per face.

Det.type paddle runs an exported PaddleDetection/PaddleX face detector (BlazeFace, PicoDet, ...),
which gives boxes only; the landmarks then come from YuNet run on each box's region, enlarged a
little, so those faces are aligned as well.

Landmark order: YuNet lists the subject's right eye, left eye, nose tip, right and left mouth
corners. For a photo (not a mirror image) the subject's right side is on the image's left, so this
is already the template's image order (image-left eye first): YUNET_TO_TEMPLATE is the identity,
kept explicit, and tests/test_face_detection.py checks it on real photos.
"""
import hashlib
import os
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np
import paddle.inference as pi
import yaml

from foundation.errors import UserError
from foundation.logger import get_logger
from models.alignment import face_chip, main_face

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
YUNET_FILE = os.path.join(WEIGHTS_DIR, "face_detection_yunet_2026may.onnx")
YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"
# YuNet row: x, y, w, h, then (x, y) of right eye, left eye, nose, right and left mouth corner
# (the subject's sides), then the score. Index i of the template takes YuNet landmark YUNET_TO_TEMPLATE[i].
YUNET_TO_TEMPLATE = (0, 1, 2, 3, 4)

_verified = set()
_verified_lock = threading.Lock()


@dataclass
class Face:
    box: list  # [x1, y1, x2, y2] in image pixels (floats)
    score: float
    landmarks: np.ndarray = None  # [5, 2] (x, y) image pixels in template order, or None (no landmarks)
    extra: dict = field(default_factory=dict)

    def to_dict(self):
        out = {"box": [round(float(v), 2) for v in self.box], "det_score": round(float(self.score), 4)}
        if self.landmarks is not None:
            out["landmarks"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]
        return out


def check_weights(path, sha256):
    """Refuse a model file whose sha256 is not the expected one (a one-line UserError naming it)."""
    key = (os.path.abspath(path), sha256)
    with _verified_lock:
        if key in _verified:
            return path
    if not os.path.isfile(path):
        raise UserError(f"face detector weights {path} are missing: reinstall the package (they ship with it)")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != sha256:
        raise UserError(f"face detector weights {path} have sha256 {digest[:16]}..., expected {sha256[:16]}...: "
                        f"the file is damaged or replaced; restore it from the repository or reinstall")
    with _verified_lock:
        _verified.add(key)
    return path


# ---------------------------------------------------------------------------------------------
# Detectors
# ---------------------------------------------------------------------------------------------
class FaceDetector:
    """Interface: detect(img_bgr) -> list[Face], best first."""

    def detect(self, img_bgr):
        raise NotImplementedError


class WholeImageDetector(FaceDetector):
    """Det.enable False: the image already is a face crop."""

    def detect(self, img_bgr):
        h, w = img_bgr.shape[:2]
        return [Face([0.0, 0.0, float(w), float(h)], 1.0, None, {"whole_image": True})]


def _bgr(img):
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img


class YuNetDetector(FaceDetector):
    """YuNet through cv2.FaceDetectorYN: boxes, scores and 5 landmarks.

    Images larger than `max_side` are searched at a reduced size (results in original pixels).
    One instance is not safe to share between threads (OpenCV keeps the input size in it):
    MainFaceCropper keeps one per thread.
    """

    def __init__(self, threshold=0.6, min_size=24, nms_threshold=0.3, top_k=5000, max_side=640, model_path=None,
                 sha256=YUNET_SHA256):
        self.model_path = check_weights(model_path or YUNET_FILE, sha256)
        self.threshold = float(threshold)
        self.min_size = int(min_size)
        self.max_side = int(max_side) if max_side else 0
        self._size = (320, 320)
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # a harmless backend notice
        try:
            self.net = cv2.FaceDetectorYN.create(self.model_path, "", self._size, self.threshold,
                                                 float(nms_threshold), int(top_k))
        finally:
            cv2.utils.logging.setLogLevel(level)

    def detect(self, img_bgr):
        img = _bgr(img_bgr)
        h, w = img.shape[:2]
        scale = 1.0
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / float(max(h, w))
            img = cv2.resize(img, (max(1, int(round(w * scale))), max(1, int(round(h * scale)))),
                             interpolation=cv2.INTER_AREA)
        size = (img.shape[1], img.shape[0])
        if size != self._size:
            self.net.setInputSize(size)
            self._size = size
        _, rows = self.net.detect(np.ascontiguousarray(img))
        faces = []
        for row in ([] if rows is None else rows):
            x, y, bw, bh = (float(v) / scale for v in row[:4])
            if min(bw, bh) < self.min_size:
                continue
            points = (np.asarray(row[4:14], np.float32).reshape(5, 2) / scale)[list(YUNET_TO_TEMPLATE)]
            box = [max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)]
            faces.append(Face(box, float(row[14]), points))
        faces.sort(key=lambda f: -f.score)
        return faces

    def landmarks_in(self, img_bgr, box, expand=0.25):
        """5 landmarks of the face inside `box` (found by another detector), or None: YuNet runs on
        the box enlarged by `expand` of its side on every side and the face closest to the box centre
        is taken."""
        h, w = img_bgr.shape[:2]
        x1, y1, x2, y2 = [float(v) for v in box]
        dx, dy = (x2 - x1) * expand, (y2 - y1) * expand
        ox, oy = int(max(0, np.floor(x1 - dx))), int(max(0, np.floor(y1 - dy)))
        ex, ey = int(min(w, np.ceil(x2 + dx))), int(min(h, np.ceil(y2 + dy)))
        if ex - ox < 8 or ey - oy < 8:
            return None
        found = self.detect(img_bgr[oy:ey, ox:ex])
        if not found:
            return None
        cx, cy = (x1 + x2) / 2 - ox, (y1 + y2) / 2 - oy
        best = min(found, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2 + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)
        return best.landmarks + np.array([ox, oy], np.float32)


class PaddleFaceDetector(FaceDetector):
    """A PaddleDetection / PaddleX face detection inference model (BlazeFace, PicoDet, ...).

    The folder holds inference.json or inference.pdmodel, inference.pdiparams and inference.yml.
    Pre-processing follows inference.yml (resize target, mean/std, is_scale) when present. The model
    output is the usual detection tensor [N, 6] = [class, score, x1, y1, x2, y2] in input-image pixels
    (the exporter feeds im_shape and scale_factor so boxes come back in original pixels).
    Such models give no landmarks: with `landmarks`, YuNet finds them inside each box (a face
    where YuNet sees none keeps landmarks None and is cut as a square crop).
    """

    def __init__(self, model_dir, threshold=0.6, min_size=0, num_threads=2, landmarks=True):
        self.model_dir = model_dir
        self.threshold = float(threshold)
        self.min_size = int(min_size)
        if not model_dir or not os.path.isdir(model_dir):
            raise UserError(f"Det.model_dir '{model_dir}' is not a folder with a Paddle detection inference model")
        names = os.listdir(model_dir)
        model_file = next((os.path.join(model_dir, n) for n in ("inference.json", "inference.pdmodel") if n in names),
                          None)
        params_file = os.path.join(model_dir, "inference.pdiparams")
        if model_file is None or not os.path.isfile(params_file):
            raise UserError(
                f"Det.model_dir '{model_dir}' has no inference.json/inference.pdmodel + inference.pdiparams: "
                f"export the detector with PaddleDetection/PaddleX first"
            )
        self.target_size, self.mean, self.std, self.is_scale, self.keep_ratio = (640, 640), None, None, True, False
        self._read_yml(os.path.join(model_dir, "inference.yml"))
        config = pi.Config(model_file, params_file)
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(int(num_threads))
        config.disable_glog_info()
        self.predictor = pi.create_predictor(config)
        self.input_names = self.predictor.get_input_names()
        # a low threshold: the box is a face already, YuNet only has to place the points
        self.landmarker = YuNetDetector(threshold=0.3, min_size=1) if landmarks else None
        get_logger().info(f"face detector: {model_file} inputs {self.input_names}")

    def _read_yml(self, path):
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as f:
            info = yaml.safe_load(f) or {}
        ops = info.get("Preprocess") or (info.get("PreProcess") or {}).get("transform_ops") or []
        for op in ops:
            if not isinstance(op, dict):
                continue
            kind = str(op.get("type", next(iter(op), ""))).lower()
            args = op if "type" in op else (op.get(next(iter(op))) or {})
            if "resize" in kind:
                size = args.get("target_size") or args.get("size")
                if size:
                    size = [size, size] if isinstance(size, int) else list(size)
                    self.target_size = (int(size[0]), int(size[1]))  # (h, w)
                self.keep_ratio = bool(args.get("keep_ratio", False))
            elif "normalize" in kind:
                self.mean = np.asarray(args.get("mean", [0, 0, 0]), np.float32)
                self.std = np.asarray(args.get("std", [1, 1, 1]), np.float32)
                self.is_scale = bool(args.get("is_scale", True))

    def detect(self, img_bgr):
        h, w = img_bgr.shape[:2]
        th, tw = self.target_size
        sy, sx = th / h, tw / w
        img = cv2.resize(img_bgr, (tw, th), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].astype(np.float32)
        if self.is_scale:
            img /= 255.0
        if self.mean is not None:
            img = (img - self.mean) / self.std
        feeds = {
            "image": img.transpose(2, 0, 1)[None].copy(),
            "im_shape": np.array([[th, tw]], np.float32),
            "scale_factor": np.array([[sy, sx]], np.float32),
        }
        for name in self.input_names:
            if name not in feeds:
                raise UserError(f"detection model in {self.model_dir} wants an input '{name}' this adapter cannot feed")
            self.predictor.get_input_handle(name).copy_from_cpu(feeds[name])
        self.predictor.run()
        out = self.predictor.get_output_handle(self.predictor.get_output_names()[0]).copy_to_cpu()
        out = np.asarray(out, dtype=np.float32).reshape(-1, 6)
        faces = []
        for _cls, score, x1, y1, x2, y2 in out:
            if score < self.threshold:
                continue
            x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
            if min(x2 - x1, y2 - y1) < max(1, self.min_size):
                continue
            points = self.landmarker.landmarks_in(img_bgr, [x1, y1, x2, y2]) if self.landmarker else None
            faces.append(Face([x1, y1, x2, y2], float(score), points))
        faces.sort(key=lambda f: -f.score)
        return faces


DETECTOR_TYPES = ("yunet", "paddle")


def build_detector(enable=True, type="yunet", model_dir=None, threshold=0.6, min_size=24, num_threads=2):
    """The detector chosen by the Det section of the pipeline config."""
    if not enable:
        return WholeImageDetector()
    kind = str(type or "yunet").lower()
    if kind == "yunet":
        return YuNetDetector(threshold=threshold, min_size=min_size)
    if kind == "paddle":
        return PaddleFaceDetector(model_dir, threshold=threshold, min_size=min_size, num_threads=num_threads)
    raise UserError(f"Det.type '{type}' is not one of {', '.join(DETECTOR_TYPES)}")


class MainFaceCropper:
    """Detect the faces of raw photos and return the main one aligned (models.alignment.main_face:
    the largest box nearest the centre). Safe to call from several threads:
    each thread builds its own detector with the same settings.

        cropper = MainFaceCropper(type="yunet", threshold=0.6)
        chip, faces = cropper.crop(img_bgr)         # chip None when faces == []
        chip, face, faces = cropper.main(img_bgr)   # with the main Face itself
    """

    def __init__(self, margin=0.2, size=112, **det):
        self.margin = float(margin)
        self.size = int(size)
        self.det = dict(det)
        self._local = threading.local()
        self.detector()  # fail now (missing or damaged weights, bad Det.model_dir), not in a worker thread

    def detector(self):
        d = getattr(self._local, "detector", None)
        if d is None:
            d = self._local.detector = build_detector(**self.det)
        return d

    def main(self, img_bgr):
        """(aligned size x size BGR chip of the main face, that Face, every detected face); the
        first two are None when there is no face."""
        faces = self.detector().detect(img_bgr)
        face = main_face(faces, img_bgr.shape)
        if face is None:
            return None, None, faces
        return face_chip(img_bgr, face, self.margin, self.size), face, faces

    def crop(self, img_bgr):
        """(aligned chip of the main face or None, every detected face)."""
        chip, _, faces = self.main(img_bgr)
        return chip, faces
