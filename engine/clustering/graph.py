"""Face features grouped by person through a cosine k-nearest-neighbour graph (numpy and faiss).

    edges = knn_edges(features, k=32, threshold=0.5)        # streamed through faiss, never N x N
    labels = chinese_whispers(len(features), edges, seed=0)  # or connected_components(...)
    labels = drop_small(labels, min_size=2)                  # UNSORTED (-1) for groups too small

The graph joins each face to those of its k nearest neighbours at or above the threshold, searched
in blocks, so memory is the features plus k edges a face. Connected components chain two people
together through one bad edge; Chinese whispers (Biemann, 2006: each face takes the label that
carries the largest total edge weight among its neighbours, visiting faces in a seeded random
order until nothing changes) cuts such bridges, and is what dlib gives face_recognition's users.
Both are deterministic for the same input and seed. docs/clustering.md has the measurements that
chose the default.
"""
import numpy as np

from engine.evaluation.clustering import UNSORTED

METHODS = ("whispers", "components")
# Exact neighbours cost N^2: 55 s for 200,000 faces on 2 cores (docs/clustering.md#scale). Beyond,
# an IVF index searching NPROBE of its lists finds nearly all of them far sooner (1M faces: 4 min).
EXACT_UP_TO = 200_000
NPROBE = 48


def knn_edges(features, k=32, threshold=0.5, block=4096, queries=None, exact_up_to=EXACT_UP_TO):
    """(i, j, cosine) of every pair where j is among i's k nearest neighbours (i != j) with cosine
    >= threshold, each pair once (i < j), as three arrays. `features` are L2-normalised rows; with
    `queries` (row numbers), only those rows' neighbours are searched (a few new faces among many).
    Up to `exact_up_to` faces the neighbours are exact; beyond, an inverted-file index finds them
    (neighbour_index), whose time grows far slower than the square of the faces."""
    feats = np.ascontiguousarray(features, dtype=np.float32)
    n = len(feats)
    queries = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    if n < 2 or not len(queries):
        return _no_edges()
    index = neighbour_index(feats, exact=n <= exact_up_to)
    k = min(int(k) + 1, n)  # the face itself comes back too
    rows, cols, sims = [], [], []
    for start in range(0, len(queries), block):
        asked = queries[start:start + block]
        scores, ids = index.search(feats[asked], k)
        src = np.repeat(asked, k).reshape(len(ids), k)
        keep = (ids >= 0) & (ids != src) & (scores >= threshold)
        rows.append(src[keep])
        cols.append(ids[keep])
        sims.append(scores[keep])
    i, j, s = np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    key = lo * n + hi
    _, first = np.unique(key, return_index=True)  # a pair found from both ends counts once
    return lo[first].astype(np.int64), hi[first].astype(np.int64), s[first].astype(np.float32)


def neighbour_index(feats, exact=True):
    """A faiss inner-product index over `feats`: exact (Flat), or IVF with 4 x sqrt(N) lists trained
    on a sample (faiss's fixed k-means seed: the same input gives the same index), NPROBE searched."""
    import faiss

    dim = feats.shape[1]
    if exact:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = max(1, min(int(4 * np.sqrt(len(feats))), len(feats) // 39))  # 39 points a list: faiss's minimum
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = feats[np.random.default_rng(0).choice(len(feats), min(len(feats), 64 * lists), replace=False)]
        index.train(sample)
        index.nprobe = NPROBE
    index.add(feats)
    return index


def _no_edges():
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def connected_components(n, edges):
    """Labels 0.. by connected component (union-find), numbered by their first member."""
    parent = np.arange(n)

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(edges[0].tolist(), edges[1].tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(x) for x in range(n)], dtype=np.int64)
    return renumber(roots)


def chinese_whispers(n, edges, iterations=30, seed=0, steps_per_pass=16):
    """Labels 0.. by Chinese whispers over the weighted graph `edges` (i, j, weight).

    Each pass visits the faces in a seeded random order, in `steps_per_pass` steps; the faces of a
    step take their new labels together (numpy over the step's edges), so 100,000 faces take
    seconds, not minutes of a Python loop per face. Two neighbours in the same step could swap
    labels for ever; with 16 steps a pass that is rare and undone by the next pass. Ties go to the
    smaller label."""
    i, j, w = (np.asarray(a) for a in edges)
    labels = np.arange(n, dtype=np.int64)
    if n == 0 or len(i) == 0:
        return renumber(labels)
    # adjacency in CSR form: each undirected edge from both ends
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    weight = np.concatenate([w, w]).astype(np.float64)
    order = np.argsort(src, kind="stable")
    src, dst, weight = src[order], dst[order], weight[order]
    starts = np.searchsorted(src, np.arange(n + 1))
    rng = np.random.default_rng(seed)
    steps = max(1, min(int(steps_per_pass), n))
    for _ in range(int(iterations)):
        changed = 0
        for step in np.array_split(rng.permutation(n), steps):
            changed += _whisper_step(step, starts, dst, weight, labels)
        if not changed:
            break
    return renumber(labels)


def _whisper_step(nodes, starts, dst, weight, labels):
    """Give each of `nodes` the label of largest total weight among its neighbours; how many changed."""
    counts = starts[nodes + 1] - starts[nodes]
    nodes = nodes[counts > 0]
    counts = counts[counts > 0]
    if not len(nodes):
        return 0
    # the edge positions of these nodes, flattened, and which node each belongs to
    owner = np.repeat(np.arange(len(nodes)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    edge = starts[nodes][owner] + offsets
    votes_for = labels[dst[edge]]
    # total weight per (node, label), then the best label per node
    keys, inverse = np.unique(owner * (len(labels) + 1) + votes_for, return_inverse=True)
    totals = np.bincount(inverse, weights=weight[edge])
    key_owner, key_label = keys // (len(labels) + 1), keys % (len(labels) + 1)
    best = np.lexsort((key_label, -totals, key_owner))  # per node: largest total, then smallest label
    first = np.ones(len(best), bool)
    first[1:] = key_owner[best][1:] != key_owner[best][:-1]
    chosen = key_label[best][first]
    winners = nodes[key_owner[best][first]]
    changed = int(np.count_nonzero(labels[winners] != chosen))
    labels[winners] = chosen
    return changed


def group(features, threshold, method="whispers", k=32, seed=0, min_size=2, queries=None):
    """Labels of `features` (L2-normalised rows): 0.. per group of at least min_size faces, in
    order of their first face, and UNSORTED for the rest. With `queries` (row numbers), only groups
    those rows reach are formed: their neighbours are searched, then the neighbours' own, so many
    old faces cost one search each of the new ones and of the faces they touch, not a new graph."""
    if method not in METHODS:
        raise ValueError(f"unknown clustering method '{method}' (choose from {', '.join(METHODS)})")
    edges = knn_edges(features, k=k, threshold=threshold, queries=queries)
    if queries is not None and len(edges[0]):
        touched = np.union1d(np.union1d(edges[0], edges[1]), queries)
        edges = knn_edges(features, k=k, threshold=threshold, queries=touched)
    n = len(features)
    labels = chinese_whispers(n, edges, seed=seed) if method == "whispers" else connected_components(n, edges)
    return drop_small(labels, min_size)


def drop_small(labels, min_size=2):
    """Groups smaller than min_size become UNSORTED (-1); the rest renumbered 0.. by first member."""
    labels = np.asarray(labels, dtype=np.int64)
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    out = labels.copy()
    out[(counts < min_size)[inverse.reshape(-1)]] = UNSORTED
    kept = out != UNSORTED
    out[kept] = renumber(out[kept])
    return out


def renumber(labels):
    """The same grouping numbered 0.. in order of each group's first member (deterministic ids)."""
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return labels.copy()
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]
