"""Grouping face features by person, and how well a grouping matches the truth (numpy and faiss).

    edges = knn_edges(features, k=32, threshold=0.5)        # streamed through faiss, never N x N
    labels = chinese_whispers(len(features), edges, seed=0)  # or connected_components(...)
    labels = drop_small(labels, min_size=2)                  # -1: unsorted
    bcubed(labels, truth) -> (precision, recall, F); pairwise_f(labels, truth) -> (precision, recall, F)

The graph: each face is joined to those of its k nearest neighbours (cosine) at or above the
threshold, searched in blocks so memory is the features plus k edges a face. Connected
components chain people together through one bad edge; Chinese whispers (Biemann, 2006: each
face takes the label carrying the largest total edge weight among its neighbours, in a seeded
random order, until nothing changes) cuts such bridges, and is what dlib gives face_recognition's
users. Both are deterministic for the same input and seed. `unsorted` (-1) gathers faces whose
group is smaller than min_size.
"""
import numpy as np

UNSORTED = -1


def knn_edges(features, k=32, threshold=0.5, block=4096):
    """(i, j, cosine) of every pair where j is among i's k nearest neighbours (i != j) with cosine
    >= threshold, each pair once (i < j), as three arrays. `features` are L2-normalised rows."""
    import faiss

    feats = np.ascontiguousarray(features, dtype=np.float32)
    n = len(feats)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    index = faiss.IndexFlatIP(feats.shape[1])
    index.add(feats)
    k = min(int(k) + 1, n)  # the face itself comes back too
    rows, cols, sims = [], [], []
    for start in range(0, n, block):
        scores, ids = index.search(feats[start:start + block], k)
        src = np.repeat(np.arange(start, start + len(ids)), k).reshape(len(ids), k)
        keep = (ids >= 0) & (ids != src) & (scores >= threshold)
        rows.append(src[keep])
        cols.append(ids[keep])
        sims.append(scores[keep])
    i, j, s = np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    key = lo * n + hi
    _, first = np.unique(key, return_index=True)  # a pair found from both ends counts once
    return lo[first].astype(np.int64), hi[first].astype(np.int64), s[first].astype(np.float32)


def connected_components(n, edges):
    """Labels 0.. by connected component (union-find), numbered by their smallest member."""
    parent = np.arange(n)

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(edges[0], edges[1]):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(x) for x in range(n)])
    return _renumber(roots)


def chinese_whispers(n, edges, iterations=30, seed=0):
    """Labels 0.. by Chinese whispers over the weighted graph `edges` (i, j, weight)."""
    i, j, w = edges
    neighbours = [[] for _ in range(n)]
    for a, b, weight in zip(i.tolist(), j.tolist(), w.tolist()):
        neighbours[a].append((b, weight))
        neighbours[b].append((a, weight))
    labels = np.arange(n)
    rng = np.random.default_rng(seed)
    for _ in range(int(iterations)):
        changed = 0
        for node in rng.permutation(n):
            if not neighbours[node]:
                continue
            votes = {}
            for other, weight in neighbours[node]:
                votes[labels[other]] = votes.get(labels[other], 0.0) + weight
            best = max(votes.items(), key=lambda kv: (kv[1], -kv[0]))[0]  # ties: the smaller label
            if best != labels[node]:
                labels[node] = best
                changed += 1
        if not changed:
            break
    return _renumber(labels)


def drop_small(labels, min_size=2):
    """Groups smaller than min_size become UNSORTED (-1); the rest renumbered 0.. by first member."""
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    small = set(values[counts < min_size].tolist())
    out = np.array([UNSORTED if v in small else v for v in labels.tolist()], dtype=np.int64)
    kept = out != UNSORTED
    out[kept] = _renumber(out[kept])
    return out


def _renumber(labels):
    """The same grouping numbered 0.. in order of each group's first member (deterministic ids)."""
    seen = {}
    return np.array([seen.setdefault(v, len(seen)) for v in np.asarray(labels).tolist()], dtype=np.int64)


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
