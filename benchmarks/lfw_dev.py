"""LFW dev photos (../shared/data/lfw_dev): face detection, the detect+align+embed rate, and the alignment gain in training.

    python benchmarks/lfw_dev.py detect [--data DIR] [--threads 2] [--limit N] [--json out.json]
    python benchmarks/lfw_dev.py --detect-only ...          # the same
    python benchmarks/lfw_dev.py train [--epochs 3] [--lr 0.002] [--crop 150] [--work /tmp/lfw_align_bench] [--json out.json]

Over the photos in DIR/images/<Person>/*.jpg (5,373 250x250 LFW photos, one labelled face near
the centre, often other faces around it), with the pipeline's default detector (YuNet, threshold
0.6, smallest face 24 px):
  - central-face detection rate: photos with a detected face whose box contains the image centre;
  - how often the main face (the largest box nearest the centre, models.alignment.main_face: the face
    predict, evaluate and the aligned importer use) is that central face;
  - detection time per photo (decoding not included), OpenCV sequential (one thread: how predict
    and the pipeline run it, parallel over images instead);
  - detect + align + embed rate in photos/s: create_model(..., detect=True).predict() over the
    photos (decode, YuNet and alignment in one worker thread, while a MobileFaceNet exported with
    random weights runs in paddle.inference on --threads threads, batch 32).
The CPU model, threads and load average are printed with the figures (and written with --json).

train: the alignment gain under one training recipe. Two datasets in the project's layout are built
under --work from the same photos: train/ = every photo of the people of View-2 folds 1-3
(ids from 0 in sorted name order), val/ = the photos of folds 4-5's 1,200 pairs, val/pair_label.txt
in the official order (the project's 10 contiguous folds then hold 120 pairs each). Variant
`aligned`: YuNet's main face aligned on its 5 landmarks to the 112x112 template (as
engine/align_folders does; a photo without a face falls back to the centre crop and is counted);
variant `center`: the central --crop x --crop square of the 250x250 photo scaled to 112x112. Each
is trained from scratch through main.py (MobileFaceNet.yaml, --epochs, batch 64, --lr, 2 threads,
1 loader worker), then best_model/inference is evaluated (main.py evaluate). Reported per variant:
the best and the last epoch's 10-fold verification accuracy (mean +- std over the folds, flip on,
from train.log), TAR@FAR 1e-2 and ROC AUC of best_model. From-scratch training on ~1,200
identities and a few epochs gives low absolute accuracy: read the difference between the variants.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import paddle  # noqa: E402

from datasets.transforms import list_images, read_image  # noqa: E402
from engine.inference.folder import export_inference  # noqa: E402
from engine.inference.inputs import expand_inputs  # noqa: E402
from engine.inference.predictor import create_model  # noqa: E402
from foundation.runtime import cpuinfo_field, set_threads  # noqa: E402
from models import build_backbone  # noqa: E402
from models.alignment import main_face  # noqa: E402
from models.face_detector import MainFaceCropper, YuNetDetector  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORK = os.path.join(tempfile.gettempdir(), "lfw_align_bench")
VARIANTS = ("aligned", "center")
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


# --------------------------------------------------------------------------- train: the alignment gain


def read_pairs(path):
    """[(path a, path b, label)] of a pair_label.txt, in file order (comment and blank lines skipped)."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                a, b, label = line.split()
                pairs.append((a, b, int(label)))
    return pairs


def person_of(rel):
    """images/<Person>/<file> -> <Person>."""
    return rel.replace("\\", "/").split("/")[-2]


def center_crop(img, crop=150, size=112):
    """The central crop x crop square of the image (clipped to it), scaled to size x size."""
    h, w = img.shape[:2]
    c = min(int(crop), h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    patch = img[y0:y0 + c, x0:x0 + c]
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if c > size else cv2.INTER_LINEAR)


def build_fold_datasets(data, work, crop=150, train_folds=(1, 2, 3), val_folds=(4, 5), fold_size=600, log=print):
    """Build work/aligned and work/center (train/label.txt, train/images, val/pair_label.txt,
    val/images) from data/pair_label.txt's folds (fold k = pairs (k-1)*fold_size .. k*fold_size-1).
    Returns a summary dict (counts, the photos without a detected face)."""
    pairs = read_pairs(os.path.join(data, "pair_label.txt"))
    fold = lambda i: i // fold_size + 1  # noqa: E731
    train_people = sorted({person_of(p) for i, pr in enumerate(pairs) if fold(i) in train_folds for p in pr[:2]})
    val_pairs = [pr for i, pr in enumerate(pairs) if fold(i) in val_folds]
    val_people = {person_of(p) for pr in val_pairs for p in pr[:2]}
    shared = sorted(set(train_people) & val_people)
    if shared:
        raise SystemExit(f"{len(shared)} people are in both the train and the val folds (e.g. {shared[0]})")
    train_imgs = [(os.path.relpath(p, data).replace(os.sep, "/"), ident)
                  for ident, name in enumerate(train_people) for p in list_images(os.path.join(data, "images", name))]
    val_imgs = sorted({p for pr in val_pairs for p in pr[:2]})
    cropper = MainFaceCropper(type="yunet", threshold=0.6, min_size=24)
    fallback = {"train": [], "val": []}
    out = {v: os.path.join(work, v) for v in VARIANTS}
    for v in VARIANTS:
        if os.path.exists(out[v]):
            shutil.rmtree(out[v])

    def png(rel):
        return os.path.splitext(rel)[0] + ".png"

    for split, rels in (("train", [r for r, _ in train_imgs]), ("val", val_imgs)):
        for k, rel in enumerate(rels, 1):
            img = read_image(os.path.join(data, rel))
            centre = center_crop(img, crop)
            chip, _ = cropper.crop(img)
            if chip is None:
                fallback[split].append(rel)
                chip = centre
            for v, face in (("aligned", chip), ("center", centre)):
                dst = os.path.join(out[v], split, *png(rel).split("/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                if not cv2.imwrite(dst, face):
                    raise SystemExit(f"cannot write {dst}")
            if k % 1000 == 0 or k == len(rels):
                log(f"{split}: {k}/{len(rels)} photos ({len(fallback[split])} without a detected face so far)")
    for v in VARIANTS:
        how = ("YuNet main face aligned to the 112x112 template (no face: centre crop)" if v == "aligned"
               else f"central {crop}x{crop} square scaled to 112x112")
        with open(os.path.join(out[v], "train", "label.txt"), "w", encoding="utf-8") as f:
            f.write(f"# lfw_dev folds {list(train_folds)}, {how}: <image path relative to train/> <identity id>\n")
            f.writelines(f"{png(r)} {ident}\n" for r, ident in train_imgs)
        with open(os.path.join(out[v], "train", "identities.txt"), "w", encoding="utf-8") as f:
            f.write("# <identity id> <person>\n")
            f.writelines(f"{i} {n}\n" for i, n in enumerate(train_people))
        with open(os.path.join(out[v], "val", "pair_label.txt"), "w", encoding="utf-8") as f:
            f.write(f"# lfw_dev folds {list(val_folds)} in the official order, {how}: <image a> <image b> <1 same | 0>\n")
            f.writelines(f"{png(a)} {png(b)} {label}\n" for a, b, label in val_pairs)
    return {"train_identities": len(train_people), "train_images": len(train_imgs),
            "val_identities": len(val_people), "val_images": len(val_imgs), "val_pairs": len(val_pairs),
            "val_same_pairs": sum(p[2] for p in val_pairs), "crop": crop,
            "no_face_train": fallback["train"], "no_face_val": fallback["val"], "dirs": out}


EVAL_LINE = re.compile(r"epoch (\d+) eval: val verification acc ([0-9.]+) \+- ([0-9.]+)")


def run_main(args, log_path):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "-c",
           os.path.join(ROOT, "configs", "face_recognition", "MobileFaceNet.yaml")]
    for a in args:
        cmd += ["-o", a]
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if rc:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}): see {log_path}")
    return time.perf_counter() - t0


def train_variant(dataset, output, epochs, lr, threads):
    """Train from scratch, evaluate best_model; the per-epoch verification figures and the evaluation."""
    common = [f"Global.dataset_dir={dataset}", f"Global.num_threads={threads}"]
    train_s = run_main(["Global.mode=train", f"Global.output={output}", f"Train.epochs_iters={epochs}",
                        "Train.batch_size=64", f"Train.learning_rate={lr}", "Train.num_workers=1",
                        "Train.overwrite_output=True"] + common, output + ".train.out")
    with open(os.path.join(output, "train_result.json"), encoding="utf-8") as f:
        result = json.load(f)
    with open(os.path.join(output, "train.log"), encoding="utf-8") as f:
        evals = {int(m.group(1)): (float(m.group(2)), float(m.group(3))) for m in EVAL_LINE.finditer(f.read())}
    eval_out = output + "_eval"
    eval_s = run_main(["Global.mode=evaluate", f"Global.output={eval_out}", "Evaluate.flip=True",
                       f"Evaluate.weight_path={os.path.join(output, 'best_model', 'inference')}"] + common,
                      eval_out + ".out")
    with open(os.path.join(eval_out, "evaluate_result.json"), encoding="utf-8") as f:
        em = json.load(f)["metrics"]
    best_epoch, last_epoch = result["best_epoch"], result["epochs_done"]
    return {"done": result["done_flag"], "epochs": last_epoch, "train_seconds": train_s, "eval_seconds": eval_s,
            "history": [{"epoch": e, "acc": a, "acc_std": sd} for e, (a, sd) in sorted(evals.items())],
            "loss": [r["loss"] for r in result["history"]],
            "best": {"epoch": best_epoch, "acc": evals[best_epoch][0], "acc_std": evals[best_epoch][1]},
            "last": {"epoch": last_epoch, "acc": evals[last_epoch][0], "acc_std": evals[last_epoch][1]},
            "best_model_evaluate": {k: em.get(k) for k in ("acc", "acc_std", "roc_auc", "eer", "tar_at_far",
                                                           "best_threshold_cosine", "num_pairs")}}


def run_train(args):
    out = {"conditions_before": conditions(args.threads), "epochs": args.epochs, "learning_rate": args.lr,
           "batch_size": 64, "crop": args.crop}
    t0 = time.perf_counter()
    out["data"] = build_fold_datasets(args.data, args.work, crop=args.crop)
    out["build_seconds"] = time.perf_counter() - t0
    d = out["data"]
    print(f"built {args.work}/{{aligned,center}} in {out['build_seconds']:.0f} s: train {d['train_images']} photos of "
          f"{d['train_identities']} people (folds 1-3), val {d['val_pairs']} pairs (folds 4-5, official order) over "
          f"{d['val_images']} photos of {d['val_identities']} people; no face detected in "
          f"{len(d['no_face_train'])} train + {len(d['no_face_val'])} val photos (centre crop used)", flush=True)
    out["runs"] = {}
    for v in VARIANTS:
        print(f"training {v} ...", flush=True)
        out["runs"][v] = train_variant(d["dirs"][v], os.path.join(args.work, f"out_{v}"), args.epochs, args.lr,
                                       args.threads)
        r = out["runs"][v]
        print(f"  {v}: {r['train_seconds']:.0f} s, " + ", ".join(
            f"epoch {h['epoch']} {100 * h['acc']:.2f} +- {100 * h['acc_std']:.2f}" for h in r["history"]), flush=True)
    out["conditions_after"] = conditions(args.threads)
    c0, c1 = out["conditions_before"], out["conditions_after"]
    print(f"CPU {c0['cpu']} ({c0['cores']} cores), {args.threads} threads, load average "
          f"{c0['load_average_1_5_15']} before / {c1['load_average_1_5_15']} after")
    print(f"protocol: MobileFaceNet from scratch (ArcFace m 0.5 s 64, AdamW, cosine, 1 warm-up epoch), "
          f"{args.epochs} epochs, batch 64, lr {args.lr}, random flip; train = {d['train_images']} photos of the "
          f"{d['train_identities']} people of folds 1-3; verification = folds 4-5's {d['val_pairs']} pairs in the "
          f"official order, 10 contiguous folds of {d['val_pairs'] // 10}, flip on (mean +- std over the folds)")
    print(f"aligned = YuNet main face aligned on 5 landmarks to the 112x112 template "
          f"({len(d['no_face_train'])} train + {len(d['no_face_val'])} val photos without a detected face use the "
          f"centre crop); center = central {args.crop}x{args.crop} square of the 250x250 photo scaled to 112x112")
    for v in VARIANTS:
        r = out["runs"][v]
        e = r["best_model_evaluate"]
        tar = (e.get("tar_at_far") or {})
        tar2 = next((val for k, val in tar.items() if float(k) == 1e-2), None) if isinstance(tar, dict) else None
        print(f"{v:8s} best (epoch {r['best']['epoch']}) {100 * r['best']['acc']:.2f} +- "
              f"{100 * r['best']['acc_std']:.2f} %, last (epoch {r['last']['epoch']}) {100 * r['last']['acc']:.2f} +- "
              f"{100 * r['last']['acc_std']:.2f} %; best_model evaluate: acc {100 * e['acc']:.2f} %, "
              f"TAR@FAR1e-2 {'n/a' if tar2 is None else f'{100 * tar2:.2f} %'}, ROC AUC {e['roc_auc']:.4f}; "
              f"train {r['train_seconds'] / 60:.1f} min")
    print("from-scratch training on ~1,200 identities for a few epochs: the absolute accuracy is low; "
          "the difference between the variants is the point")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs="?", default="detect", choices=("detect", "train"))
    ap.add_argument("--detect-only", action="store_true", help="the detect command")
    ap.add_argument("--data", default=DEFAULT_DATA, help="the lfw_dev folder (images/<Person>/*.jpg)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="only the first N photos (0: all)")
    ap.add_argument("--no-embed", action="store_true", help="skip the detect+align+embed rate")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--epochs", type=int, default=3, help="train: epochs of each run")
    ap.add_argument("--lr", type=float, default=0.002, help="train: learning rate")
    ap.add_argument("--crop", type=int, default=150, help="train: side of the centre crop (pixels of the 250x250 photo)")
    ap.add_argument("--work", default=DEFAULT_WORK, help="train: work folder for the datasets and the runs")
    args = ap.parse_args(argv)
    if args.detect_only:
        args.command = "detect"
    images = os.path.join(args.data, "images")
    if not os.path.isdir(images):
        raise SystemExit(f"{images} does not exist (--data): the LFW dev photos are not on this machine")
    set_threads(args.threads)
    if args.command == "train":
        return run_train(args)
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
