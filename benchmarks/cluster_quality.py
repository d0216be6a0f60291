"""Face clustering quality (issue 27): our pipeline against face_recognition 1.3 + dlib's Chinese whispers, on LFW.

    python benchmarks/cluster_quality.py [--data ../shared/data/lfw_dev] [--limit-people N]
        [--model-dir output/brought_models/mobilefacenet_tf] [--threshold T] [--thresholds 0.3,0.4,...]
        [--threads 2] [--set Cluster.neighbours=64 ...] [--baseline-python /work/venv-dlib/bin/python]
        [--baseline-json FILE] [--baseline-also FILE ...] [--skip-baseline] [--skip-ours] [--json out.json]

The figures of docs/accuracy.md: the baseline once (about 7 minutes on 2 cores), its encodings
clustered again at other thresholds, then ours at several thresholds:

    python benchmarks/cluster_quality.py --skip-ours --baseline-json output/baseline.json
    for t in 0.5 0.45; do /work/venv-dlib/bin/python benchmarks/face_recognition_baseline.py \
        --recluster output/baseline.json --out output/baseline_t$t.json --threshold $t; done
    python benchmarks/cluster_quality.py --baseline-json output/baseline.json \
        --baseline-also output/baseline_t0.5.json output/baseline_t0.45.json --thresholds 0.55,0.6,0.65
    python benchmarks/cluster_quality.py --skip-baseline --threshold 0.6 --set Cluster.neighbours=64

The photos: every photo of lfw_dev (5,373 real LFW photos of 2,086 people, images/<Person>/*.jpg,
250x250, one labelled face near the centre, often other faces around it), or with --limit-people N
those of the first N people in name order (deterministic, for quick runs).

The systems:
  - baseline: face_recognition 1.3.0 with its defaults (HOG face_locations, face_encodings) and
    dlib.chinese_whispers_clustering at 0.6, run by benchmarks/face_recognition_baseline.py in its
    own virtualenv (--baseline-python; its JSON is kept in --baseline-json and reused by a later run
    over the same photos);
  - ours: create_pipeline with SubModules.Recognition.model_dir = --model-dir (a face model a user
    brings: by default MobileFaceNet_TF converted by benchmarks/bring_mobilefacenet.py) and
    Global.num_threads = --threads, clustered by pipeline.cluster() (the config's Cluster section
    otherwise) at --threshold (default: the pipeline's own, rec_threshold + Cluster.threshold_margin,
    rec_threshold being what the model folder's inference.yml records). --thresholds also scores other thresholds (ours only), one whole
    pipeline.cluster() call each, timed as such (detection and embedding included).

PROTOCOL
  - Each photo's labelled face is the face the system detected whose box holds the photo's centre
    (the nearest box centre when several do); its true label is the photo's folder name (the person).
  - Only labelled faces are scored; the other faces of a photo are clustered with the rest (they
    may pull clusters together) but not scored.
  - A photo where a system found no face holding the centre is a miss: it counts as a cluster of
    its own for that system (a miss is not free: it lowers recall). An unsorted face (cluster -1)
    is a cluster of its own too.
  - Reported per system: BCubed precision / recall / F and pairwise precision / recall / F
    (engine.evaluation.clustering) over the labelled faces; the number of clusters among them
    (each unsorted face and each miss one cluster) against the number of people; the clusters of
    two or more labelled faces; faces found in all photos; misses; the wall-clock seconds of
    detection + embedding and of clustering, with the CPU (lscpu's model name), the threads and
    the load average before and after each system's run.

Caveat: the baseline's detector and ours differ, so their labelled faces are not the same set of
boxes (each system is scored on its own finds, misses counted). The threshold recorded in the
brought model's inference.yml was measured on LFW pairs (bring_mobilefacenet.py --verify: folds
1-3 only), which share people with these photos.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine.evaluation.clustering import UNSORTED, _singletons, bcubed, pairwise_f  # noqa: E402

DEFAULT_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "lfw_dev"))
DEFAULT_MODEL = os.path.join(ROOT, "output", "brought_models", "mobilefacenet_tf")
BASELINE_SCRIPT = os.path.join(ROOT, "benchmarks", "face_recognition_baseline.py")
DEFAULT_BASELINE_PYTHON = "/work/venv-dlib/bin/python"
BASELINE_THRESHOLD = 0.6


# --------------------------------------------------------------------------- photos, conditions


def photo_set(data, limit_people=0):
    """(paths, truth): every photo under data/images/<Person>/, people in name order (the first
    `limit_people` only when given), each person's photos in name order; truth = the person."""
    images = os.path.join(data, "images")
    if not os.path.isdir(images):
        raise SystemExit(f"{images} does not exist (--data): the LFW dev photos are not on this machine")
    people = sorted(d for d in os.listdir(images) if os.path.isdir(os.path.join(images, d)) and not d.startswith("."))
    if limit_people:
        people = people[:int(limit_people)]
    paths, truth = [], []
    for person in people:
        for name in sorted(os.listdir(os.path.join(images, person))):
            if name.lower().endswith((".jpg", ".jpeg", ".png")):
                paths.append(os.path.join(images, person, name))
                truth.append(person)
    return paths, truth


def image_sizes(paths):
    """(width, height) of each photo from its header (LFW's JPEGs carry no EXIF rotation)."""
    from datasets.image_headers import image_header

    return [tuple(image_header(p)[1:3]) for p in paths]


def cpu_model():
    """lscpu's "Model name", else /proc/cpuinfo's."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from foundation.runtime import cpuinfo_field

    return cpuinfo_field("model name") or "unknown"


def load_average():
    return [round(v, 2) for v in os.getloadavg()]


# --------------------------------------------------------------------------- scoring


def central_face(boxes, size):
    """Index of the box holding the image centre (the nearest box centre when several do), or None."""
    cx, cy = size[0] / 2.0, size[1] / 2.0
    best, best_d = None, None
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            d = ((x1 + x2) / 2.0 - cx) ** 2 + ((y1 + y2) / 2.0 - cy) ** 2
            if best is None or d < best_d:
                best, best_d = i, d
    return best


def score(photos, truth, sizes):
    """The PROTOCOL's figures of one system. `photos`: per photo (in the order of `truth`) the list
    of its faces, each {"box": [x1, y1, x2, y2], "cluster": int (-1 unsorted)}, or None when the
    system could not read the photo (a miss)."""
    labels, misses, faces = [], 0, 0
    all_clusters = set()
    unsorted_faces = 0
    for found, size in zip(photos, sizes):
        found = found or []
        faces += len(found)
        for f in found:
            if f["cluster"] == UNSORTED:
                unsorted_faces += 1
            else:
                all_clusters.add(f["cluster"])
        i = central_face([f["box"] for f in found], size)
        if i is None:
            misses += 1
            labels.append(UNSORTED)  # a cluster of its own
        else:
            labels.append(int(found[i]["cluster"]))
    labels = np.array(labels, dtype=np.int64)
    truth_ids = np.unique(np.asarray(truth), return_inverse=True)[1]
    bp, br, bf = bcubed(labels, truth_ids)
    pp, pr, pf = pairwise_f(labels, truth_ids)
    expanded = _singletons(labels)
    values, counts = np.unique(expanded, return_counts=True)
    return {"photos": len(labels), "people": int(truth_ids.max() + 1) if len(labels) else 0,
            "faces_found": faces, "misses": misses, "labelled_faces": int(len(labels) - misses),
            "unsorted_labelled": int(np.sum((labels == UNSORTED))) - misses, "unsorted_faces": unsorted_faces,
            "clusters_scored": int(len(values)), "clusters_scored_2plus": int(np.sum(counts >= 2)),
            "clusters_all_faces": len(all_clusters) + unsorted_faces,
            "bcubed": {"precision": bp, "recall": br, "f": bf}, "pairwise": {"precision": pp, "recall": pr, "f": pf}}


# --------------------------------------------------------------------------- the baseline


def run_baseline(paths, baseline_python=DEFAULT_BASELINE_PYTHON, out_json=None, threshold=BASELINE_THRESHOLD,
                 save_encodings=True, log=print):
    """face_recognition + dlib's Chinese whispers over `paths`, run by BASELINE_SCRIPT in the
    other virtualenv; returns its JSON (also kept in `out_json` when given)."""
    if not os.path.isfile(baseline_python):
        raise SystemExit(f"--baseline-python {baseline_python} does not exist: create the face_recognition venv "
                         f"(see {os.path.relpath(BASELINE_SCRIPT, ROOT)}'s docstring) or pass --skip-baseline")
    with tempfile.TemporaryDirectory(prefix="cluster_quality_") as tmp:
        listing = os.path.join(tmp, "photos.txt")
        with open(listing, "w", encoding="utf-8") as f:
            f.writelines(p + "\n" for p in paths)
        out = os.path.abspath(out_json) if out_json else os.path.join(tmp, "baseline.json")
        cmd = [baseline_python, BASELINE_SCRIPT, "--list", listing, "--out", out, "--threshold", str(threshold)]
        if save_encodings:
            cmd.append("--save-encodings")
        log(f"baseline: {' '.join(cmd[:2])} over {len(paths)} photos ...")
        proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, cwd=tmp)
        if proc.returncode != 0:
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            raise SystemExit(f"the baseline failed: {tail[0]}")
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def baseline_photos(result, paths):
    """The baseline JSON's faces per photo, in the order of `paths` (which it must cover exactly)."""
    by_path = {p["path"]: p for p in result["photos"]}
    if sorted(by_path) != sorted(paths):
        raise SystemExit("the baseline JSON holds other photos than this run's (run it again without --baseline-json, "
                         "or give the same --limit-people)")
    return [None if "error" in by_path[p] else by_path[p]["faces"] for p in paths]


# --------------------------------------------------------------------------- ours


def ours(paths, model_dir=DEFAULT_MODEL, thresholds=(None,), threads=2, seed=0, config=None, log=print):
    """Our pipeline's clusters of `paths` at each threshold (None: the pipeline's default, rec_threshold +
    Cluster.threshold_margin), one pipeline.cluster() call each: (that default, {threshold: {"photos": [faces of each photo],
    "seconds", "settings"}}), each face {"box", "det_score", "cluster", "quality"}. `config`: more
    pipeline config overrides ({"Cluster.neighbours": 64})."""
    from dataclasses import asdict

    from engine.recognition.pipeline import create_pipeline

    pipe = create_pipeline(config={"SubModules.Recognition.model_dir": model_dir, "Global.num_threads": threads,
                                   **(config or {})})
    try:
        default, source = pipe.cluster_threshold()
        log(f"ours: {pipe.model!r}; default clustering threshold {default:.3f} ({source})")
        runs = {}
        for t in thresholds:
            t0 = time.perf_counter()
            book = pipe.cluster(paths, output=None, threshold=t, seed=seed, progress=False)
            seconds = time.perf_counter() - t0
            by_source = {os.path.abspath(p): [] for p in paths}
            for f in book.faces:
                by_source[os.path.abspath(f["source"])].append({
                    "box": [float(v) for v in f["box"]], "det_score": float(f.get("det_score", 0.0)),
                    "cluster": int(f["cluster"]), "quality": f.get("quality")})
            settings = asdict(pipe.cluster_settings(threshold=t, seed=seed))
            runs[float(settings["threshold"])] = {
                "photos": [by_source[os.path.abspath(p)] for p in paths], "settings": settings,
                "seconds": {"cluster_call": round(seconds, 3)}, "workers": pipe.worker_processes}
            log(f"ours: threshold {settings['threshold']:.3f}: {len(book.faces)} faces in {seconds:.1f} s")
        return default, runs
    finally:
        pipe.close()


# --------------------------------------------------------------------------- report


def _row(name, threshold, s, seconds):
    b, p = s["bcubed"], s["pairwise"]
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    return (f"{name:<10} {threshold:>6} {s['faces_found']:>6} {s['misses']:>6} {s['clusters_scored']:>6} "
            f"{s['clusters_scored_2plus']:>5} {b['precision']:.4f} {b['recall']:.4f} {b['f']:.4f}  "
            f"{p['precision']:.4f} {p['recall']:.4f} {p['f']:.4f}  {secs}")


def print_table(report, log=print):
    c = report["conditions"]
    log(f"{report['photos']} photos of {report['people']} people ({report['data']}); CPU {c['cpu']} "
        f"({c['cores']} cores), --threads {c['threads']}")
    log(f"{'system':<10} {'thr':>6} {'faces':>6} {'misses':>6} {'clust':>6} {'>=2':>5} "
        f"{'BCubed P / R / F':<20}  {'pairwise P / R / F':<20}  seconds")
    if "baseline" in report:
        b = report["baseline"]
        log(_row("dlib", f"{b['threshold']:.2f}", b["score"], b["seconds"]) + f"  (load {b['load_average']})")
        for b in report.get("baseline_also", []):
            log(_row("dlib", f"{b['threshold']:.2f}", b["score"], {"cluster": b["seconds"]["cluster"]})
                + "  (same encodings, clustered again)")
    for run in report.get("ours", []):
        mark = " *" if run["default"] else ""
        log(_row("ours" + mark, f"{run['threshold']:.3f}", run["score"], run["seconds"]) + f"  (load {run['load_average']})")
    log("clust: clusters among the labelled faces (each miss and unsorted face one); >=2: those of two or more; "
        "misses: photos without a detected face holding the centre; * ours at --threshold, else at the pipeline's "
        "default (rec_threshold + Cluster.threshold_margin)")
    if report.get("ours"):
        st = report["ours"][0]["settings"]
        log(f"ours: pipeline.cluster() ({st['method']}, {st['neighbours']} neighbours, groups under "
            f"{st['min_cluster_size']} unsorted, faces under {st['min_face_size']} px or det score "
            f"{st['min_det_score']} unsorted), {report['ours'][0]['workers']} worker processes at the end")


def _baseline_entry(result, paths, truth, sizes):
    return {"threshold": result["settings"]["chinese_whispers_clustering"]["threshold"],
            "versions": result["versions"], "settings": result["settings"],
            "seconds": {"detect_encode": result["seconds"]["detect_encode"], "cluster": result["seconds"]["cluster"]},
            "load_average": [result.get("load_average_before"), result.get("load_average_after")],
            "reclustered_from": result.get("reclustered_from"), "cpu_seen_by_baseline": result.get("cpu"),
            "score": score(baseline_photos(result, paths), truth, sizes)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="the lfw_dev folder (images/<Person>/*.jpg)")
    ap.add_argument("--limit-people", type=int, default=0, help="only the first N people in name order (0: all)")
    ap.add_argument("--model-dir", default=DEFAULT_MODEL, help="our feature model (an inference folder)")
    ap.add_argument("--threshold", type=float, default=None, help="ours: the cosine threshold (default: the pipeline's, "
                    "rec_threshold + Cluster.threshold_margin)")
    ap.add_argument("--thresholds", default="", help="ours: also these thresholds, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="ours: a pipeline config override, e.g. --set Cluster.neighbours=64 (repeatable)")
    ap.add_argument("--baseline-python", default=DEFAULT_BASELINE_PYTHON)
    ap.add_argument("--baseline-json", default=None,
                    help="the baseline's JSON: read when it exists (same photos), else written there")
    ap.add_argument("--baseline-also", nargs="*", default=[],
                    help="more baseline JSONs of the same photos to score (e.g. face_recognition_baseline.py "
                         "--recluster at other thresholds)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--json", default=None, help="write the report here")
    args = ap.parse_args(argv)

    paths, truth = photo_set(args.data, args.limit_people)
    sizes = image_sizes(paths)
    report = {"data": args.data, "photos": len(paths), "people": len(set(truth)),
              "limit_people": args.limit_people or None,
              "conditions": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads}}
    if not args.skip_baseline:
        before = load_average()
        if args.baseline_json and os.path.isfile(args.baseline_json):
            with open(args.baseline_json, encoding="utf-8") as f:
                result = json.load(f)
            print(f"baseline: read {args.baseline_json}")
        else:
            result = run_baseline(paths, args.baseline_python, args.baseline_json)
            result["load_average_before"] = result.get("load_average_before", before)
        report["baseline"] = _baseline_entry(result, paths, truth, sizes)
        report["baseline_also"] = []
        for extra in args.baseline_also:
            with open(extra, encoding="utf-8") as f:
                report["baseline_also"].append(dict(_baseline_entry(json.load(f), paths, truth, sizes), file=extra))
    if not args.skip_ours:
        thresholds = [args.threshold] + [float(t) for t in args.thresholds.split(",") if t.strip()]
        before = load_average()
        import yaml

        overrides = {k.strip(): yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.set)}
        report["ours_config"] = overrides
        default, runs = ours(paths, args.model_dir, thresholds, args.threads, args.seed, overrides)
        after = load_average()
        chosen = default if args.threshold is None else args.threshold
        report["ours"] = []
        for t, run in sorted(runs.items()):
            report["ours"].append({"threshold": t, "default": t == chosen, "default_threshold": default,
                                   "settings": run["settings"], "workers": run["workers"],
                                   "seconds": run["seconds"], "load_average": [before, after],
                                   "model_dir": args.model_dir, "score": score(run["photos"], truth, sizes)})
    print_table(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
