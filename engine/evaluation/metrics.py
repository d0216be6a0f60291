"""Face verification metrics: the insightface protocol plus ROC figures. Plain numpy, no Paddle.

Protocol (insightface `verification.py`, as the reference reports LFW / CFP-FP / AgeDB-30):
the caller embeds every image and its horizontal flip and sums the two raw features; here the
sums are L2-normalised, the distance of a pair is the squared Euclidean distance
(= 2 - 2 cos, in [0, 4]), a pair is called "same" when distance < threshold, thresholds run
0.00, 0.01, ..., 3.99 (np.arange(0, 4, 0.01), as insightface), the pairs are split into 10
contiguous folds in file order (sklearn KFold(shuffle=False) sizes: the first n % k folds hold
one pair more), and each fold is scored with the threshold that is most accurate on the other
nine (the lowest such threshold on ties). Reported: mean and std of the ten fold accuracies and
the mean of the ten thresholds.

The ROC figures (AUC, EER, TAR at a given FAR) are threshold-free and use all pairs at once,
scored by cosine similarity (higher = more alike).
"""
import numpy as np

THRESHOLDS = np.arange(0, 4, 0.01)
DEFAULT_FAR_TARGETS = (1e-1, 1e-2, 1e-3)


def l2_normalize(x, axis=-1, eps=1e-12):
    """Rows of `x` scaled to unit L2 norm (all-zero rows stay zero instead of becoming NaN)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)


def pair_scores(feat_a, feat_b):
    """(cosine similarity, squared L2 distance) of each pair of rows, after L2 normalisation."""
    a = l2_normalize(_as_2d(feat_a, "feat_a"))
    b = l2_normalize(_as_2d(feat_b, "feat_b"))
    if a.shape != b.shape:
        raise ValueError(f"feat_a {a.shape} and feat_b {b.shape} must have the same shape")
    cosine = np.sum(a * b, axis=1)
    sq_dist = np.sum(np.square(a - b), axis=1)
    return cosine, sq_dist


def kfold_splits(n, folds=10):
    """Contiguous (train_idx, test_idx) folds in order, sized like sklearn KFold(shuffle=False)."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if n < folds:
        raise ValueError(f"{n} pairs cannot be split into {folds} folds: need at least {folds} pairs")
    sizes = np.full(folds, n // folds, dtype=np.int64)
    sizes[: n % folds] += 1
    indices = np.arange(n)
    splits = []
    start = 0
    for size in sizes:
        stop = start + int(size)
        test = indices[start:stop]
        train = np.concatenate([indices[:start], indices[stop:]])
        splits.append((train, test))
        start = stop
    return splits


def verification_accuracy(sq_dist, labels, folds=10, thresholds=THRESHOLDS):
    """The k-fold accuracy of the insightface protocol from squared L2 distances.

    Returns acc (mean over folds), acc_std, best_threshold (mean of the per-fold thresholds),
    fold_accuracies and fold_thresholds.
    """
    dist = np.asarray(sq_dist, dtype=np.float64).ravel()
    same = _as_labels(labels, len(dist))
    thresholds = np.asarray(thresholds, dtype=np.float64)
    # correct[t, i]: pair i is classified right at threshold t ("same" when dist < threshold)
    correct = (dist[None, :] < thresholds[:, None]) == same[None, :]
    fold_acc, fold_thr = [], []
    for train, test in kfold_splits(len(dist), folds):
        train_acc = correct[:, train].mean(axis=1)
        best = int(np.argmax(train_acc))  # first maximum = lowest threshold, as insightface
        fold_thr.append(float(thresholds[best]))
        fold_acc.append(float(correct[best, test].mean()))
    fold_acc = np.array(fold_acc)
    fold_thr = np.array(fold_thr)
    return {
        "acc": float(fold_acc.mean()),
        "acc_std": float(fold_acc.std()),
        "best_threshold": round(float(fold_thr.mean()), 10),  # a mean of 0.01-grid values: drop float noise
        "fold_accuracies": fold_acc.tolist(),
        "fold_thresholds": fold_thr.tolist(),
    }


def roc_curve_points(scores, labels):
    """ROC of "same when score >= threshold": (fpr, tpr, thresholds), thresholds decreasing.

    One point per distinct score plus a first point (0, 0) at threshold +inf, like
    sklearn.metrics.roc_curve(..., drop_intermediate=False).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    same = _as_labels(labels, len(scores))
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    y = same[order].astype(np.int64)
    # last index of each run of equal scores: a threshold accepts all of its ties at once
    last_of_value = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last_of_value]
    fps = (last_of_value + 1) - tps
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    thresholds = np.r_[np.inf, s[last_of_value]]
    num_pos, num_neg = int(same.sum()), int((~same).sum())
    if num_pos == 0 or num_neg == 0:
        raise ValueError(f"ROC needs both same and different pairs (same: {num_pos}, different: {num_neg})")
    return fps / num_neg, tps / num_pos, thresholds


def roc_auc(fpr, tpr):
    """Area under the ROC curve (trapezoid rule over the points of roc_curve_points)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def equal_error_rate(fpr, tpr, thresholds):
    """(eer, threshold) where the false accept rate equals the false reject rate (1 - tpr).

    Between two ROC points the rates are interpolated linearly; so is the threshold.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    fnr = 1.0 - np.asarray(tpr, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    gap = fpr - fnr  # rises from -1 (threshold +inf) to +1 (lowest threshold)
    i = int(np.argmax(gap >= 0))
    if gap[i] == 0 or i == 0:
        return float(fpr[i]), _finite_threshold(thresholds, i)
    t = -gap[i - 1] / (gap[i] - gap[i - 1])
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    if np.isfinite(thresholds[i - 1]):
        thr = thresholds[i - 1] + t * (thresholds[i] - thresholds[i - 1])
    else:
        thr = thresholds[i]
    return float(eer), float(thr)


def min_negatives_for_far(far):
    """Fewest negative pairs for which a false accept rate of `far` can be measured at all."""
    return int(np.ceil(round(1.0 / far, 6)))


def far_key(far):
    """1e-3 -> '1e-3' (the key used in the JSON result)."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def tar_at_far(fpr, tpr, thresholds, num_negatives, far_targets=DEFAULT_FAR_TARGETS):
    """True accept rate at each false accept rate target: the best TPR with FPR <= target.

    Returns {key: {"tar", "far" (achieved), "threshold" (cosine), "note"}}; tar is None when
    there are fewer than 1/target negative pairs (a rate of 1e-3 needs at least 1000 of them).
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    out = {}
    for far in far_targets:
        key = far_key(far)
        need = min_negatives_for_far(far)
        if num_negatives < need:
            out[key] = {
                "tar": None, "far": None, "threshold": None,
                "note": f"FAR {key} needs at least {need} negative pairs, this set has {num_negatives}",
            }
            continue
        ok = np.nonzero(fpr <= far + 1e-12)[0]
        best = ok[np.argmax(tpr[ok])]  # tpr is non-decreasing, so this is the loosest allowed threshold
        out[key] = {
            "tar": float(tpr[best]),
            "far": float(fpr[best]),
            "threshold": _finite_threshold(thresholds, best),
            "note": None,
        }
    return out


def verification_metrics(feat_a, feat_b, labels, folds=10, far_targets=DEFAULT_FAR_TARGETS, flip=None):
    """All verification metrics of pairs of (already flip-summed) features.

    feat_a, feat_b: [N, D] raw features of the two images of each pair; labels: N values in
    {0, 1} (1 = same person). `flip` is only recorded in the protocol (the caller does the flip).
    """
    cosine, sq_dist = pair_scores(feat_a, feat_b)
    return metrics_from_scores(cosine, sq_dist, labels, folds=folds, far_targets=far_targets, flip=flip)


def metrics_from_scores(cosine, sq_dist, labels, folds=10, far_targets=DEFAULT_FAR_TARGETS, flip=None):
    """verification_metrics from precomputed pair scores (see pair_scores)."""
    same = _as_labels(labels, len(np.ravel(sq_dist)))
    num_pos = int(same.sum())
    num_neg = int(len(same) - num_pos)
    result = verification_accuracy(sq_dist, same, folds=folds)
    result["best_threshold_cosine"] = 1.0 - result["best_threshold"] / 2.0
    notes = []
    if num_pos and num_neg:
        fpr, tpr, thr = roc_curve_points(cosine, same)
        eer, eer_thr = equal_error_rate(fpr, tpr, thr)
        tars = tar_at_far(fpr, tpr, thr, num_neg, far_targets)
        result["roc_auc"] = roc_auc(fpr, tpr)
        result["eer"] = eer
        result["eer_threshold_cosine"] = eer_thr
    else:
        notes.append(f"ROC, AUC, EER and TAR@FAR need both same and different pairs "
                     f"(same: {num_pos}, different: {num_neg})")
        result["roc_auc"] = None
        result["eer"] = None
        result["eer_threshold_cosine"] = None
        tars = {far_key(f): {"tar": None, "far": None, "threshold": None, "note": notes[-1]} for f in far_targets}
    result["tar_at_far"] = {k: v["tar"] for k, v in tars.items()}
    result["tar_at_far_threshold_cosine"] = {k: v["threshold"] for k, v in tars.items()}
    result["tar_at_far_achieved_far"] = {k: v["far"] for k, v in tars.items()}
    for k, v in tars.items():
        if v["note"] and v["note"] not in notes:
            notes.append(v["note"])
    result["num_pairs"] = int(len(same))
    result["num_positive_pairs"] = num_pos
    result["num_negative_pairs"] = num_neg
    result["folds"] = int(folds)
    result["notes"] = notes
    result["protocol"] = protocol_description(folds, flip)
    return result


def protocol_description(folds=10, flip=None):
    """What the numbers mean, stored next to them."""
    return {
        "name": "insightface verification (LFW protocol)",
        "flip": flip,
        "features": ("feature(image) + feature(horizontal flip), then L2-normalised" if flip
                     else "feature(image), L2-normalised" if flip is False else "L2-normalised"),
        "distance": "squared L2 between normalised features (= 2 - 2 * cosine)",
        "thresholds": "0.00 to 3.99 step 0.01; same person when distance < threshold",
        "folds": int(folds),
        "split": "contiguous folds in file order, no shuffle (sklearn KFold sizes)",
        "threshold_selection": f"best accuracy on the other {int(folds) - 1} folds, applied to the held-out fold",
        "acc": f"mean of the {int(folds)} held-out fold accuracies; acc_std is their standard deviation",
        "roc": "all pairs at once, scored by cosine similarity (tar_at_far, roc_auc, eer)",
    }


def protocol_summary(metrics):
    """One log line: 'acc 0.9850 +- 0.0052 (10-fold, flip-sum, threshold chosen on 9 folds)'."""
    folds = metrics.get("folds", 10)
    flip = (metrics.get("protocol") or {}).get("flip")
    flip_text = "flip-sum" if flip else "no flip" if flip is False else "flip unknown"
    return (f"acc {metrics['acc']:.4f} +- {metrics['acc_std']:.4f} ({folds}-fold, {flip_text}, "
            f"threshold chosen on {folds - 1} folds; mean threshold {metrics['best_threshold']:.2f} "
            f"squared L2 = cosine {metrics['best_threshold_cosine']:.3f}; {metrics['num_pairs']} pairs)")


def _finite_threshold(thresholds, i):
    value = float(thresholds[i])
    return value if np.isfinite(value) else None


def _as_2d(x, name):
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {x.shape}")
    return x


def _as_labels(labels, n):
    y = np.asarray(labels).ravel()
    if y.size != n:
        raise ValueError(f"{y.size} labels for {n} pairs")
    if y.dtype != bool:
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise ValueError(f"labels must be 0/1 or booleans, found {y[bad][0]!r}")
        y = y.astype(bool)
    return y

