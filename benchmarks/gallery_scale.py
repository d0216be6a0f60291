"""Gallery scale: build time, memory, queries/s and recall@1 of each index backend and type at 100k-10M faces.

Protocol: a synthetic gallery of N unit vectors (Gaussian, L2-normalised, dimension --dim, default
128 as MobileFaceNet's) generated batch by batch from a seed, so it is never held whole in memory and
the index is built the way a large gallery streams in (GalleryIndex.add per batch of --batch; the
compressed types train on the first --train vectors). Queries are Q gallery vectors plus Gaussian
noise of relative size --noise (re-normalised): with the default 1.0 a query has cosine ~0.71 with
its source vector (about two photos of one person) and is far from every other one, so its nearest
neighbour is known: the source. The Flat rows check that exact search finds it (recall 1.000), so
recall@1 = how often a type's top-1 is that source = agreement with exact search.

Every setting runs in its own process (a worker: `--worker TYPE`) so its memory is its own:
  build_s    wall time to add (and train) the whole gallery
  index_mb   resident memory the built index adds to the process (RSS after the build minus before;
             the milvus-lite server process counted in for Milvus Lite); the peak during the build
             adds at most one batch of --batch vectors
  loaded_mb  resident memory after saving and loading it again (faiss: the serving situation; exact
             features of a rerank type are memory-mapped and count only the pages read, with the
             kernel's fault-around neighbours)
  anon_mb    the same without file-backed pages: the memory the index really holds
  qps_1 / qps_64  queries per second, one query per call / 64 per call (top-5)
  recall@1   as above
Rows: Flat, IVFPQ (nprobe 32 and 128), IVFPQ with rerank 8, HNSWSQ, HNSWSQ with rerank 4, IVF,
HNSW, Milvus Lite (FLAT). faiss uses --threads OpenMP threads (--build-threads while building);
--sweep measures several nprobe (IVF types) or ef_search (HNSW types) values on one build, a row
each. Each row says the CPU and the range of the 1-minute load average while it ran.

    python benchmarks/gallery_scale.py --sizes 100000 1000000           # everything at 100k and 1M
    python benchmarks/gallery_scale.py --sizes 10000000 --types Flat IVFPQ
    python benchmarks/gallery_scale.py --sizes 20000 --types Flat milvus --queries 200   # a quick check
    python benchmarks/gallery_scale.py --sizes 10000000 --dim 128 --types IVFPQ --sweep 256 512 1024
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# OpenMP threads that sleep when idle: spinning ones slow batch-1 search many times on a busy machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.gallery.faiss_index import GalleryIndex, l2_normalize_rows, set_search_threads  # noqa: E402

# name -> (index_type, settings); "milvus" is Milvus Lite (engine.gallery.milvus_index, FLAT)
SETTINGS = {
    "Flat": ("Flat", {}),
    "IVFPQ": ("IVFPQ", {"nprobe": 32}),
    "IVFPQ-np128": ("IVFPQ", {"nprobe": 128}),
    "IVFPQ-rerank8": ("IVFPQ", {"nprobe": 128, "rerank": 8}),
    "HNSWSQ": ("HNSWSQ", {}),
    "HNSWSQ-rerank4": ("HNSWSQ", {"rerank": 4}),
    "HNSWSQ-ef256-rerank4": ("HNSWSQ", {"rerank": 4, "ef_search": 256}),
    "IVFPQ-np256-rerank8": ("IVFPQ", {"nprobe": 256, "rerank": 8}),
    "IVFPQ-np512": ("IVFPQ", {"nprobe": 512}),
    "IVF": ("IVF", {"nprobe": 32}),
    "HNSW": ("HNSW", {}),
    "milvus": ("Flat", {}),
}


def rss_mb(pids=None, anon=False):
    """Resident memory (MB) of this process (+ the given pids), from /proc; `anon`: without the
    file-backed pages (a memory-mapped file's clean pages, which the kernel can drop at any time)."""
    total = 0
    for pid in [os.getpid()] + list(pids or []):
        try:
            with open(f"/proc/{pid}/statm") as f:
                fields = f.read().split()
            total += (int(fields[1]) - (int(fields[2]) if anon else 0)) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            pass
    return total / 2**20


def child_pids():
    """Pids of this process' children (the milvus-lite server)."""
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def gallery_batches(num, dim, batch, seed):
    """(start, unit vectors) batch by batch; the same seed gives the same gallery."""
    for b, start in enumerate(range(0, num, batch)):
        rng = np.random.default_rng([seed, b])
        yield start, l2_normalize_rows(rng.standard_normal((min(batch, num - start), dim), dtype=np.float32))


def make_queries(num, dim, batch, seed, queries, noise):
    """(query vectors, source ids): gallery vectors plus noise, without holding the gallery."""
    rng = np.random.default_rng([seed, 10**6])
    picks = np.sort(rng.choice(num, min(queries, num), replace=False))
    sources = []
    for start, vecs in gallery_batches(num, dim, batch, seed):
        inside = picks[(picks >= start) & (picks < start + len(vecs))]
        sources.append(vecs[inside - start])
    src = np.concatenate(sources)
    q = l2_normalize_rows(src + noise * rng.standard_normal(src.shape, dtype=np.float32) / np.sqrt(dim))
    return q, picks.astype(np.int64)


def measure(index, q, truth, per_call_1=100):
    """(qps at batch 1, qps at batch 64, recall@1 against the known source)."""
    n1 = min(per_call_1, len(q))
    for i in range(min(5, n1)):
        index.search(q[i:i + 1], top_k=5)
    t = time.perf_counter()
    for i in range(n1):
        index.search(q[i:i + 1], top_k=5)
    qps1 = n1 / (time.perf_counter() - t)
    top1 = []
    t = time.perf_counter()
    for s in range(0, len(q), 64):
        _, _, ids = index.search(q[s:s + 64], top_k=5)
        top1.extend(int(r[0]) if len(r) else -1 for r in ids)
    qps64 = len(q) / (time.perf_counter() - t)
    return qps1, qps64, float(np.mean(np.asarray(top1) == truth))


def build_phase(args, name, index_type, settings, folder):
    """Build the index from the streamed gallery and save it in `folder`; the row's build figures."""
    if name == "milvus":
        from engine.gallery.milvus_index import MilvusGalleryIndex

        index = MilvusGalleryIndex.create(os.path.join(folder, "bench.db"), "bench", args.dim, "bench",
                                          call_timeout=600)
        before = rss_mb(child_pids())
    else:
        before = rss_mb()
        index = GalleryIndex(args.dim, "bench", index_type, nprobe=settings.get("nprobe", 32),
                             rerank=settings.get("rerank", 0))
        index.planned_size = args.num
    t0 = time.perf_counter()
    pending, milvus_ids = [], []
    first = args.train if index_type in ("IVFPQ", "IVF", "HNSWSQ") and name != "milvus" else args.batch
    for start, vecs in gallery_batches(args.num, args.dim, args.batch, args.seed):
        pending.append(vecs)
        if sum(len(v) for v in pending) < first and start + len(vecs) < args.num:
            continue  # the first add trains: give it --train vectors
        vecs = np.concatenate(pending) if len(pending) > 1 else pending[0]
        pending, first = [], 0
        new_ids = index.add(vecs, [f"p{(start + i) // 5}" for i in range(len(vecs))])  # 5 faces per person
        if name == "milvus":
            milvus_ids.append(new_ids)
        print(f"  {name}: {len(index)} / {args.num} added, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)
    build = time.perf_counter() - t0
    row = {"name": name, "num": args.num, "dim": args.dim, "build_s": round(build, 1),
           "index_mb": round(rss_mb(child_pids()) - before), "nlist": getattr(index, "nlist", None)}
    if name == "milvus":
        np.save(os.path.join(folder, "ids.npy"), np.concatenate(milvus_ids))  # Milvus' id of each position
        index.close()
    else:
        index.save(os.path.join(folder, "ix"))
    return row


def sweep_knob(index_type):
    """The search-time setting --sweep varies for a type (None: nothing to vary)."""
    return {"IVF": "nprobe", "IVFPQ": "nprobe", "HNSW": "ef_search", "HNSWSQ": "ef_search"}.get(index_type)


def query_phase(args, name, folder):
    """Load the saved index in a fresh process (the serving situation) and measure it: one row, or
    one per --sweep value of the type's search setting (nprobe / ef_search) on the same loaded index."""
    q, truth = make_queries(args.num, args.dim, args.batch, args.seed, args.queries, args.noise)
    before, before_anon = rss_mb(), rss_mb(anon=True)
    knob = None if name == "milvus" else sweep_knob(SETTINGS[name][0])
    if name == "milvus":
        from engine.gallery.milvus_index import MilvusGalleryIndex

        index = MilvusGalleryIndex.open(os.path.join(folder, "bench.db"), "bench", call_timeout=600)
        truth = np.load(os.path.join(folder, "ids.npy"))[truth]
        index.search(q[:1], top_k=5)  # Milvus loads the collection on the first search
        loaded = rss_mb(child_pids()) - before
    else:
        index = GalleryIndex.load(os.path.join(folder, "ix"))
        index.ef_search = SETTINGS[name][1].get("ef_search", index.ef_search)
        loaded = rss_mb() - before
    rows = []
    for value in (args.sweep if knob and args.sweep else [None]):
        if value is not None:
            setattr(index, knob, int(value))
        qps1, qps64, recall = measure(index, q, truth)
        anon = None
        if name != "milvus":
            loaded = max(loaded, rss_mb() - before)  # with the pages the searches read (memory-mapped rerank)
            anon = round(rss_mb(anon=True) - before_anon)
        rows.append({"loaded_mb": round(loaded), "anon_mb": anon, "qps_1": round(qps1, 1),
                     "qps_64": round(qps64, 1), "recall@1": round(recall, 4),
                     "search": f"{knob} {value}" if value is not None else None})
    return rows


def worker(args):
    name = args.worker
    index_type, settings = SETTINGS[name]
    if args.phase == "build":
        set_search_threads(args.build_threads or args.threads)
        print(json.dumps(build_phase(args, name, index_type, settings, args.folder)), flush=True)
    else:
        set_search_threads(args.threads)
        for row in query_phase(args, name, args.folder):
            print(json.dumps(row), flush=True)


def load_text():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def load_1min():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--types", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=100_000, help="vectors per add (memory bound of the build)")
    ap.add_argument("--train", type=int, default=200_000, help="vectors the compressed/IVF types train on")
    ap.add_argument("--threads", type=int, default=1, help="faiss threads (1: on a shared machine two OpenMP "
                    "threads spin against other work; batch-1 search gets many times slower)")
    ap.add_argument("--build-threads", type=int, default=None, help="faiss threads while building (default: "
                    "--threads); queries always run on --threads")
    ap.add_argument("--sweep", type=int, nargs="+", default=None, help="search settings to measure on one build: "
                    "nprobe of IVF/IVFPQ, ef_search of HNSW/HNSWSQ (one row each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="folder for the saved indexes (default: the system's)")
    ap.add_argument("--out", default=None, help="also append the JSON rows to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--num", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--phase", default="build", help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, faiss threads {args.threads} (build "
          f"{args.build_threads or args.threads}), dim {args.dim}, {args.queries} queries, noise {args.noise}, "
          f"load average at start {load_text()}")
    print(f"{'setting':<16}{'N':>10}{'build s':>9}{'index MB':>10}{'loaded MB':>10}{'anon MB':>9}{'q/s @1':>9}"
          f"{'q/s @64':>9}{'recall@1':>10}  load")
    for num in args.sizes:
        for name in args.types:
            folder = tempfile.mkdtemp(prefix="gallery_scale_", dir=args.tmp)
            build, rows, loads = {}, [], LoadSampler()
            try:
                for phase in ("build", "query"):
                    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--num", str(num),
                           "--phase", phase, "--folder", folder]
                    for key in ("dim", "queries", "noise", "batch", "train", "threads", "seed"):
                        cmd += [f"--{key}", str(getattr(args, key))]
                    if args.build_threads:
                        cmd += ["--build-threads", str(args.build_threads)]
                    if args.sweep:
                        cmd += ["--sweep", *map(str, args.sweep)]
                    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
                    out = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
                    if done.returncode or not out:
                        raise RuntimeError(f"{phase} exit {done.returncode}")
                    if phase == "build":
                        build = out[-1]
                    else:
                        rows = [dict(build, **row) for row in out]
            except RuntimeError as e:
                print(f"{name:<16}{num:>10}  failed ({e})")
                continue
            finally:
                loads.stop()
                shutil.rmtree(folder, ignore_errors=True)
            for r in rows:
                r.update(load=loads.text(), cpu=cpu_model(), threads=args.threads,
                         build_threads=args.build_threads or args.threads)
                label = name if not r.get("search") else f"{name} {r['search']}"
                anon = "-" if r.get("anon_mb") is None else r["anon_mb"]
                print(f"{label:<16}{num:>10}{r['build_s']:>9}{r['index_mb']:>10}{r['loaded_mb']:>10}{anon:>9}"
                      f"{r['qps_1']:>9}{r['qps_64']:>9}{r['recall@1']:>10}  {r['load']}", flush=True)
                if args.out:
                    with open(args.out, "a", encoding="utf-8") as f:
                        f.write(json.dumps(r) + "\n")


class LoadSampler:
    """The 1-minute load average every 5 s while a row runs (a shared machine: say how loaded it was)."""

    def __init__(self):
        import threading

        self.values, self._stop = [load_1min()], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(5):
            self.values.append(load_1min())

    def stop(self):
        self._stop.set()
        self.values.append(load_1min())

    def text(self):
        return f"load average {min(self.values):.1f}-{max(self.values):.1f}"


if __name__ == "__main__":
    main()
