"""Global.mode=evaluate: face verification accuracy of a checkpoint or an exported model.

Scores the val pairs of Global.dataset_dir (val/pair_label.txt) and any insightface .bin files
in Evaluate.bin_paths with the insightface protocol (engine/evaluation/metrics.py). Forward passes run
through the exported model with paddle.inference; a .pdparams checkpoint is exported to a
temporary inference model first, so a checkpoint and its exported folder score the same.

Writes to Global.output: evaluate_result.json ({"done_flag": true, "metrics": {...}}),
evaluate_roc.png, pair_scores_<set>.csv (one row per pair, for error analysis), evaluate.log.

Evaluate.detect: the val pair images are raw photos; each one's main face is detected (YuNet) and
aligned to the 112x112 template first. An image without a face is scored whole; how many were is
in the metrics ("detect") and the log. .bin files hold aligned faces already and are never detected.
"""
import os
import tempfile
import time

import numpy as np

from datasets.demo import resolve_dataset_dir
from datasets.recordio import find_bins
from engine.evaluation.report import combine_sets, log_metrics, plot_roc, write_pair_scores
from engine.evaluation.verification import (
    FORWARD_CHUNK,
    aligned_face_loader,
    chunked,
    pair_image_reader,
    score_bin,
    score_pairs,
    unique_images,
    validation_source,
)
from engine.inference.backends import hpi_settings
from engine.inference.folder import export_checkpoint, resolve_model_source
from engine.inference.model import InferenceModel
from engine.inference.official_models import feature_model_dir
from foundation.atomic_io import atomic_write_json, unique_name
from foundation.errors import DatasetError
from foundation.logger import get_logger, log_to_file
from foundation.runtime import num_threads_from, set_threads
from models.face_detector import MainFaceCropper


def load_inference_model(cfg, source, tmp_dir):
    """An InferenceModel for ("checkpoint", file) (exported into tmp_dir first) or ("inference", dir)."""
    logger = get_logger()
    kind, path = source
    if kind == "checkpoint":
        t0 = time.perf_counter()
        model_name = cfg.Global.model
        paths = export_checkpoint(path, model_name, cfg.Arch.backbone, cfg.Arch.embedding_size, cfg.Arch.image_size,
                                  save_dir=os.path.join(tmp_dir, "inference"), setting="Evaluate.weight_path")
        logger.info(f"checkpoint {path}: loaded {paths['loaded_tensors']} tensors, exported to a temporary "
                    f"inference model in {time.perf_counter() - t0:.1f} s")
        model_dir = paths["dir"]
    else:
        model_dir = path
    threads = num_threads_from(cfg.Global.num_threads)
    use_hpip, hpi_config = hpi_settings(cfg.Predict)  # Predict.use_hpip / hpi_config: every forward pass
    if use_hpip and "precision" not in hpi_config:
        # The accuracy measured should not depend on this CPU's flags: bf16 moves pair cosines by up
        # to 0.012 (docs/accuracy.md), so it is used only when asked for.
        hpi_config = dict(hpi_config, precision="fp32")
        logger.info("evaluate: high-performance inference in fp32 (-o Predict.hpi_config.precision=bf16 to score bf16)")
    model = InferenceModel(model_dir, device=cfg.Global.device, num_threads=threads, run_mode="paddle",
                           use_hpip=use_hpip, hpi_config=hpi_config)
    logger.info(f"model: {model.model_name} ({model.embedding_size}-d, {model.format} format) from "
                f"{path if kind == 'inference' else path + ' (checkpoint)'}, {model.describe()}")
    return model


def _bin_paths(cfg):
    return list(cfg.Evaluate.bin_paths)


# --------------------------------------------------------------------------- runner
def run(cfg):
    flip = cfg.Evaluate.flip
    folds = cfg.Evaluate.folds
    batch_size = cfg.Evaluate.batch_size
    weight_path = cfg.Evaluate.weight_path or feature_model_dir(None, cfg.Global.model, "Evaluate.weight_path")
    source = resolve_model_source(weight_path)  # fail before any slow work (demo generation, decoding) or output
    bins = _bin_paths(cfg)
    for p in bins:
        if not os.path.isfile(p):
            raise DatasetError(f"Evaluate.bin_paths: {p} does not exist (give insightface .bin files, "
                               "e.g. -o Evaluate.bin_paths=[data/lfw.bin,data/cfp_fp.bin])")
    output = cfg.Global.output
    os.makedirs(output, exist_ok=True)
    logger = log_to_file(os.path.join(output, "evaluate.log"))
    set_threads(num_threads_from(cfg.Global.num_threads))

    # .bin files replace the dataset's val pairs (set Evaluate.bin_paths=[] to score those)
    pairs, dataset_dir = None, cfg.Global.dataset_dir
    if not bins:
        dataset_dir = resolve_dataset_dir(dataset_dir)
        pairs, first_bin = validation_source(dataset_dir)
        if first_bin is not None:  # a RecordIO folder without val/: every .bin beside train.rec
            bins = find_bins(dataset_dir)
            logger.info(f"{dataset_dir} has no val/: scoring the .bin files beside train.rec: "
                        + ", ".join(os.path.basename(b) for b in bins))

    sets, curves, set_names = {}, [], {"val"} if pairs is not None else set()
    with tempfile.TemporaryDirectory(prefix="facefeat_eval_") as tmp_dir:
        model = load_inference_model(cfg, source, tmp_dir)
        extract = chunked(model.predict)
        if pairs is not None:
            if not pairs:
                raise DatasetError(f"{os.path.join(str(dataset_dir), 'val', 'pair_label.txt')} lists no pairs")
            images, ia, ib = unique_images(pairs)
            labels = np.array([int(p[2]) for p in pairs])
            logger.info(f"val pairs of {dataset_dir}: {len(pairs)} pairs, {len(images)} distinct images, "
                        f"batch {batch_size} (forwarded in slices of {FORWARD_CHUNK}), flip {'on' if flip else 'off'}")
            fallbacks, max_pixels = [], cfg.Global.max_image_pixels
            if cfg.Evaluate.detect:
                load_fn = aligned_face_loader(MainFaceCropper(), fallbacks, max_pixels)
                logger.info("Evaluate.detect: the main face of every val image is detected and aligned")
            else:
                load_fn = pair_image_reader(max_pixels)
            m, cos, dist = score_pairs(images, ia, ib, labels, extract, load_fn, batch_size=batch_size, flip=flip,
                                       folds=folds, preprocess_fn=model.preprocess)
            if cfg.Evaluate.detect:
                m["detect"] = {"aligned": len(images) - len(fallbacks), "no_face_used_whole": len(fallbacks),
                               "no_face_first": sorted(fallbacks)[:10]}
                if fallbacks:
                    logger.warning(f"Evaluate.detect: no face in {len(fallbacks)} of {len(images)} val images "
                                   f"(scored whole), e.g. {', '.join(sorted(fallbacks)[:3])}")
            m["source"] = os.path.join(str(dataset_dir), "val", "pair_label.txt")
            sets["val"] = m
            root = os.path.join(str(dataset_dir), "val")
            rel = [os.path.relpath(p, root) for p in images]
            write_pair_scores(os.path.join(output, "pair_scores_val.csv"), [rel[i] for i in ia], [rel[i] for i in ib],
                              labels, cos, dist, m["best_threshold"])
            curves.append(("val", cos, labels, m))
            log_metrics(logger, "val", m)
        for path in bins:
            name = unique_name(os.path.splitext(os.path.basename(path))[0], set_names)
            logger.info(f"{path}: scoring (batch {batch_size}, flip {'on' if flip else 'off'})")
            m, cos, dist, labels = score_bin(path, extract, batch_size=batch_size, flip=flip, folds=folds,
                                             preprocess_fn=model.preprocess)
            m["source"] = path
            sets[name] = m
            n = len(labels)
            write_pair_scores(os.path.join(output, f"pair_scores_{name}.csv"),
                              [f"{os.path.basename(path)}#{2 * i}" for i in range(n)],
                              [f"{os.path.basename(path)}#{2 * i + 1}" for i in range(n)],
                              labels, cos, dist, m["best_threshold"])
            curves.append((name, cos, labels, m))
            log_metrics(logger, name, m)

    metrics = combine_sets(sets)
    metrics["model"] = {"name": model.model_name, "embedding_size": model.embedding_size,
                        "weight_path": str(weight_path), "format": model.format,
                        "folder_format": model.folder_format}
    roc_path = os.path.join(output, "evaluate_roc.png")
    plot_roc(roc_path, curves)
    metrics["roc_curve_png"] = roc_path
    metrics["pair_score_files"] = {name: os.path.join(output, f"pair_scores_{name}.csv") for name in sets}
    result_path = os.path.join(output, "evaluate_result.json")
    atomic_write_json(result_path, {"done_flag": True, "metrics": metrics})
    if len(sets) > 1:
        logger.info(f"mean acc over {', '.join(sets)}: {metrics['mean_acc']:.4f}")
    logger.info(f"results: {result_path}, ROC: {roc_path}, per-pair scores: {output}/pair_scores_*.csv")
    print(f"Evaluate done: acc {metrics['acc']:.4f} ({result_path})")
    return 0

