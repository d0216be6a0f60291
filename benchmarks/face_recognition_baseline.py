"""The face clustering baseline: face_recognition 1.3 (dlib) finds, encodes and clusters the faces of photos.

    <dlib venv>/bin/python benchmarks/face_recognition_baseline.py --list photos.txt --out baseline.json
                                                                   [--threshold 0.6] [--save-encodings]
    <dlib venv>/bin/python benchmarks/face_recognition_baseline.py --recluster baseline.json --out b_05.json
                                                                   --threshold 0.5

Runs in a virtualenv of its own, apart from the project's (it imports nothing of the project):

    python3 -m venv /work/venv-dlib
    /work/venv-dlib/bin/pip install dlib-bin face_recognition_models numpy pillow
    /work/venv-dlib/bin/pip install face_recognition==1.3.0 --no-deps

What face_recognition's users get with its defaults, per photo of the list (one path a line):
face_recognition.load_image_file (RGB), face_locations (HOG detector, upsampled once),
face_encodings on those locations (the 5-landmark model, num_jitters 1: 128-d); then every
encoding of every photo is clustered at once by dlib.chinese_whispers_clustering at --threshold
(0.6, the distance face_recognition and dlib document for "same person"; an edge joins two faces
whose encodings are closer than it). Written as JSON: per photo its size and faces ([x1, y1, x2,
y2] boxes, the cluster of each, the encodings with --save-encodings), the wall-clock seconds of
loading, of detection + encoding and of clustering, the versions, the CPU and the load average.
benchmarks/cluster_quality.py runs this and scores it.

--recluster takes such a JSON written with --save-encodings and clusters its encodings again at
--threshold (nothing detected or encoded again; the detection + encoding seconds are copied).
"""
import argparse
import json
import os
import platform
import sys
import time


def cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == "model name":
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions():
    from importlib.metadata import PackageNotFoundError, version

    import dlib
    import face_recognition
    import numpy

    out = {"python": platform.python_version(), "dlib": dlib.__version__, "numpy": numpy.__version__,
           "face_recognition_module_version": getattr(face_recognition, "__version__", None)}
    for dist in ("face_recognition", "face_recognition_models", "dlib-bin", "dlib"):
        try:
            out[f"dist:{dist}"] = version(dist)
        except PackageNotFoundError:
            pass
    # face_recognition 1.3.0's module says "1.2.3": the installed distribution is the one to trust
    out["face_recognition"] = out.get("dist:face_recognition") or out["face_recognition_module_version"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", help="a text file: one photo path a line")
    ap.add_argument("--recluster", help="a JSON of this script (with encodings): cluster it again at --threshold")
    ap.add_argument("--out", required=True, help="the JSON to write")
    ap.add_argument("--threshold", type=float, default=0.6, help="chinese_whispers_clustering's distance threshold")
    ap.add_argument("--save-encodings", action="store_true", help="also write each face's 128-d encoding")
    ap.add_argument("--progress", type=int, default=250, help="a progress line every N photos (stderr)")
    args = ap.parse_args(argv)

    try:
        import dlib
        import face_recognition
    except ImportError as e:
        raise SystemExit(f"{e}: run this with the python of the venv where face_recognition is installed "
                         "(see this script's docstring)") from None
    if not hasattr(dlib, "chinese_whispers_clustering"):
        raise SystemExit(f"dlib {dlib.__version__} has no chinese_whispers_clustering")
    if args.recluster:
        return recluster(args, dlib)
    if not args.list:
        raise SystemExit("give --list (photos) or --recluster (a JSON with encodings)")
    with open(args.list, encoding="utf-8") as f:
        paths = [ln.rstrip("\n") for ln in f if ln.strip()]
    out = {"tool": "face_recognition", "versions": versions(), "cpu": cpu_name(), "cores": os.cpu_count(),
           "threads": "dlib's HOG detector and encoder run on 1 thread",
           "load_average_before": [round(v, 2) for v in os.getloadavg()],
           "settings": {"face_locations": {"model": "hog", "number_of_times_to_upsample": 1},
                        "face_encodings": {"model": "small", "num_jitters": 1},
                        "chinese_whispers_clustering": {"threshold": args.threshold}},
           "photos": []}
    encodings, owners = [], []
    load_s = detect_encode_s = 0.0
    t_start = time.perf_counter()
    for k, path in enumerate(paths, 1):
        entry = {"path": path}
        t0 = time.perf_counter()
        try:
            img = face_recognition.load_image_file(path)
        except Exception as e:  # an unreadable photo is recorded, the rest go on
            entry["error"] = f"{type(e).__name__}: {e}"
            out["photos"].append(entry)
            continue
        t1 = time.perf_counter()
        locations = face_recognition.face_locations(img)
        encs = face_recognition.face_encodings(img, known_face_locations=locations)
        t2 = time.perf_counter()
        load_s += t1 - t0
        detect_encode_s += t2 - t1
        entry["size"] = [int(img.shape[1]), int(img.shape[0])]  # width, height
        entry["faces"] = []
        for (top, right, bottom, left), enc in zip(locations, encs):
            face = {"box": [int(left), int(top), int(right), int(bottom)]}
            if args.save_encodings:
                face["encoding"] = [round(float(v), 6) for v in enc]
            owners.append((len(out["photos"]), len(entry["faces"])))
            encodings.append(enc)
            entry["faces"].append(face)
        out["photos"].append(entry)
        if args.progress and k % args.progress == 0:
            print(f"{k}/{len(paths)} photos, {len(encodings)} faces, {time.perf_counter() - t_start:.0f} s",
                  file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    labels = dlib.chinese_whispers_clustering([dlib.vector(e.tolist()) for e in encodings], args.threshold) \
        if encodings else []
    cluster_s = time.perf_counter() - t0
    for (p, f), label in zip(owners, labels):
        out["photos"][p]["faces"][f]["cluster"] = int(label)
    out["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    out["faces"] = len(encodings)
    out["clusters"] = len(set(labels))
    out["seconds"] = {"load": round(load_s, 3), "detect_encode": round(detect_encode_s, 3),
                      "cluster": round(cluster_s, 3), "total_wall": round(time.perf_counter() - t_start, 3)}
    write_json(args.out, out)
    print(f"{len(paths)} photos, {len(encodings)} faces, {out['clusters']} clusters; detect+encode "
          f"{detect_encode_s:.1f} s, cluster {cluster_s:.2f} s -> {args.out}", file=sys.stderr)
    return 0


def write_json(path, obj):
    """`obj` as JSON at `path`, renamed into place once whole (this script imports nothing of ours)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def recluster(args, dlib):
    with open(args.recluster, encoding="utf-8") as f:
        out = json.load(f)
    faces = [face for photo in out["photos"] for face in photo.get("faces", [])]
    if faces and "encoding" not in faces[0]:
        raise SystemExit(f"{args.recluster} has no encodings: write it with --save-encodings")
    out["load_average_before_recluster"] = [round(v, 2) for v in os.getloadavg()]
    t0 = time.perf_counter()
    labels = dlib.chinese_whispers_clustering([dlib.vector(f["encoding"]) for f in faces], args.threshold) \
        if faces else []
    out["seconds"]["cluster"] = round(time.perf_counter() - t0, 3)
    for face, label in zip(faces, labels):
        face["cluster"] = int(label)
        face.pop("encoding")
    out["settings"]["chinese_whispers_clustering"] = {"threshold": args.threshold}
    out["reclustered_from"] = os.path.abspath(args.recluster)
    out["clusters"] = len(set(labels))
    write_json(args.out, out)
    print(f"{len(faces)} faces reclustered at {args.threshold}: {out['clusters']} clusters in "
          f"{out['seconds']['cluster']:.2f} s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
