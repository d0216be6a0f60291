"""Face detection and alignment for the recognition pipeline.

    detector = build_detector(type="haar")            # or type="paddle", model_dir=...
    faces = detector.detect(img_bgr)                   # [Face(box, score, eyes), ...]
    crop = align_face(img_bgr, faces[0], margin=0.2)   # 112x112 BGR, ready for preprocess()

Default detector (no download): OpenCV Haar cascades. OpenCV 4.x wheels ship the cascade files
under cv2.data and the CascadeClassifier that runs them; OpenCV 5.x ships neither (the cascade
detector left the main modules). So the cascades Lienhart's frontal-face (alt2) and the eye
detector travel with this package (models/cascades/*.xml.gz, Intel open-source licence kept in
each file), and HaarCascade runs them with numpy on the integral image. It uses OpenCV's own
CascadeClassifier when the installed cv2 has one, since that is faster and gives the same boxes.

Haar detectors give no probability. det_score is n / (n + 3) where n is the number of raw
detections merged into the box (OpenCV's "neighbours"): 3 neighbours (OpenCV's default acceptance)
give 0.5, the often-recommended 5 give 0.625, 12 give 0.8; Det.threshold 0.6 thus asks for 5.

Alignment: with two eye centres a similarity transform maps them to the eye points of the standard
112x112 ArcFace template; with five landmarks all five are used; without landmarks the box is cut
with a margin and resized (aspect kept by padding the box to a square first).
"""
import gzip
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import cv2
import numpy as np
import paddle.inference as pi
import yaml

from foundation.errors import UserError
from foundation.logger import get_logger

CASCADE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cascades")
DEFAULT_FACE_CASCADE = "haarcascade_frontalface_alt2.xml"
DEFAULT_EYE_CASCADE = "haarcascade_eye.xml"

# The 5-point ArcFace template for 112x112 crops: left eye, right eye, nose tip, left and right
# mouth corners (image left/right, i.e. the subject's right eye comes first).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


@dataclass
class Face:
    box: list  # [x1, y1, x2, y2] in image pixels (floats)
    score: float
    landmarks: np.ndarray = None  # [K, 2] (K = 2 eyes or 5 points), image pixels, template order
    extra: dict = field(default_factory=dict)

    def to_dict(self):
        out = {"box": [round(float(v), 2) for v in self.box], "det_score": round(float(self.score), 4)}
        if self.landmarks is not None:
            out["landmarks"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]
        return out


# ---------------------------------------------------------------------------------------------
# Haar cascades evaluated with numpy
# ---------------------------------------------------------------------------------------------
def _open_cascade_text(path):
    if not os.path.isfile(path):
        raise UserError(f"cascade file '{path}' does not exist (Det.model_dir for type haar names a cascade .xml)")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def _numbers(text):
    return [float(t) for t in (text or "").split()]


class CascadeModel:
    """An OpenCV boosted Haar cascade (the XML format written by opencv_traincascade), as arrays.

    Every tree node of every weak classifier is one row of node_* arrays; a child reference >= 0 is
    a node row, < 0 is leaf row (-ref - 1) of `leaves`.
    """

    def __init__(self, path):
        self.path = path
        try:
            root = ET.fromstring(_open_cascade_text(path))
        except ET.ParseError as e:
            raise UserError(f"cascade file '{path}' is not valid XML: {e}")
        cascade = root.find("cascade")
        if cascade is None or (cascade.findtext("featureType") or "").strip().upper() != "HAAR":
            raise UserError(f"'{path}' is not an OpenCV Haar cascade in the new format (<cascade> with HAAR features)")
        self.win_w = int(cascade.findtext("width"))
        self.win_h = int(cascade.findtext("height"))
        rects, weights = [], []
        for feat in cascade.find("features"):
            if (feat.findtext("tilted") or "0").strip() not in ("0", ""):
                raise UserError(f"'{path}' uses tilted Haar features, which this detector does not evaluate")
            rs = [_numbers(r.text) for r in feat.find("rects")]
            rs = (rs + [[0, 0, 0, 0, 0.0]] * 3)[:3]
            rects.append([r[:4] for r in rs])
            weights.append([r[4] for r in rs])
        self.rects = np.asarray(rects, dtype=np.int64)  # [F, 3, (x, y, w, h)]
        self.weights = np.asarray(weights, dtype=np.float64)  # [F, 3]
        node_left, node_right, node_feat, node_thr, leaves = [], [], [], [], []
        self.stages = []  # (root node rows [W], stage threshold)
        for stage in cascade.find("stages"):
            roots = []
            for weak in stage.find("weakClassifiers"):
                nodes = _numbers(weak.findtext("internalNodes"))
                leaf_vals = _numbers(weak.findtext("leafValues"))
                node_base, leaf_base = len(node_feat), len(leaves)
                for j in range(0, len(nodes), 4):
                    left, right, fidx, thr = int(nodes[j]), int(nodes[j + 1]), int(nodes[j + 2]), nodes[j + 3]

                    def ref(c):  # c > 0: node c of this tree; c <= 0: leaf -c
                        return node_base + c if c > 0 else -(leaf_base + (-c)) - 1

                    node_left.append(ref(left))
                    node_right.append(ref(right))
                    node_feat.append(fidx)
                    node_thr.append(thr)
                leaves.extend(leaf_vals)
                roots.append(node_base)
            self.stages.append((np.asarray(roots, dtype=np.int64), float(stage.findtext("stageThreshold"))))
        self.node_left = np.asarray(node_left, dtype=np.int64)
        self.node_right = np.asarray(node_right, dtype=np.int64)
        self.node_feat = np.asarray(node_feat, dtype=np.int64)
        self.node_thr = np.asarray(node_thr, dtype=np.float64)
        self.leaves = np.asarray(leaves, dtype=np.float64)

    def _stage_features(self):
        """Per stage, the distinct features its nodes use (computed once per window per stage)."""
        if not hasattr(self, "_stage_feats"):
            self._stage_feats = []
            for roots, _ in self.stages:
                nodes, frontier = set(), list(roots.tolist())
                while frontier:
                    n = frontier.pop()
                    nodes.add(n)
                    frontier += [c for c in (self.node_left[n], self.node_right[n]) if c >= 0]
                self._stage_feats.append(np.unique(self.node_feat[sorted(nodes)]))
        return self._stage_feats

    def evaluate(self, gray, step):
        """Windows (x, y) of a grey uint8 image that pass every stage, at the cascade's native size.

        Early stages see most windows, so their features are computed densely for the whole window
        grid with array slices of the integral image; once few windows survive, the remaining stages
        gather only those windows' rectangle corners.
        """
        h, w = gray.shape
        if h < self.win_h or w < self.win_w:
            return np.zeros((0, 2), dtype=np.int64)
        isum, isq = cv2.integral2(gray, sdepth=cv2.CV_32S, sqdepth=cv2.CV_64F)
        isum = isum.astype(np.float64)
        ny, nx = (h - self.win_h) // step + 1, (w - self.win_w) // step + 1
        grid = ny * nx

        def dense_box(x, y, bw, bh, integral=isum):
            """Sum of the box (x, y, bw, bh) relative to every grid window's origin -> [ny * nx]."""
            def sl(yy, xx):
                return integral[yy: yy + (ny - 1) * step + 1: step, xx: xx + (nx - 1) * step + 1: step]
            return (sl(y + bh, x + bw) - sl(y, x + bw) - sl(y + bh, x) + sl(y, x)).ravel()

        # Variance normalisation over the window inset by one pixel, as the cascades were trained.
        nw, nh = self.win_w - 2, self.win_h - 2
        area = float(nw * nh)
        s, sq = dense_box(1, 1, nw, nh), dense_box(1, 1, nw, nh, isq)
        nf = area * sq - s * s
        inv_norm = 1.0 / np.where(nf > 0, np.sqrt(np.maximum(nf, 0)), 1.0)

        stride = w + 1
        flat = isum.ravel()
        gy, gx = np.divmod(np.arange(grid), nx)
        origin_all = gy * step * stride + gx * step
        x, y, bw, bh = (self.rects[..., i] for i in range(4))
        corners = np.stack([y * stride + x, y * stride + x + bw, (y + bh) * stride + x,
                            (y + bh) * stride + x + bw], -1)  # [F, 3, 4]

        alive = np.arange(grid)
        for (roots, stage_thr), feats in zip(self.stages, self._stage_features()):
            if len(alive) == 0:
                break
            vals = np.empty((len(alive), len(feats)), dtype=np.float64)
            if len(alive) * 4 > grid:  # most windows still alive: whole-grid slices are cheaper
                for j, f in enumerate(feats):
                    v = np.zeros(grid, dtype=np.float64)
                    for r in range(3):
                        if self.weights[f, r] != 0:
                            v += self.weights[f, r] * dense_box(*self.rects[f, r])
                    vals[:, j] = v[alive]
            else:
                offs = origin_all[alive][:, None, None, None] + corners[feats][None]  # [A, Fs, 3, 4]
                sums = flat[offs[..., 0]] - flat[offs[..., 1]] - flat[offs[..., 2]] + flat[offs[..., 3]]
                vals = (sums * self.weights[feats][None]).sum(-1)
            vals *= inv_norm[alive][:, None]
            column = np.full(len(self.rects), -1, dtype=np.int64)
            column[feats] = np.arange(len(feats))
            rows = np.arange(len(alive))[:, None]
            cur = np.broadcast_to(roots, (len(alive), len(roots))).copy()  # node rows; < 0 once at a leaf
            while True:
                active = cur >= 0
                if not active.any():
                    break
                node = np.where(active, cur, 0)
                val = vals[rows, column[self.node_feat[node]]]
                nxt = np.where(val < self.node_thr[node], self.node_left[node], self.node_right[node])
                cur = np.where(active, nxt, cur)
            stage_sum = self.leaves[-cur - 1].sum(axis=1)
            alive = alive[stage_sum >= stage_thr]
        return np.stack([gx[alive] * step, gy[alive] * step], axis=1)


def group_rectangles(rects, min_neighbors, eps=0.2):
    """Merge overlapping raw detections: boxes whose edges all lie within eps * size of each other
    join one group (transitively); a group of more than `min_neighbors` boxes becomes its mean box.
    Groups nested inside a stronger group are dropped. Returns [(x, y, w, h, n)]."""
    n = len(rects)
    if n == 0:
        return []
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    r = np.asarray(rects, dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            delta = eps * (min(r[i, 2], r[j, 2]) + min(r[i, 3], r[j, 3])) * 0.5
            if (abs(r[i, 0] - r[j, 0]) <= delta and abs(r[i, 1] - r[j, 1]) <= delta
                    and abs(r[i, 0] + r[i, 2] - r[j, 0] - r[j, 2]) <= delta
                    and abs(r[i, 1] + r[i, 3] - r[j, 1] - r[j, 3]) <= delta):
                parent[find(i)] = find(j)
    groups = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    merged = [(*np.round(r[m].mean(axis=0)).astype(int).tolist(), len(m)) for m in groups.values()
              if len(m) > min_neighbors]
    kept = []
    for a in merged:
        x, y, w, h, na = a
        inside_stronger = False
        for b in merged:
            if b is a:
                continue
            bx, by, bw, bh, nb = b
            dx, dy = int(bw * eps), int(bh * eps)
            if (x >= bx - dx and y >= by - dy and x + w <= bx + bw + dx and y + h <= by + bh + dy
                    and (nb > max(3, na) or na < 3)):
                inside_stronger = True
                break
        if not inside_stronger:
            kept.append(a)
    return kept


class HaarCascade:
    """detectMultiScale over an image pyramid: (x, y, w, h, neighbours) boxes."""

    def __init__(self, path):
        self.path = path
        self.native = None
        native_cls = getattr(cv2, "CascadeClassifier", None)
        if native_cls is not None and not path.endswith(".gz"):
            native = native_cls(path)
            self.native = None if native.empty() else native
        if self.native is None:
            self.model = CascadeModel(path)
            self.win = (self.model.win_w, self.model.win_h)

    def detect(self, gray, scale_factor=1.1, min_neighbors=3, min_size=(0, 0), max_size=None):
        if self.native is not None:
            boxes, counts = self.native.detectMultiScale2(
                gray, scaleFactor=scale_factor, minNeighbors=min_neighbors, flags=0, minSize=tuple(min_size),
                maxSize=tuple(max_size) if max_size else (0, 0))
            return [(int(x), int(y), int(w), int(h), int(n)) for (x, y, w, h), n in zip(boxes, counts)]
        return group_rectangles(self.raw(gray, scale_factor, min_size, max_size), min_neighbors)

    def raw(self, gray, scale_factor=1.1, min_size=(0, 0), max_size=None):
        """Every window accepted by the cascade, at every pyramid level, in image pixels."""
        h, w = gray.shape[:2]
        win_w, win_h = self.win
        max_w, max_h = max_size if max_size else (w, h)
        out = []
        factor = 1.0
        while True:
            sw, sh = int(round(w / factor)), int(round(h / factor))
            ww, wh = int(round(win_w * factor)), int(round(win_h * factor))
            if sw < win_w or sh < win_h or ww > max_w or wh > max_h:
                break
            if ww >= min_size[0] and wh >= min_size[1]:
                scaled = gray if factor == 1.0 else cv2.resize(gray, (sw, sh), interpolation=cv2.INTER_LINEAR)
                step = 1 if factor > 2.0 else 2
                for x, y in self.model.evaluate(scaled, step):
                    out.append((int(round(x * factor)), int(round(y * factor)), ww, wh))
            factor *= scale_factor
        return out


def _cascade_path(name_or_path):
    if os.path.isfile(name_or_path):
        return name_or_path
    data_dir = getattr(getattr(cv2, "data", None), "haarcascades", "") or ""
    for candidate in (os.path.join(data_dir, name_or_path), os.path.join(CASCADE_DIR, name_or_path + ".gz"),
                      os.path.join(CASCADE_DIR, name_or_path)):
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"Haar cascade '{name_or_path}' not found in cv2.data or {CASCADE_DIR}")


# ---------------------------------------------------------------------------------------------
# Detectors
# ---------------------------------------------------------------------------------------------
class FaceDetector:
    """Interface: detect(img_bgr) -> list[Face], best first."""

    def detect(self, img_bgr):
        raise NotImplementedError


class WholeImageDetector(FaceDetector):
    """det: false. The image already is a face crop."""

    def detect(self, img_bgr):
        h, w = img_bgr.shape[:2]
        return [Face([0.0, 0.0, float(w), float(h)], 1.0, None, {"whole_image": True})]


class HaarFaceDetector(FaceDetector):
    """Frontal faces with the alt2 cascade; eye centres from the eye cascade inside each face."""

    def __init__(self, threshold=0.6, min_size=24, scale_factor=1.1, min_neighbors=3, find_eyes=True,
                 face_cascade=None, eye_cascade=None, max_side=640):
        self.threshold = float(threshold)
        self.min_size = int(min_size)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.max_side = int(max_side) if max_side else 0
        self.faces = HaarCascade(_cascade_path(face_cascade or DEFAULT_FACE_CASCADE))
        self.eyes = HaarCascade(_cascade_path(eye_cascade or DEFAULT_EYE_CASCADE)) if find_eyes else None

    def detect(self, img_bgr):
        gray = cv2.cvtColor(img_bgr, cv2.COLOR_BGR2GRAY) if img_bgr.ndim == 3 else img_bgr
        # Big photos are searched at a reduced size: the smallest findable face grows, time drops.
        scale = 1.0
        if self.max_side and max(gray.shape) > self.max_side:
            scale = self.max_side / float(max(gray.shape))
            gray_small = cv2.resize(gray, (int(round(gray.shape[1] * scale)), int(round(gray.shape[0] * scale))),
                                    interpolation=cv2.INTER_AREA)
        else:
            gray_small = gray
        gray_small = cv2.equalizeHist(gray_small)
        min_side = max(1, int(round(self.min_size * scale)))
        found = self.faces.detect(gray_small, self.scale_factor, self.min_neighbors, (min_side, min_side))
        faces = []
        for x, y, w, h, n in found:
            score = n / (n + 3.0)
            if score < self.threshold:
                continue
            box = [x / scale, y / scale, (x + w) / scale, (y + h) / scale]
            eyes = self._eyes(gray, box) if self.eyes is not None else None
            faces.append(Face(box, score, eyes, {"neighbours": n}))
        faces.sort(key=lambda f: (-f.score, -(f.box[2] - f.box[0])))
        return faces

    def _eyes(self, gray, box):
        """Two eye centres (image-left first) in the upper part of the face box, or None."""
        x1, y1, x2, y2 = [int(round(v)) for v in box]
        x1, y1 = max(0, x1), max(0, y1)
        w, h = x2 - x1, y2 - y1
        roi = gray[y1:y1 + int(h * 0.6), x1:x2]
        if roi.size == 0 or w < 40:
            return None
        # The eye cascade's window is 20x20 px; eyes of a small face (about w/6) are smaller, so the
        # search region is enlarged to a 160 px wide face first.
        up = max(1.0, 160.0 / w)
        if up > 1.0:
            roi = cv2.resize(roi, (int(round(roi.shape[1] * up)), int(round(roi.shape[0] * up))),
                             interpolation=cv2.INTER_LINEAR)
        roi = cv2.equalizeHist(roi)
        ws = int(round(w * up))
        min_eye = max(20, ws // 8)
        cands = [(x / up, y / up, cw / up, ch / up, n) for x, y, cw, ch, n in
                 self.eyes.detect(roi, 1.1, 2, (min_eye, min_eye), (ws // 2, ws // 2))]
        left = [c for c in cands if c[0] + c[2] / 2 < w / 2]
        right = [c for c in cands if c[0] + c[2] / 2 >= w / 2]
        if not left or not right:
            return None
        le = max(left, key=lambda c: c[4])
        re = max(right, key=lambda c: c[4])
        pts = np.array([[x1 + le[0] + le[2] / 2, y1 + le[1] + le[3] / 2],
                        [x1 + re[0] + re[2] / 2, y1 + re[1] + re[3] / 2]], dtype=np.float32)
        # Plausibility: eyes roughly level and 25-65 % of the face width apart.
        dist = pts[1, 0] - pts[0, 0]
        if not (0.25 * w <= dist <= 0.65 * w) or abs(pts[1, 1] - pts[0, 1]) > 0.25 * dist:
            return None
        return pts


class PaddleFaceDetector(FaceDetector):
    """A PaddleDetection / PaddleX face detection inference model (BlazeFace, PicoDet, ...).

    The folder holds inference.json or inference.pdmodel, inference.pdiparams and inference.yml.
    Pre-processing follows inference.yml (resize target, mean/std, is_scale) when present. The model
    output is the usual detection tensor [N, 6] = [class, score, x1, y1, x2, y2] in input-image pixels
    (the exporter feeds im_shape and scale_factor so boxes come back in original pixels).
    """

    def __init__(self, model_dir, threshold=0.6, min_size=0, num_threads=2):
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
            faces.append(Face([x1, y1, x2, y2], float(score)))
        faces.sort(key=lambda f: -f.score)
        return faces


def build_detector(enable=True, type="haar", model_dir=None, threshold=0.6, min_size=24, num_threads=2, **kwargs):
    """The detector chosen by the Det section of the pipeline config."""
    if not enable:
        return WholeImageDetector()
    kind = str(type or "haar").lower()
    if kind == "haar":
        return HaarFaceDetector(threshold=threshold, min_size=min_size,
                                face_cascade=model_dir or None, **kwargs)
    if kind == "paddle":
        return PaddleFaceDetector(model_dir, threshold=threshold, min_size=min_size, num_threads=num_threads)
    raise UserError(f"Det.type '{type}' is not one of haar, paddle")


# ---------------------------------------------------------------------------------------------
# Crop and alignment
# ---------------------------------------------------------------------------------------------
def similarity_transform(src, dst):
    """2x3 matrix of the least-squares similarity (rotation, uniform scale, shift) taking src to dst."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if len(src) >= 3:
        m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
        if m is not None:
            return m
    # Closed form (Umeyama without reflection); exact for two points.
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var = (s ** 2).sum()
    if var <= 0:
        raise ValueError("landmarks coincide")
    a = (s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum() / var
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / var
    rot = np.array([[a, -b], [b, a]])
    t = mu_d - rot @ mu_s
    return np.hstack([rot, t[:, None]])


def crop_face(img_bgr, box, margin=0.2, size=112):
    """Square crop around `box` enlarged by `margin` (fraction of the box side), resized to size x size.
    Parts outside the image are filled by edge replication so the face stays centred."""
    x1, y1, x2, y2 = [float(v) for v in box]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * (1 + 2 * float(margin))
    scale = size / max(side, 1e-6)
    m = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]], np.float64)
    return cv2.warpAffine(img_bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def align_face(img_bgr, face, margin=0.2, size=112):
    """The 112x112 face to embed: aligned on landmarks when there are any, else a margin crop.
    A whole-image face (det: false) is passed through (resized by preprocess)."""
    if face.extra.get("whole_image"):
        return img_bgr
    if face.landmarks is not None and len(face.landmarks) in (2, 5):
        dst = ARCFACE_TEMPLATE[: len(face.landmarks)] * (size / 112.0)
        try:
            m = similarity_transform(face.landmarks, dst)
            return cv2.warpAffine(img_bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        except ValueError:
            pass
    return crop_face(img_bgr, face.box, margin, size)
