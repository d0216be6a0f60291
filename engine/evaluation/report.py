"""What evaluate writes and logs from its scores: the per-pair CSV, the ROC picture, the log lines
and evaluate_result.json's metrics over one or several sets. Plain numpy, matplotlib and files."""
import csv
import io

import matplotlib
import numpy as np

from engine.evaluation import metrics as M
from foundation.atomic_io import atomic_save, atomic_write_text

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


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
