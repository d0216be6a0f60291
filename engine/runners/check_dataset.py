"""Global.mode=check_dataset: validate a face dataset and describe it (the checks: datasets/check.py).

    python main.py -c configs/face_recognition/MobileFaceNet.yaml -o Global.mode=check_dataset \
        -o Global.dataset_dir=./dataset/face_demo

Writes <Global.output>/check_dataset_result.json, <output>/check_dataset/demo_img/ and
<output>/check_dataset/histogram.png; exit code 1 when the dataset has errors.
"""
import os

from datasets.check import RESULT_NAME, check, failure_message
from datasets.label_files import format_problem
from foundation.atomic_io import atomic_write_json
from foundation.errors import ConfigError
from foundation.logger import log_to_file
from foundation.runtime import num_threads_from


def run(cfg):
    for part, section in (("convert", cfg.CheckDataset.convert), ("split", cfg.CheckDataset.split)):
        if section.enable:
            raise ConfigError(f"CheckDataset.{part}.enable=True is not supported for face features: the face "
                              f"feature module has no dataset {'format conversion' if part == 'convert' else 'splitting'}. "
                              f"Set -o CheckDataset.{part}.enable=False"
                              + (" and build train/ and val/ with `python -m datasets.import_folders SRC DST`"
                                 if part == "split" else ""))
    output_dir = os.path.abspath(cfg.Global.output)
    os.makedirs(output_dir, exist_ok=True)
    log = log_to_file(os.path.join(output_dir, "check_dataset.log"))
    dataset_dir = cfg.Global.dataset_dir
    if dataset_dir.strip() == "":
        raise ConfigError("Global.dataset_dir is empty: pass -o Global.dataset_dir=DIR")
    log.info(f"Checking dataset {dataset_dir}")
    result, problems = check(
        dataset_dir, output_dir,
        max_errors=cfg.CheckDataset.max_errors,
        expected_num_classes=cfg.Train.num_classes,
        decode_sample=cfg.CheckDataset.decode_sample,
        decode_all=cfg.CheckDataset.decode_all,
        workers=num_threads_from(cfg.Global.num_threads),
        log=log,
        max_pixels=cfg.Global.max_image_pixels,
    )
    result_path = os.path.join(output_dir, RESULT_NAME)
    atomic_write_json(result_path, result)
    for p in problems.warnings:
        log.warning(f"{format_problem(p)} ({p.fix})")
    if problems.num_warnings() > len(problems.warnings):
        log.warning(f"... and {problems.num_warnings() - len(problems.warnings)} more warnings")
    a = result["attributes"]
    if not result["check_pass"]:
        log.error(failure_message(problems))
        log.info(f"Result written to {result_path}")
        return 1
    an = result["analysis"]
    tr, va, sz = an["train"], an["val"], an.get("image_size", {})
    log.info(f"train: {tr['images']} images of {tr['identities']} identities (num_classes {a['train_num_classes']}), "
             f"images per identity min/median/max {tr['images_per_identity']['min']}/"
             f"{tr['images_per_identity']['median']:g}/{tr['images_per_identity']['max']}")
    log.info(f"val: {va['pairs']} pairs ({va['same_pairs']} same, {va['different_pairs']} different) over "
             f"{va['images']} images")
    if sz:
        log.info(f"image sizes: width {sz['min_width']}-{sz['max_width']}, height {sz['min_height']}-{sz['max_height']} "
                 f"(most common {sz['most_common']})")
    log.info(f"Result written to {result_path}; pictures in {os.path.join(output_dir, 'check_dataset')}")
    log.info("Check dataset passed !")
    return 0
