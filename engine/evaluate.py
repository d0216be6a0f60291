"""Global.mode=evaluate: face verification accuracy of a checkpoint or an exported model.

Scores the val pairs of Global.dataset_dir (val/pair_label.txt) and any insightface .bin files
in Evaluate.bin_paths with the insightface protocol (engine/metrics.py). Forward passes run
through the exported model with paddle.inference; a .pdparams checkpoint is exported to a
temporary inference model first, so a checkpoint and its exported folder score the same.

Writes to Global.output: evaluate_result.json ({"done_flag": true, "metrics": {...}}),
evaluate_roc.png, pair_scores_<set>.csv (one row per pair, for error analysis), evaluate.log.
"""
import csv
import io
import os
import tempfile
import time

import numpy as np

from engine import metrics as M
from engine.batch_pipeline import extract_features
from engine.config import get
from foundation.errors import DatasetError, UserError
from foundation.atomic_io import atomic_save, atomic_write_json, atomic_write_text
from foundation.logger import get_logger, log_to_file
from foundation.progress import Progress

MODEL_FILE_NAMES = ("inference.json", "inference.pdmodel")

# paddle.inference runs a PIR (inference.json) MobileFaceNet about 2x slower per image at batch 64
# than at batch 16 on CPU with oneDNN (measured here: 7.8 vs 3.7 CPU ms/img, 1 thread; the old
# .pdmodel format is flat at ~3.7-3.9), so Evaluate.batch_size images are decoded together but
# forwarded in slices of at most this many.
FORWARD_CHUNK = 16


def chunked(extract_fn, size=FORWARD_CHUNK):
    """extract_fn applied to slices of at most `size` rows of a batch, results concatenated."""
    def run(batch):
        if len(batch) <= size:
            return extract_fn(batch)
        return np.concatenate([np.asarray(extract_fn(batch[i:i + size])) for i in range(0, len(batch), size)])

    return run


# --------------------------------------------------------------------------- scoring
def _read_path(path):
    from datasets.transforms import ImageReadError, read_image

    try:
        return read_image(path)
    except ImageReadError as e:
        raise DatasetError(f"{e}; fix the image or remove its pair from val/pair_label.txt") from None


def unique_images(pairs):
    """(distinct image paths in first-seen order, index_a, index_b) of (path_a, path_b, label) pairs."""
    index = {}
    for a, b, _ in pairs:
        for p in (a, b):
            if p not in index:
                index[p] = len(index)
    ia = np.array([index[a] for a, _, _ in pairs], dtype=np.int64)
    ib = np.array([index[b] for _, b, _ in pairs], dtype=np.int64)
    return list(index), ia, ib


def score_pairs(images, index_a, index_b, labels, extract_fn, load_fn=_read_path, batch_size=64, flip=True,
                folds=10, num_workers=2, desc="evaluate"):
    """Embed each distinct image once (with its flip), then score the pairs.

    Returns (metrics dict, cosine per pair, squared L2 distance per pair).
    """
    labels = np.asarray(labels).astype(int)
    if len(labels) < folds:  # checked before the slow part
        raise DatasetError(f"{desc}: {len(labels)} pairs cannot be split into {folds} folds; add pairs "
                           f"(at least {folds}, a few hundred for a meaningful figure) or lower -o Evaluate.folds")
    with Progress(len(images), desc=desc, unit="img") as bar:
        bar.postfix = "(x2 forward passes: flip)" if flip else ""
        feats = extract_features(images, load_fn, extract_fn, batch_size=batch_size, flip=flip,
                                 num_workers=num_workers, progress=bar)
    cosine, sq_dist = M.pair_scores(feats[index_a], feats[index_b])
    metrics = M.metrics_from_scores(cosine, sq_dist, labels, folds=folds, flip=bool(flip))
    metrics["num_images"] = len(images)
    metrics["seconds"] = round(time.perf_counter() - bar.start, 2)
    return metrics, cosine, sq_dist


def evaluate_pairs(pairs, extract_fn, batch_size=64, flip=True, folds=10, num_workers=2):
    """Verification metrics of `pairs` [(path_a, path_b, label)] with `extract_fn(nchw) -> [N, D]`.

    Each distinct image is decoded and embedded once; decoding runs in `num_workers` threads
    while the model works. Used by the train runner (dygraph extract_fn) and by run() below.
    """
    if not pairs:
        raise DatasetError("no pairs to evaluate: val/pair_label.txt is empty")
    images, ia, ib = unique_images(pairs)
    labels = [int(lbl) for _, _, lbl in pairs]
    metrics, _, _ = score_pairs(images, ia, ib, labels, extract_fn, batch_size=batch_size, flip=flip,
                                folds=folds, num_workers=num_workers)
    return metrics


def score_bin(path, extract_fn, batch_size=64, flip=True, folds=10, num_workers=2):
    """(metrics, cosine, sq_dist, labels) of an insightface .bin file (pairs are images 2i, 2i+1)."""
    from datasets.bin_file import decode_image, read_bin

    images, issame = read_bin(path)
    n = len(issame)
    items = list(range(len(images)))

    def load(i):
        return decode_image(images[i], f"{path} image #{i}")

    metrics, cosine, sq_dist = score_pairs(items, np.arange(n) * 2, np.arange(n) * 2 + 1, issame.astype(int),
                                           extract_fn, load_fn=load, batch_size=batch_size, flip=flip, folds=folds,
                                           num_workers=num_workers, desc=os.path.basename(path))
    return metrics, cosine, sq_dist, issame.astype(int)


# --------------------------------------------------------------------------- model
def resolve_model_source(weight_path):
    """('checkpoint', file) or ('inference', dir) for Evaluate.weight_path; UserError if unusable."""
    fix = ("train first (python main.py -c CONFIG -o Global.mode=train) or pass "
           "-o Evaluate.weight_path=<checkpoint .pdparams or exported inference folder>")
    if not weight_path:
        raise UserError(f"Evaluate.weight_path is empty: {fix}")
    path = str(weight_path)
    if os.path.isfile(path):
        if path.endswith(".pdparams"):
            return "checkpoint", path
        if os.path.basename(path) in MODEL_FILE_NAMES:
            return "inference", os.path.dirname(os.path.abspath(path))
        raise UserError(f"Evaluate.weight_path {path} is neither a .pdparams checkpoint nor an inference model "
                        f"({' / '.join(MODEL_FILE_NAMES)}): {fix}")
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, n)) for n in MODEL_FILE_NAMES):
            return "inference", path
        sub = os.path.join(path, "inference")
        if any(os.path.isfile(os.path.join(sub, n)) for n in MODEL_FILE_NAMES):
            return "inference", sub
        found = sorted(os.listdir(path))[:8]
        raise UserError(f"Evaluate.weight_path {path} is a folder without an inference model (inference.json or "
                        f"inference.pdmodel; found: {', '.join(found) or 'nothing'}): {fix}")
    raise UserError(f"Evaluate.weight_path {path} does not exist: {fix}")


def load_inference_model(cfg, weight_path, tmp_dir):
    """An engine.inference.InferenceModel for a checkpoint (exported into tmp_dir) or an inference dir."""
    from engine.inference import InferenceModel
    from foundation.runtime import num_threads_from

    logger = get_logger()
    kind, path = resolve_model_source(weight_path)
    if kind == "checkpoint":
        from engine.export import export_checkpoint

        t0 = time.perf_counter()
        paths = export_checkpoint(cfg, path, save_dir=os.path.join(tmp_dir, "inference"))
        logger.info(f"checkpoint {path}: loaded {paths['loaded_tensors']} tensors, exported to a temporary "
                    f"inference model in {time.perf_counter() - t0:.1f} s")
        model_dir = paths["dir"]
    else:
        model_dir = path
    threads = num_threads_from(get(cfg, "Global.num_threads", 0))
    model = InferenceModel(model_dir, device=get(cfg, "Global.device", "cpu"), num_threads=threads, run_mode="paddle")
    logger.info(f"model: {model.model_name} ({model.embedding_size}-d, {model.format} format) from "
                f"{path if kind == 'inference' else path + ' (checkpoint)'}, paddle.inference on {threads} thread(s)")
    return model


# --------------------------------------------------------------------------- outputs
def write_pair_scores(path, rows_a, rows_b, labels, cosine, sq_dist, threshold):
    """CSV: pair, path_a, path_b, label, cosine, squared L2, prediction at `threshold`, correct."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["pair", "path_a", "path_b", "label", "cosine", "sq_l2_distance",
                f"predicted_same_at_{threshold:.4f}", "correct"])
    for i, (a, b, y, c, d) in enumerate(zip(rows_a, rows_b, labels, cosine, sq_dist)):
        pred = int(d < threshold)
        w.writerow([i, a, b, int(y), f"{c:.6f}", f"{d:.6f}", pred, int(pred == int(y))])
    atomic_write_text(path, buf.getvalue())


def plot_roc(path, curves):
    """ROC curves [(name, scores, labels, metrics)] on a log FPR axis, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for name, scores, labels, m in curves:
        if m.get("roc_auc") is None:
            continue
        fpr, tpr, _ = M.roc_curve_points(scores, labels)
        floor = 1.0 / max(1, m["num_negative_pairs"])
        ax.plot(np.maximum(fpr, floor / 2), tpr,
                label=f"{name}: AUC {m['roc_auc']:.4f}, EER {m['eer']:.4f}, acc {m['acc']:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate (log scale)")
    ax.set_ylabel("true accept rate")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("Face verification ROC (cosine of flip-summed features)" if curves and
                 curves[0][3]["protocol"]["flip"] else "Face verification ROC (cosine)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_save(lambda tmp: fig.savefig(tmp, format="png"), path)
    plt.close(fig)


def log_metrics(logger, name, m):
    logger.info(f"[{name}] {M.protocol_summary(m)}")
    tar = ", ".join(f"FAR {k}: {'n/a' if v is None else f'{v:.4f}'}" for k, v in m["tar_at_far"].items())
    if m.get("roc_auc") is not None:
        logger.info(f"[{name}] TAR@FAR {tar}; ROC AUC {m['roc_auc']:.4f}; EER {m['eer']:.4f} "
                    f"(cosine threshold {m['eer_threshold_cosine']:.3f})")
    for note in m.get("notes", []):
        logger.info(f"[{name}] note: {note}")


def _set_name(path, taken):
    name = os.path.splitext(os.path.basename(path))[0]
    base, i = name, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def _bin_paths(cfg):
    value = get(cfg, "Evaluate.bin_paths", None) or []
    if isinstance(value, str):
        value = [value]
    return [str(p) for p in value]


# --------------------------------------------------------------------------- runner
def run(cfg):
    from foundation.runtime import num_threads_from, set_threads

    flip = bool(get(cfg, "Evaluate.flip", True))
    folds = int(get(cfg, "Evaluate.folds", 10))
    batch_size = int(get(cfg, "Evaluate.batch_size", 64))
    weight_path = get(cfg, "Evaluate.weight_path")
    resolve_model_source(weight_path)  # fail before any slow work (demo generation, decoding) or output
    bins = _bin_paths(cfg)
    for p in bins:
        if not os.path.isfile(p):
            raise DatasetError(f"Evaluate.bin_paths: {p} does not exist (give insightface .bin files, "
                               "e.g. -o Evaluate.bin_paths=[data/lfw.bin,data/cfp_fp.bin])")
    output = str(get(cfg, "Global.output", "output"))
    os.makedirs(output, exist_ok=True)
    logger = log_to_file(os.path.join(output, "evaluate.log"))
    set_threads(num_threads_from(get(cfg, "Global.num_threads", 0)))

    # .bin files replace the dataset's val pairs (set Evaluate.bin_paths=[] to score those)
    pairs, dataset_dir = None, get(cfg, "Global.dataset_dir")
    if not bins:
        from datasets.demo import resolve_dataset_dir
        from datasets.label_files import load_pair_list

        dataset_dir = resolve_dataset_dir(dataset_dir)
        pairs = load_pair_list(dataset_dir)

    set_threads(num_threads_from(get(cfg, "Global.num_threads", 0)))
    sets, curves = {}, []
    with tempfile.TemporaryDirectory(prefix="facefeat_eval_") as tmp_dir:
        model = load_inference_model(cfg, weight_path, tmp_dir)
        extract = chunked(model.predict)
        if pairs is not None:
            if not pairs:
                raise DatasetError(f"{os.path.join(str(dataset_dir), 'val', 'pair_label.txt')} lists no pairs")
            images, ia, ib = unique_images(pairs)
            labels = np.array([int(p[2]) for p in pairs])
            logger.info(f"val pairs of {dataset_dir}: {len(pairs)} pairs, {len(images)} distinct images, "
                        f"batch {batch_size} (forwarded in slices of {FORWARD_CHUNK}), flip {'on' if flip else 'off'}")
            m, cos, dist = score_pairs(images, ia, ib, labels, extract, batch_size=batch_size, flip=flip, folds=folds)
            m["source"] = os.path.join(str(dataset_dir), "val", "pair_label.txt")
            sets["val"] = m
            root = os.path.join(str(dataset_dir), "val")
            rel = [os.path.relpath(p, root) for p in images]
            write_pair_scores(os.path.join(output, "pair_scores_val.csv"), [rel[i] for i in ia], [rel[i] for i in ib],
                              labels, cos, dist, m["best_threshold"])
            curves.append(("val", cos, labels, m))
            log_metrics(logger, "val", m)
        for path in bins:
            name = _set_name(path, sets)
            logger.info(f"{path}: scoring (batch {batch_size}, flip {'on' if flip else 'off'})")
            m, cos, dist, labels = score_bin(path, extract, batch_size=batch_size, flip=flip, folds=folds)
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
                        "weight_path": str(weight_path), "format": model.format}
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


def combine_sets(sets):
    """The `metrics` of evaluate_result.json.

    One set (the val pairs, or a single .bin): its metrics at the top level. Several .bin files:
    each under `sets`, and at the top level the mean accuracy (`acc` = `mean_acc`, as insightface
    reports LFW / CFP-FP / AgeDB-30 and their mean).
    """
    if len(sets) == 1:
        (name, m), = sets.items()
        out = dict(m)
        out["set"] = name
        return out
    first = next(iter(sets.values()))
    mean_acc = float(np.mean([m["acc"] for m in sets.values()]))
    return {
        "acc": mean_acc,
        "mean_acc": mean_acc,
        "acc_std": float(np.mean([m["acc_std"] for m in sets.values()])),
        "set": "mean of " + ", ".join(sets),
        "protocol": first["protocol"],
        "folds": first["folds"],
        "num_pairs": int(sum(m["num_pairs"] for m in sets.values())),
        "note": "acc is the mean of the per-set accuracies and acc_std the mean of their fold std; "
                "every metric of each set (tar_at_far, roc_auc, eer, thresholds) is under `sets`",
        "sets": sets,
    }
