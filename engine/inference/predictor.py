"""The face feature predictor behind predict and the Python API (`create_model`).

    from engine import create_model
    model = create_model("MobileFaceNet")                      # Predict.model_dir of its config
    model = create_model(model_dir="output/best_model/inference")
    for res in model.predict("faces/", batch_size=8):
        res.print(json_format=False)
        res.save_to_json("./output/")                          # ./output/<stem>_res.json
    sim = model.compare("a.jpg", "b.jpg", threshold=0.3)      # cosine; sim.is_same with a threshold
    model = create_model("MobileFaceNet", use_hpip=True)       # OpenVINO / ONNX Runtime (pip install ".[cpu,hpi]")

Inputs are those of engine.inference.inputs. Every feature is L2-normalised, whatever the batch
size (the reference normalises only the first feature of a batch).

With detect=True (Predict.detect, create_model(..., detect=True)) each input is a raw photo: its
main face (YuNet; the largest box nearest the centre) is aligned to the
112x112 template and embedded, and the result also holds that face's `face`: box, det_score and
landmarks. A photo without a face is an error when named directly and is skipped (and counted in
`failures`) when found in a folder. Without it each image is taken to be a face crop already.
"""
import os

import numpy as np

from datasets.prefetch import prefetch_batches
from datasets.transforms import DEFAULT_MAX_PIXELS, hflip_chw
from engine.evaluation.metrics import l2_normalize
from engine.inference.backends import pp_option_settings
from engine.inference.inputs import expand_inputs, is_expanded, load_item
from engine.inference.model import InferenceModel
from engine.inference.official_models import FEATURE_MODELS, official_model_dir
from engine.inference.results import FeatureResult, Similarity
from foundation.errors import UserError
from foundation.logger import get_logger
from foundation.runtime import num_threads_from, set_threads
from models.face_detector import MainFaceCropper


# --------------------------------------------------------------------------- predictor
class FaceFeaturePredictor:
    """An exported face feature model plus pre-processing; see the module docstring."""

    def __init__(self, model_dir, device="cpu", num_threads=None, run_mode="paddle", model_name=None, detect=False,
                 det=None, use_hpip=False, hpi_config=None, max_image_pixels=DEFAULT_MAX_PIXELS, flip=False):
        threads = num_threads_from(num_threads or 0)
        set_threads(threads)
        self.model = InferenceModel(model_dir, device=device, num_threads=threads, run_mode=run_mode,
                                    use_hpip=use_hpip, hpi_config=hpi_config)
        self.model_dir = self.model.model_dir
        self.model_name = self.model.model_name
        self.embedding_size = self.model.embedding_size
        self.max_image_pixels = int(max_image_pixels)  # larger images are refused from their header
        self.flip = bool(flip)  # PaddleX's flip: each feature is the sum of the image's and its mirror's
        self.failures = []  # (input path, message) of images skipped by the last predict()
        # detect: raw photos -> the aligned main face (det: options of models.face_detector.build_detector)
        self.cropper = MainFaceCropper(**(det or {})) if detect else None
        if model_name and self.model_name and model_name != self.model_name:
            get_logger().warning(f"create_model('{model_name}'): {model_dir} holds a {self.model_name} model")

    def __repr__(self):
        return f"FaceFeaturePredictor({self.model_name}, {self.embedding_size}-d, {self.model_dir!r})"

    def predict(self, input, batch_size=1, num_workers=1):
        """Yield a FeatureResult per image, in input order (PaddleX's predict(input, batch_size)).

        `input`: see engine.inference.inputs, or a list of InputItem that expand_inputs returned
        already. A missing path, an empty folder or an unreadable file named directly raises
        UserError; an unreadable file found inside a folder is logged, recorded in
        `self.failures` and skipped so the rest still come out.
        """
        items = input if is_expanded(input) else expand_inputs(input)
        self.failures = []
        log = get_logger()
        faces = {}  # item index -> the embedded face (detect only)

        def load(index):
            item = items[index]
            img = load_item(item, self.max_image_pixels)
            if self.cropper is None:
                return img
            chip, face, _ = self.cropper.main(img)
            if chip is None:
                raise UserError(f"no face found in {item.input_path or item.name} (Predict.detect is on; "
                                "images that are face crops already need it off)")
            faces[index] = face.to_dict()
            return chip

        order = list(range(len(items)))
        for indices, batch, failures in prefetch_batches(order, load, batch_size, num_workers, skip_errors=True,
                                                         preprocess_fn=self.model.preprocess):
            for f in failures:
                item = items[f.index]
                if item.explicit:
                    raise f.error if isinstance(f.error, UserError) else UserError(f"{item.input_path or item.name}: {f.error}")
                self.failures.append((item.input_path, str(f.error)))
                log.warning(f"skipped {item.input_path}: {f.error}")
            if batch is None:
                continue
            # every row on its own (the reference normalised only row 0 of a batch)
            feats = self.model.predict(batch)
            if self.flip:
                feats = feats + self.model.predict(hflip_chw(batch))
            feats = l2_normalize(feats).astype(np.float32)
            for i, feat in zip(indices, feats):
                yield FeatureResult(items[i].input_path, feat, items[i].name, faces.pop(i, None))

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


def create_model(model_name=None, model_dir=None, device="cpu", num_threads=None, run_mode="paddle", detect=False,
                 use_hpip=False, hpi_config=None, max_image_pixels=DEFAULT_MAX_PIXELS, flip=False, pp_option=None):
    """A FaceFeaturePredictor. `model_name` is an official model ("MobileFaceNet", "ResNet50_face":
    downloaded once into the cache, as PaddleX does) or the path of an inference folder; `model_dir`
    names a local folder explicitly. With detect, inputs are raw photos whose main face is detected
    and aligned first. use_hpip=True is high-performance inference, as in PaddleX: hpi_config
    {"backend": "paddle" | "openvino" | "onnxruntime", "precision": "fp32" | "bf16", "num_threads": N},
    each optional (no backend: chosen automatically; see engine.inference.backends). Images larger
    than max_image_pixels (Global.max_image_pixels) are refused from their header. flip=True (PaddleX's
    argument) sums each image's feature with its horizontal mirror's before normalising. pp_option
    (PaddleX's PaddlePredictorOption, or a dict of its run_mode, cpu_threads, device_type, device_id)
    sets run_mode, num_threads and device."""
    chosen = pp_option_settings(pp_option)
    device, num_threads = chosen.get("device", device), chosen.get("num_threads", num_threads)
    run_mode = chosen.get("run_mode", run_mode)
    if model_dir is None:
        if not model_name:
            raise UserError("create_model needs a model name (e.g. 'MobileFaceNet') or model_dir=<inference folder>")
        if os.path.isdir(str(model_name)):
            model_dir, model_name = str(model_name), None
        elif model_name in FEATURE_MODELS:
            model_dir = official_model_dir(model_name)
        else:
            raise UserError(f"unknown model '{model_name}': official models are {', '.join(FEATURE_MODELS)}; or give "
                            "the path of an inference folder (create_model('output/best_model/inference'))")
    return FaceFeaturePredictor(model_dir, device=device, num_threads=num_threads, run_mode=run_mode,
                                model_name=model_name, detect=detect, use_hpip=use_hpip, hpi_config=hpi_config,
                                max_image_pixels=max_image_pixels, flip=flip)
