"""Face features from an exported model: Global.mode=predict and the Python API.

    from engine import create_model
    model = create_model("MobileFaceNet")                      # Predict.model_dir of its config
    model = create_model(model_dir="output/best_model/inference")
    for res in model.predict("faces/", batch_size=8):
        res.print(json_format=False)
        res.save_to_json("./output/")                          # ./output/<stem>_res.json
    sim = model.compare("a.jpg", "b.jpg", threshold=0.3)      # cosine; sim.is_same with a threshold

Inputs: an image path, a folder (searched recursively, sorted, jpg/jpeg/png/bmp/pgm), an http(s)
URL, a numpy BGR array, or a list of these. Every feature is L2-normalised, whatever the batch
size (the reference normalises only the first feature of a batch).
"""
import json
import os
import tempfile

import numpy as np

from engine.config import get
from foundation.errors import UserError
from foundation.atomic_io import atomic_write_json, download_file
from foundation.logger import get_logger

_ARRAY_PREFIX = "array_"


# --------------------------------------------------------------------------- results
class FeatureResult(dict):
    """One image's result: {"input_path": str or None (numpy input), "feature": np.ndarray [D]}."""

    def __init__(self, input_path, feature, name):
        super().__init__(input_path=input_path, feature=feature)
        self.name = name  # file stem for save_to_json: the image's stem, or array_<i>

    @property
    def input_path(self):
        return self["input_path"]

    @property
    def feature(self):
        return self["feature"]

    def to_dict(self):
        """JSON-ready: the feature as a list of floats."""
        return {"input_path": self["input_path"], "feature": [float(v) for v in self["feature"]]}

    @property
    def json(self):
        return {"res": self.to_dict()}

    def __str__(self):
        f = np.asarray(self["feature"])
        head = ", ".join(f"{v:.4f}" for v in f[:4])
        tail = ", ".join(f"{v:.4f}" for v in f[-2:])
        return f"{{'res': {{'input_path': {self['input_path']!r}, 'feature': [{head}, ..., {tail}] ({f.size}-d)}}}}"

    def print(self, json_format=False, indent=4):
        """json_format=False: one short line (the feature abbreviated); True: the full JSON."""
        print(json.dumps(self.json, indent=indent, ensure_ascii=False) if json_format else str(self), flush=True)

    def save_to_json(self, save_path):
        """A folder (existing, or a path without .json) gets <name>_res.json, name = the image's stem
        (images found in a folder: their path inside it, sub/x.jpg -> sub_x; numpy inputs: array_<i>);
        a .json path is written as is."""
        save_path = str(save_path)
        if save_path.lower().endswith(".json") and not os.path.isdir(save_path):
            path = save_path
        else:
            path = os.path.join(save_path, f"{self.name}_res.json")
        atomic_write_json(path, self.to_dict())
        return path


class Similarity(float):
    """A cosine similarity in [-1, 1]; with a threshold, `is_same` says whether it reaches it."""

    def __new__(cls, value, threshold=None):
        obj = super().__new__(cls, value)
        obj.threshold = threshold
        obj.is_same = None if threshold is None else bool(value >= threshold)
        return obj

    def __repr__(self):
        if self.threshold is None:
            return f"Similarity({float(self):.4f})"
        return f"Similarity({float(self):.4f}, threshold={self.threshold}, is_same={self.is_same})"


# --------------------------------------------------------------------------- inputs
class _Item:
    """One image to embed: where it came from and how to load it."""

    __slots__ = ("input_path", "name", "array", "explicit")

    def __init__(self, input_path, name, array=None, explicit=True):
        self.input_path = input_path
        self.name = name
        self.array = array
        self.explicit = explicit  # named by the user (errors stop the run) vs found in a folder (skipped)


def _is_url(text):
    return text.lower().startswith(("http://", "https://"))


def download(url, timeout=30):
    """Fetch `url` into a temporary file; UserError (one line) when it cannot be reached."""
    suffix = os.path.splitext(url.split("?", 1)[0])[1][:5] or ".jpg"
    fd, tmp = tempfile.mkstemp(prefix="facefeat_url_", suffix=suffix)
    os.close(fd)
    try:
        download_file(url, tmp, timeout=timeout)
    except (OSError, ValueError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot download {url}: {reason} (no network? download the image and pass its path)") from None
    return tmp


def expand_inputs(inputs):
    """[_Item] for a path, folder, URL, numpy array or a list of these. UserError on a missing
    path, an empty folder or an unsupported value, before any image is processed."""
    from datasets.transforms import IMAGE_EXTENSIONS, list_images

    if isinstance(inputs, (str, os.PathLike, np.ndarray)):
        inputs = [inputs]
    elif not isinstance(inputs, (list, tuple)):
        raise UserError(f"unsupported input type {type(inputs).__name__}: give an image path, a folder, a URL, "
                        "a numpy BGR image or a list of these")
    if len(inputs) == 0:
        raise UserError("no input given: pass an image path, a folder, a URL or a numpy image")
    items, array_count = [], 0
    for value in inputs:
        if isinstance(value, np.ndarray):
            if value.ndim not in (2, 3) or value.size == 0:
                raise UserError(f"numpy input #{array_count} has shape {value.shape}: expected an HxW or HxWxC image")
            items.append(_Item(None, f"{_ARRAY_PREFIX}{array_count}", array=value))
            array_count += 1
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise UserError(f"unsupported input {type(value).__name__}: give image paths, folders, URLs or numpy images")
        text = os.fspath(value)
        if _is_url(text):
            items.append(_Item(text, os.path.splitext(os.path.basename(text.split("?", 1)[0]))[0] or "url"))
        elif os.path.isdir(text):
            files = list_images(text)
            if not files:
                raise UserError(f"input folder {text} holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)")
            # named by the path inside the folder (sub/x.jpg -> sub_x), so sub-folders such as one
            # per person with 00.jpg, 01.jpg ... do not collide; a flat folder gives plain stems
            items.extend(_Item(f, os.path.splitext(os.path.relpath(f, text))[0].replace(os.sep, "_"), explicit=False)
                         for f in files)
        elif os.path.isfile(text):
            items.append(_Item(text, os.path.splitext(os.path.basename(text))[0]))
        else:
            hint = ""
            if "face_demo" in text:
                hint = "; the demo dataset is generated by `python -m datasets.demo dataset/face_demo` or any mode using it"
            raise UserError(f"input {text} does not exist (give an image file, a folder of images or a URL){hint}")
    return items


def _load_item(item):
    from datasets.transforms import ImageReadError, read_image, to_bgr

    try:
        if item.array is not None:
            return to_bgr(item.array)
        if _is_url(item.input_path):
            tmp = download(item.input_path)
            try:
                return read_image(tmp)
            except ImageReadError:
                raise ImageReadError(f"{item.input_path} did not download an image") from None
            finally:
                os.remove(tmp)
        return read_image(item.input_path)
    except ImageReadError as e:
        raise UserError(str(e)) from None


# --------------------------------------------------------------------------- predictor
class FaceFeaturePredictor:
    """An exported face feature model plus pre-processing; see the module docstring."""

    def __init__(self, model_dir, device="cpu", num_threads=None, run_mode="paddle", model_name=None):
        from engine.inference import InferenceModel
        from foundation.runtime import num_threads_from, set_threads

        threads = num_threads_from(num_threads or 0)
        set_threads(threads)
        self.model = InferenceModel(model_dir, device=device, num_threads=threads, run_mode=run_mode)
        self.model_dir = self.model.model_dir
        self.model_name = self.model.model_name
        self.embedding_size = self.model.embedding_size
        self.failures = []  # (input path, message) of images skipped by the last predict()
        if model_name and self.model_name and model_name != self.model_name:
            get_logger().warning(f"create_model('{model_name}'): {model_dir} holds a {self.model_name} model")

    def __repr__(self):
        return f"FaceFeaturePredictor({self.model_name}, {self.embedding_size}-d, {self.model_dir!r})"

    def predict(self, inputs, batch_size=1, num_workers=1):
        """Yield a FeatureResult per image, in input order.

        A missing path, an empty folder or an unreadable file named directly raises UserError;
        an unreadable file found inside a folder is logged, recorded in `self.failures` and
        skipped so the rest still come out.
        """
        from engine.batch_pipeline import prefetch_batches
        from engine.metrics import l2_normalize

        items = expand_inputs(inputs)
        self.failures = []
        log = get_logger()
        for indices, batch, failures in prefetch_batches(items, _load_item, batch_size, num_workers, skip_errors=True):
            for f in failures:
                item = items[f.index]
                if item.explicit:
                    raise f.error if isinstance(f.error, UserError) else UserError(f"{item.input_path or item.name}: {f.error}")
                self.failures.append((item.input_path, str(f.error)))
                log.warning(f"skipped {item.input_path}: {f.error}")
            if batch is None:
                continue
            # every row on its own (the reference normalised only row 0 of a batch)
            feats = l2_normalize(self.model.predict(batch)).astype(np.float32)
            for i, feat in zip(indices, feats):
                yield FeatureResult(items[i].input_path, feat, items[i].name)

    __call__ = predict

    def feature(self, image):
        """The L2-normalised feature [D] of a single input (path, URL or numpy image)."""
        results = list(self.predict(image if not isinstance(image, (list, tuple)) else list(image)))
        if len(results) != 1:
            raise UserError(f"expected one image, got {len(results)} (a folder or a list?)")
        return results[0].feature

    def compare(self, a, b, threshold=None):
        """Cosine similarity of two inputs' features (1 = identical direction). With `threshold`
        (a cosine, e.g. best_threshold_cosine of evaluate_result.json) `.is_same` is set too."""
        fa, fb = self.feature(a), self.feature(b)
        return Similarity(float(np.dot(fa, fb)), threshold)


def default_model_dir(model_name):
    """Predict.model_dir of configs/face_recognition/<model_name>.yaml."""
    from engine.config import REPO_ROOT, load_config

    folder = os.path.join(REPO_ROOT, "configs", "face_recognition")
    path = os.path.join(folder, f"{model_name}.yaml")
    if not os.path.isfile(path):
        names = sorted(os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith(".yaml"))
        raise UserError(f"unknown model '{model_name}': models with a config are {', '.join(names)}")
    return str(get(load_config(path), "Predict.model_dir"))


def create_model(model_name=None, model_dir=None, device="cpu", num_threads=None, run_mode="paddle"):
    """A FaceFeaturePredictor. Without model_dir, model_name's config gives Predict.model_dir."""
    if model_dir is None:
        if not model_name:
            raise UserError("create_model needs a model name (e.g. 'MobileFaceNet') or model_dir=<inference folder>")
        model_dir = default_model_dir(model_name)
        if not os.path.isdir(model_dir):
            raise UserError(f"the default model folder of {model_name}, {model_dir}, does not exist: train and export "
                            f"first (python main.py -c configs/face_recognition/{model_name}.yaml -o Global.mode=train) "
                            "or pass model_dir=<inference folder>")
    return FaceFeaturePredictor(model_dir, device=device, num_threads=num_threads, run_mode=run_mode,
                                model_name=model_name)


# --------------------------------------------------------------------------- runner
def _unique_name(name, taken):
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def run(cfg):
    """Global.mode=predict: print and save <Global.output>/<stem>_res.json per image."""
    from foundation.logger import log_to_file

    output = str(get(cfg, "Global.output", "output"))
    inputs = get(cfg, "Predict.input")
    if inputs is None or (isinstance(inputs, str) and not inputs.strip()):
        raise UserError("Predict.input is empty: pass -o Predict.input=<image, folder or URL>")
    if not isinstance(inputs, str):
        inputs = [str(v) for v in inputs]
    expand_inputs(inputs)  # a missing path or empty folder fails before the model loads
    model_dir = get(cfg, "Predict.model_dir")
    if not model_dir:
        raise UserError("Predict.model_dir is empty: pass -o Predict.model_dir=<exported inference folder>")
    if not os.path.exists(str(model_dir)):
        raise UserError(f"Predict.model_dir {model_dir} does not exist: train (it exports best_model/inference) or "
                        "export a checkpoint (-o Global.mode=export), then pass -o Predict.model_dir=<that folder>")
    os.makedirs(output, exist_ok=True)
    logger = log_to_file(os.path.join(output, "predict.log"))
    predictor = FaceFeaturePredictor(
        str(model_dir), device=get(cfg, "Global.device", "cpu"), num_threads=get(cfg, "Global.num_threads", 0),
        run_mode=str(get(cfg, "Predict.kernel_option.run_mode", "paddle") or "paddle"))
    batch_size = int(get(cfg, "Predict.batch_size", 1) or 1)
    logger.info(f"{predictor}: batch {batch_size}, run mode {predictor.model.run_mode}")
    taken, written = set(), 0
    for res in predictor.predict(inputs, batch_size=batch_size):
        res.name = _unique_name(res.name, taken)  # the same stem given twice: keep both files
        res.print(json_format=False)
        res.save_to_json(output)
        written += 1
    logger.info(f"saved {written} result(s) as {output}/<stem>_res.json")
    if predictor.failures:
        shown = "; ".join(f"{p}: {m}" for p, m in predictor.failures[:3])
        more = f" (and {len(predictor.failures) - 3} more)" if len(predictor.failures) > 3 else ""
        raise UserError(f"{len(predictor.failures)} of {written + len(predictor.failures)} images failed and were "
                        f"skipped ({shown}{more}); the other {written} results are in {output}")
    print(f"Predict done: {written} result(s) in {output}")
    return 0
