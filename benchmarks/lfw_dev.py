"""LFW dev photos (../shared/data/lfw_dev): face detection, and the detect+align+embed rate.

    python benchmarks/lfw_dev.py detect [--data DIR] [--threads 2] [--limit N] [--json out.json]
    python benchmarks/lfw_dev.py --detect-only ...          # the same

Over the photos in DIR/images/<Person>/*.jpg (5,373 250x250 LFW photos, one labelled face near
the centre, often other faces around it), with the pipeline's default detector (YuNet, threshold
0.6, smallest face 24 px):
  - central-face detection rate: photos with a detected face whose box contains the image centre;
  - how often the main face (highest score, then largest, then closest to the centre: the face
    predict, evaluate and the aligned importer use) is that central face;
  - detection time per photo (decoding not included), OpenCV sequential (one thread: how predict
    and the pipeline run it, parallel over images instead);
  - detect + align + embed rate in photos/s: create_model(..., detect=True).predict() over the
    photos (decode, YuNet and alignment in one worker thread, while a MobileFaceNet exported with
    random weights runs in paddle.inference on --threads threads, batch 32).
The CPU model, threads and load average are printed with the figures (and written with --json).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import paddle  # noqa: E402

from datasets.transforms import list_images, read_image  # noqa: E402
from engine.inference_folder import export_inference  # noqa: E402
from engine.model_inputs import expand_inputs  # noqa: E402
from engine.predictor import create_model  # noqa: E402
from foundation.runtime import cpuinfo_field, set_threads  # noqa: E402
from models import build_backbone  # noqa: E402
from models.alignment import main_face  # noqa: E402
from models.face_detector import YuNetDetector  # noqa: E402

DEFAULT_DATA = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                             "data", "lfw_dev"))


def conditions(threads):
    return {"cpu": cpuinfo_field("model name") or "unknown", "cores": os.cpu_count(), "threads": threads,
            "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]}


def measure_detection(paths):
    cv2.setNumThreads(0)  # sequential, as set_threads leaves OpenCV for predict and the pipeline
    det = YuNetDetector()
    central, main_central, multi, times, missed = 0, 0, 0, [], []
    for path in paths:
        img = read_image(path)
        t0 = time.perf_counter()
        faces = det.detect(img)
        times.append(time.perf_counter() - t0)
        cy, cx = img.shape[0] / 2.0, img.shape[1] / 2.0
        hits = [f for f in faces if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]]
        if hits:
            central += 1
            main = main_face(faces, img.shape)
            main_central += main in hits
        else:
            missed.append(path)
        multi += len(faces) > 1
    n = len(paths)
    return {"photos": n, "central_face_detected": central, "central_face_rate": central / n,
            "main_face_is_central": main_central, "main_face_central_rate": main_central / n,
            "photos_with_several_faces": multi,
            "detect_ms_per_photo_median": 1000 * statistics.median(times),
            "detect_ms_per_photo_mean": 1000 * statistics.fmean(times), "missed_first": missed[:10]}


def measure_pipeline(images, limit, threads, batch_size=32):
    items = expand_inputs(images)  # found in a folder: a photo without a face is skipped, not an error
    if limit:
        items = items[:limit]

    with tempfile.TemporaryDirectory(prefix="lfw_dev_bench_") as tmp:
        paddle.seed(0)
        model_dir = os.path.join(tmp, "inference")
        export_inference(build_backbone("MobileFaceNet"), model_dir, "MobileFaceNet")
        model = create_model(model_dir=model_dir, num_threads=threads, detect=True)
        list(model.predict(items[:batch_size], batch_size=batch_size))  # warm-up
        t0 = time.perf_counter()
        done = sum(1 for _ in model.predict(items, batch_size=batch_size))
        seconds = time.perf_counter() - t0
    return {"photos": len(items), "embedded": done, "no_face": len(items) - done, "seconds": seconds,
            "detect_align_embed_photos_per_s": done / seconds, "batch_size": batch_size}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs="?", default="detect", choices=("detect",))
    ap.add_argument("--detect-only", action="store_true", help="the detect command (the only one so far)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="the lfw_dev folder (images/<Person>/*.jpg)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="only the first N photos (0: all)")
    ap.add_argument("--no-embed", action="store_true", help="skip the detect+align+embed rate")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    images = os.path.join(args.data, "images")
    if not os.path.isdir(images):
        raise SystemExit(f"{images} does not exist (--data): the LFW dev photos are not on this machine")
    set_threads(args.threads)
    paths = list_images(images)
    if args.limit:
        paths = paths[:args.limit]
    out = {"conditions_before": conditions(args.threads)}
    out["detection"] = measure_detection(paths)
    if not args.no_embed:
        out["pipeline"] = measure_pipeline(images, args.limit, args.threads)
    out["conditions_after"] = conditions(args.threads)
    d = out["detection"]
    c0, c1 = out["conditions_before"], out["conditions_after"]
    print(f"CPU {c0['cpu']} ({c0['cores']} cores), {args.threads} threads, load average "
          f"{c0['load_average_1_5_15']} before / {c1['load_average_1_5_15']} after")
    print(f"central face detected in {d['central_face_detected']}/{d['photos']} photos "
          f"({100 * d['central_face_rate']:.2f} %); the main face is the central one in "
          f"{100 * d['main_face_central_rate']:.2f} %; {d['photos_with_several_faces']} photos have several faces")
    print(f"detection: {d['detect_ms_per_photo_median']:.2f} ms per photo (median; mean "
          f"{d['detect_ms_per_photo_mean']:.2f} ms; one OpenCV thread, decoding not included)")
    if "pipeline" in out:
        p = out["pipeline"]
        print(f"detect + align + embed (random-init MobileFaceNet, batch {p['batch_size']}): "
              f"{p['detect_align_embed_photos_per_s']:.1f} photos/s ({p['photos']} photos, {p['embedded']} embedded, "
              f"{p['no_face']} without a face, {p['seconds']:.1f} s)")
    if d["missed_first"]:
        print("missed (first few): " + ", ".join(os.path.relpath(p, images) for p in d["missed_first"][:5]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
