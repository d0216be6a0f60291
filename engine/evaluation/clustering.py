"""How well a grouping of faces matches the truth: BCubed and pairwise precision, recall and F (numpy).


    bcubed(labels, truth) -> (precision, recall, F); pairwise_f(labels, truth) -> (precision, recall, F)

UNSORTED (-1) marks faces left out of every group (engine.clustering.graph); the scores count each
as a group of its own, so leaving a face unsorted is never free.
"""
import numpy as np

UNSORTED = -1


def bcubed(labels, truth):
    """(precision, recall, F) of BCubed (Bagga and Baldwin, 1998), averaged over items. UNSORTED
    items count as clusters of their own (an unsorted face groups with nobody)."""
    labels, truth = _singletons(labels), np.asarray(truth)
    n = len(labels)
    if n == 0:
        return 0.0, 0.0, 0.0
    pair = {}
    for a, b in zip(labels.tolist(), truth.tolist()):
        pair[(a, b)] = pair.get((a, b), 0) + 1
    size_l = {v: c for v, c in zip(*np.unique(labels, return_counts=True))}
    size_t = {v: c for v, c in zip(*np.unique(truth, return_counts=True))}
    precision = sum(c * c / size_l[a] for (a, _), c in pair.items()) / n
    recall = sum(c * c / size_t[b] for (_, b), c in pair.items()) / n
    return precision, recall, _f(precision, recall)


def pairwise_f(labels, truth):
    """(precision, recall, F) over pairs of items: same cluster vs same person."""
    labels, truth = _singletons(labels), np.asarray(truth)

    def pairs(counts):
        return sum(c * (c - 1) // 2 for c in counts)

    joint = {}
    for a, b in zip(labels.tolist(), truth.tolist()):
        joint[(a, b)] = joint.get((a, b), 0) + 1
    together = pairs(joint.values())
    predicted = pairs(np.unique(labels, return_counts=True)[1].tolist())
    actual = pairs(np.unique(truth, return_counts=True)[1].tolist())
    precision = together / predicted if predicted else 1.0
    recall = together / actual if actual else 1.0
    return precision, recall, _f(precision, recall)


def _singletons(labels):
    """UNSORTED items as clusters of one each (fresh negative ids), other labels unchanged."""
    labels = np.array(labels, dtype=np.int64)
    unsorted = labels == UNSORTED
    labels[unsorted] = -2 - np.arange(int(unsorted.sum()))
    return labels


def _f(p, r):
    return 2 * p * r / (p + r) if p + r else 0.0
