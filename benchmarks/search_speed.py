"""Gallery search speed: build time and per-query latency of Flat, IVF and HNSW on faiss.

Protocol: N random unit vectors (Gaussian, L2-normalised) of dimension D as the gallery, labels
"p<i // 10>"; queries are gallery vectors plus Gaussian noise of relative size --noise
(re-normalised): with the default 1.0 a query has cosine ~0.71 with its source vector, about what
two photos of one person give, and ~0 with the rest. Latency = wall time of GalleryIndex.search for ONE query (the recognise path:
one face at a time), median and 95th percentile over Q queries after a warm-up; also the
throughput of one batched call with all Q queries. Recall@1 = how often IVF/HNSW return the same
top-1 id as exact Flat search. Threads: faiss uses --threads OpenMP threads (default 2).

    python benchmarks/search_speed.py                   # 100,000 x {128, 512}, all index types
    python benchmarks/search_speed.py --num 20000 --dims 128 --types Flat IVF
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.gallery.faiss_index import GalleryIndex, l2_normalize_rows  # noqa: E402


def measure(index, q, queries):
    """Single-query latencies (ms) after a warm-up, top-1 ids, and batched throughput."""
    for i in range(min(10, queries)):
        index.search(q[i:i + 1], top_k=5)
    times, top1 = [], []
    for i in range(queries):
        t = time.perf_counter()
        _, _, ids = index.search(q[i:i + 1], top_k=5)
        times.append(time.perf_counter() - t)
        top1.append(int(ids[0][0]) if len(ids[0]) else -1)
    t = time.perf_counter()
    index.search(q, top_k=5)
    batch = time.perf_counter() - t
    times = np.asarray(times) * 1000
    return float(np.median(times)), float(np.percentile(times, 95)), queries / batch, np.asarray(top1)


def bench(num, dim, index_type, queries, nprobes, noise=1.0, seed=0):
    """Yield one result row per setting (one per nprobe for IVF)."""
    rng = np.random.default_rng(seed)
    gallery = l2_normalize_rows(rng.standard_normal((num, dim), dtype=np.float32))
    labels = [f"p{i // 10}" for i in range(num)]
    t0 = time.perf_counter()
    index = GalleryIndex(dim, "bench", index_type, nprobe=nprobes[0])
    index.add(gallery, labels)
    build = time.perf_counter() - t0
    pick = rng.choice(num, queries, replace=False)
    q = l2_normalize_rows(gallery[pick] + noise * rng.standard_normal((queries, dim), dtype=np.float32) / np.sqrt(dim))
    source_cos = float(np.mean(np.sum(q * gallery[pick], axis=1)))
    for nprobe in (nprobes if index_type == "IVF" else nprobes[:1]):
        index.nprobe = nprobe
        p50, p95, qps, top1 = measure(index, q, queries)
        yield {"type": index_type, "num": num, "dim": dim, "build_s": build, "p50_ms": p50, "p95_ms": p95,
               "batch_qps": qps, "nlist": index.nlist, "nprobe": nprobe, "top1": top1, "truth": pick,
               "source_cos": source_cos}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, default=100_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--types", nargs="+", default=["Flat", "IVF", "HNSW"])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128], help="IVF lists searched (one row each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--noise", type=float, default=1.0, help="query noise relative to a unit vector")
    args = ap.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {args.threads} threads, {args.queries} single queries, top_k 5, "
          f"HNSW efSearch 64, query noise {args.noise}")
    print("| index | gallery | dim | build s | query p50 ms | query p95 ms | batch queries/s | recall@1 vs Flat |"
          " top-1 = source |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dim in args.dims:
        flat_top1 = None
        for t in args.types:
            for r in bench(args.num, dim, t, args.queries, args.nprobe, args.noise):
                if t == "Flat":
                    flat_top1 = r["top1"]
                recall = "exact" if t == "Flat" else (
                    f"{np.mean(r['top1'] == flat_top1):.3f}" if flat_top1 is not None else "n/a")
                name = {"IVF": f"IVF (nlist {r['nlist']}, nprobe {r['nprobe']})", "HNSW": "HNSW32"}.get(t, t)
                print(f"| {name} | {r['num']:,} | {dim} | {r['build_s']:.2f} | {r['p50_ms']:.2f} | "
                      f"{r['p95_ms']:.2f} | {r['batch_qps']:.0f} | {recall} | "
                      f"{np.mean(r['top1'] == r['truth']):.3f} |", flush=True)
        print(f"(dim {dim}: mean cosine of a query with its source vector {r['source_cos']:.2f})")

if __name__ == "__main__":
    main()
