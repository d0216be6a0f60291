"""Export.int8: post-training int8, kept only when it verifies as well as fp32 (the accuracy gate).

    gate = functools.partial(quantize_with_gate, dataset_dir=..., calibration=300, max_loss=0.2)
    record = gate(folder)   # folder holds inference.onnx and inference.yml (export's build folder)

1. Calibration: `calibration` images of the dataset's train/label.txt, evenly spaced through the
   file (so every part of the identity list is seen), pre-processed as the folder's inference.yml
   says; NNCF quantizes inference.onnx with them (engine.inference.onnx_convert.quantize_int8).
2. Both models score the dataset's val pairs with the project's protocol (engine.evaluation.verification:
   flip-summed features, 10-fold accuracy with the threshold chosen on the other folds,
   engine.evaluation.metrics), on OpenVINO: fp32 for inference.onnx, int8 for the quantized model, the way
   `hpi_config.precision int8` runs it afterwards.
3. The int8 model is kept as inference_int8.onnx only when fp32 accuracy - int8 accuracy is at
   most `max_loss` percentage points; otherwise it is deleted and the one-line reason (both
   accuracies) is logged. Either way the record (both accuracies, the protocol, the calibration)
   is returned for inference.yml's `Int8` section, which InferenceModel reads before running int8.
"""
import importlib.metadata
import os
import time

import numpy as np

from datasets.label_files import load_pair_list, load_train_list
from datasets.transforms import DEFAULT_MAX_PIXELS, read_image
from engine.evaluation import metrics as M
from engine.evaluation.verification import pair_image_reader, score_pairs, unique_images
from engine.inference.backends import require
from engine.inference.executors import OpenVINOExecutor
from engine.inference.folder import CONFIG_FILE_NAME, PARAMS_FILE_NAME, Preprocess, read_inference_yml
from engine.inference.onnx_convert import INT8_FILE_NAME, ONNX_FILE_NAME, quantize_int8
from foundation.atomic_io import file_digest
from foundation.errors import DatasetError
from foundation.logger import get_logger


def calibration_images(dataset_dir, count):
    """Up to `count` training image paths, evenly spaced through train/label.txt."""
    train = load_train_list(dataset_dir)
    if not train:
        raise DatasetError(f"Export.int8: {dataset_dir}/train/label.txt lists no images to calibrate int8 with")
    idx = np.unique(np.linspace(0, len(train) - 1, min(int(count), len(train))).round().astype(int))
    return [train[i][0] for i in idx]


def gate_decision(fp32_acc, int8_acc, max_loss):
    """(passed, loss in percentage points, the one-line reason) for two accuracies in [0, 1]."""
    loss = round((float(fp32_acc) - float(int8_acc)) * 100.0, 4)
    passed = loss <= float(max_loss)
    verdict = "kept" if passed else "refused"
    reason = (f"int8 {verdict}: val accuracy {int8_acc * 100:.2f} % int8 vs {fp32_acc * 100:.2f} % fp32, "
              f"a loss of {loss:.2f} points ({'within' if passed else 'above'} Export.int8_max_loss {max_loss:g})")
    return passed, loss, reason


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def quantize_with_gate(folder, dataset_dir, calibration=300, max_loss=0.2, flip=True, folds=10, batch_size=64,
                       num_threads=2, max_pixels=DEFAULT_MAX_PIXELS):
    """Quantize folder/inference.onnx, score fp32 and int8 on the val pairs, keep
    folder/inference_int8.onnx only when the gate passes; returns the `Int8` record."""
    require("nncf", "Export.int8 (post-training int8)")
    require("openvino", "Export.int8 (its accuracy is measured on OpenVINO, which runs it)")
    logger = get_logger()
    onnx_file = os.path.join(folder, ONNX_FILE_NAME)
    out = os.path.join(folder, INT8_FILE_NAME)
    candidate = os.path.join(folder, ".int8_candidate.onnx")
    t0 = time.perf_counter()
    preprocess = Preprocess(read_inference_yml(folder), os.path.join(folder, CONFIG_FILE_NAME))
    pairs = load_pair_list(dataset_dir, check_images=True)  # fail before the slow quantization
    if len(pairs) < folds:
        raise DatasetError(f"Export.int8: {len(pairs)} val pairs cannot be split into {folds} folds")
    paths = calibration_images(dataset_dir, calibration)
    calib = [preprocess(read_image(p, max_pixels))[None] for p in paths]
    logger.info(f"Export.int8: quantizing {onnx_file} with NNCF on {len(calib)} training images of {dataset_dir}")
    try:
        quantize_seconds = quantize_int8(onnx_file, calib, candidate)
        images, ia, ib = unique_images(pairs)
        labels = np.array([int(p[2]) for p in pairs])
        acc = {}
        for name, path, precision in (("fp32", onnx_file, "fp32"), ("int8", candidate, "int8")):
            runner = OpenVINOExecutor(path, precision, num_threads)
            m, _, _ = score_pairs(images, ia, ib, labels, runner.predict, pair_image_reader(max_pixels),
                                  batch_size=batch_size, flip=flip,
                                  folds=folds, desc=f"Export.int8 {name}", preprocess_fn=preprocess)
            acc[name] = m
            del runner
        passed, loss, reason = gate_decision(acc["fp32"]["acc"], acc["int8"]["acc"], max_loss)
        if passed:
            os.replace(candidate, out)
    finally:
        if os.path.exists(candidate):
            os.remove(candidate)
    record = {
        "passed": bool(passed),
        "file": INT8_FILE_NAME if passed else None,
        "reason": reason,
        "fp32_acc": round(float(acc["fp32"]["acc"]), 6),
        "int8_acc": round(float(acc["int8"]["acc"]), 6),
        "fp32_acc_std": round(float(acc["fp32"]["acc_std"]), 6),
        "int8_acc_std": round(float(acc["int8"]["acc_std"]), 6),
        "loss_points": loss,
        "max_loss_points": float(max_loss),
        "pairs": int(len(pairs)),
        "val": os.path.join(str(dataset_dir), "val", "pair_label.txt"),
        "protocol": M.protocol_description(folds, bool(flip)),
        "measured_with": f"openvino {_version('openvino')}: inference.onnx fp32, the int8 model int8, "
                         f"{int(num_threads)} thread(s)",
        "quantizer": f"nncf {_version('nncf')} post-training quantization (defaults)",
        "calibration_images": len(calib),
        "calibration_source": os.path.join(str(dataset_dir), "train", "label.txt") + " (evenly spaced)",
        "params_sha256": file_digest(os.path.join(folder, PARAMS_FILE_NAME)),
        "quantize_seconds": quantize_seconds,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (logger.info if passed else logger.warning)(f"Export.int8: {reason}" + ("" if passed else
                                                "; inference_int8.onnx not written"))
    return record
