"""Clustering at scale: time and memory to group 100,000 faces (synthetic features), and to add more.

Protocol: N synthetic face features of dimension --dim (128, MobileFaceNet's), people drawn with a
long tail as photo collections have (faces per person 1 + a log-normal draw, median 4, mean about
8, a few people in hundreds of photos; cut to N in all), each face its person's random unit
centre plus Gaussian noise (--noise 0.8: two faces of one person have cosine ~0.6, as two photos of
a person do with a good face model; different people ~0 +- 0.09). The faces are grouped the way
`Global.mode=cluster` groups them (engine.clustering.book.ClusterBook.add: the kNN graph through
faiss in blocks, Chinese whispers, groups under 2 unsorted) at --threshold, then --more new faces
of the same people are added to the result (the incremental path: nearest clustered faces first,
then the leftovers grouped).

Each size runs in a process of its own so that its peak memory (ru_maxrss) is its own; the
features alone are N x dim x 4 bytes. Printed per size: time of the first grouping and of the
addition, peak resident memory, clusters found against people, and BCubed F (the unsorted counted as
singletons). The CPU, the threads and the load average are printed beside the figures.

    python benchmarks/cluster_scale.py                       # 100,000 faces, 1,000 added
    python benchmarks/cluster_scale.py --sizes 10000 100000 200000 --threads 1
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synthetic_faces(n, dim, noise, seed):
    """(features [n, dim] unit rows, person per face) with a long-tailed number of faces per person."""
    rng = np.random.default_rng(seed)
    sizes = (1 + np.floor(rng.lognormal(1.2, 1.2, size=n))).astype(np.int64)
    sizes = sizes[:int(np.searchsorted(np.cumsum(sizes), n)) + 1]
    sizes[-1] -= int(sizes.sum()) - n
    truth = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    centres = rng.standard_normal((len(sizes), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    feats = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):  # in blocks: never a second n x dim float64 array
        block = centres[truth[s:s + 65536]] + noise * rng.standard_normal((len(truth[s:s + 65536]), dim),
                                                                           dtype=np.float32) / np.sqrt(dim)
        feats[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return feats, truth, centres


def worker(args):
    import faiss

    from engine.clustering.book import ClusterBook, ClusterSettings
    from engine.evaluation.clustering import bcubed

    faiss.omp_set_num_threads(args.threads)
    feats, truth, _ = synthetic_faces(args.size + args.more, args.dim, args.noise, args.seed)
    first, later = slice(0, args.size), slice(args.size, args.size + args.more)
    faces = [{"source": f"synthetic/{k}.jpg", "box": [0, 0, 100, 100], "det_score": 0.99}
             for k in range(args.size + args.more)]
    settings = ClusterSettings(threshold=args.threshold, neighbours=args.neighbours)
    book = ClusterBook.new({"name": "synthetic", "embedding_size": args.dim, "fingerprint": "synthetic"})
    start = time.perf_counter()
    book.add(faces[first], feats[first], settings)
    group_s = time.perf_counter() - start
    clusters = len(book.cluster_ids())
    f_first = bcubed(book.labels, truth[first])[2]
    start = time.perf_counter()
    if args.more:
        book.add(faces[later], feats[later], settings)
    add_s = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"faces": args.size, "people": int(len(np.unique(truth[first]))), "clusters": clusters,
                      "bcubed_f": round(f_first, 4), "group_s": round(group_s, 1), "added": args.more,
                      "add_s": round(add_s, 2), "bcubed_f_after": round(bcubed(book.labels, truth)[2], 4),
                      "peak_mb": round(peak_mb), "features_mb": round(feats[first].nbytes / 2 ** 20, 1),
                      "load": round(os.getloadavg()[0], 2)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100000])
    parser.add_argument("--more", type=int, default=1000, help="faces added to each result afterwards")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--noise", type=float, default=0.8)
    parser.add_argument("--threshold", type=float, default=0.45)
    parser.add_argument("--neighbours", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)  # a worker's size
    args = parser.parse_args()
    if args.size:
        return worker(args)
    from foundation.runtime import cpu_summary

    print(f"CPU: {cpu_summary()}; faiss threads {args.threads}; load before {os.getloadavg()[0]:.2f}")
    print(f"synthetic faces, dim {args.dim}, noise {args.noise} (same person ~{1 / (1 + args.noise ** 2):.2f} "
          f"cosine), threshold {args.threshold}, {args.neighbours} neighbours, Chinese whispers")
    print(f"{'faces':>8} {'people':>7} {'clusters':>8} {'BCubed F':>8} {'group s':>8} {'+faces':>7} {'add s':>6} "
          f"{'F after':>8} {'peak MB':>8} {'feats MB':>8} {'load':>5}")
    for size in args.sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--size", str(size)] + \
              [f"--{k}={v}" for k, v in vars(args).items() if k not in ("sizes", "size")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"{r['faces']:>8} {r['people']:>7} {r['clusters']:>8} {r['bcubed_f']:>8.4f} {r['group_s']:>8.1f} "
              f"{r['added']:>7} {r['add_s']:>6.2f} {r['bcubed_f_after']:>8.4f} {r['peak_mb']:>8} "
              f"{r['features_mb']:>8} {r['load']:>5}")


if __name__ == "__main__":
    main()
