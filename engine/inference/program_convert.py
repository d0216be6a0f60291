"""A PIR model (inference.json) of one of our architectures, also in the old program format, cached.

    cached_program(model_file, params_file, model_name, embedding_size, image_size)
        -> (path of an inference.pdmodel that runs the folder's own inference.pdiparams, None)
        or (None, why not)

Why: Paddle 3.3's PIR executor runs MobileFaceNet and ResNet50_face at about half the old
executor's throughput on the CPU (docs/speed.md), and official PaddleX models ship only
inference.json. When the folder's
inference.yml names one of our backbones (Global.model_name, the name models.build_backbone
knows), a child process writes that architecture's old-format program (FLAGS_enable_pir_api=0,
parameter names from a fresh scope, as export does). A combined parameter file holds bare tensors
in the order of the program's sorted parameter names, so the program reads the folder's own
inference.pdiparams exactly when both name and order the parameters alike. That is checked, not
assumed: the two predictors must give the same features on a few check images (plain CPU kernels,
no oneDNN, so the comparison is of the graphs, not of kernel rounding), else the folder keeps
running as PIR and the refusal is cached with its reason (no second attempt for the same files).
"""
import hashlib
import json
import os
import tempfile

import numpy as np
import paddle.inference as paddle_infer

from engine.inference.folder import write_program_format
from foundation.atomic_io import atomic_write_json, file_digest
from foundation.logger import get_logger
from foundation.runtime import cache_dir
from models import BACKBONES

PROGRAM_FILE_NAME = "inference.pdmodel"
CHECK_IMAGES = 4
# relative to the largest feature magnitude: the same graph on the same kernels agrees to ~1e-6
TOLERANCE = 1e-4
CONVERTER_VERSION = 1  # part of the cache key: a change here invalidates old conversions


def _predict(model_file, params_file, pir, batch):
    config = paddle_infer.Config(model_file, params_file)
    config.enable_new_ir(pir)
    config.disable_gpu()
    config.disable_mkldnn()
    config.set_cpu_math_library_num_threads(2)
    config.disable_glog_info()
    predictor = paddle_infer.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(batch.shape)
    handle.copy_from_cpu(batch)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def agreement(json_file, program_file, params_file, image_size):
    """Max abs difference of the two formats' features on check images, relative to the largest
    feature value (raises what Paddle raises when the program cannot read the parameters)."""
    batch = np.random.default_rng(0).uniform(-1, 1, (CHECK_IMAGES, 3, image_size, image_size)).astype("float32")
    ref = _predict(json_file, params_file, True, batch)
    out = _predict(program_file, params_file, False, batch)
    if out.shape != ref.shape:
        return float("inf")
    return float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-12))


def cached_program(model_file, params_file, model_name, embedding_size, image_size=112):
    """(program file, None) or (None, reason); see the module docstring."""
    if model_name not in BACKBONES:
        return None, f"inference.yml's model_name '{model_name}' is not one of our backbones ({', '.join(BACKBONES)})"
    if not embedding_size:
        return None, "inference.yml gives no embedding_size"
    key = hashlib.sha256("\n".join([file_digest(model_file), file_digest(params_file), model_name, str(embedding_size),
                                    str(image_size), paddle_infer.get_version().splitlines()[0],
                                    str(CONVERTER_VERSION)]).encode()).hexdigest()[:24]
    folder = cache_dir("program", key)
    path = os.path.join(folder, PROGRAM_FILE_NAME)
    record_file = os.path.join(folder, "check.json")
    if os.path.isfile(record_file):
        with open(record_file, encoding="utf-8") as f:
            record = json.load(f)
        if record.get("passed") and os.path.isfile(path):
            return path, None
        if not record.get("passed"):
            return None, record.get("reason", "refused earlier")
    os.makedirs(folder, exist_ok=True)
    get_logger().info(f"writing {model_file} once in the old program format (faster on the CPU), into {folder}")
    with tempfile.TemporaryDirectory(dir=folder) as work:
        prefix = os.path.join(work, "inference")
        why = write_program_format(model_name, embedding_size, image_size, prefix)
        diff = None
        if why is None:
            try:
                diff = agreement(model_file, prefix + ".pdmodel", params_file, image_size)
            except Exception as e:  # Paddle raises RuntimeError/ValueError on a parameter mismatch
                why = f"the {model_name} program cannot read these parameters ({type(e).__name__})"
            else:
                if not diff <= TOLERANCE:
                    why = (f"the {model_name} program gives other features from these parameters (max difference "
                           f"{diff:.2e} relative, tolerance {TOLERANCE:g}): not the same architecture")
        record = {"passed": why is None, "reason": why, "max_relative_difference": diff,
                  "source": os.path.abspath(model_file), "check_images": CHECK_IMAGES}
        if why is None:
            os.replace(prefix + ".pdmodel", path)
        atomic_write_json(record_file, record)
    if why:
        return None, why
    get_logger().info(f"{model_file}: the program format agrees with it (max difference {diff:.1e} relative)")
    return path, None
