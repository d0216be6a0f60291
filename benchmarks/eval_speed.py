"""Evaluation speed: N pairs of 2N distinct images, flip on, through `Global.mode=evaluate`.

    python benchmarks/eval_speed.py                      # 6,000 pairs, MobileFaceNet, 2 threads
    python benchmarks/eval_speed.py --pairs 600 --model-dir output/best_model/inference

Target (issue 4): 6,000 pairs (12,000 distinct images, each embedded with its flip, i.e.
24,000 forward passes) in under 5 minutes on a 2-core CPU. The images are generated
112x112 JPEGs (blurred noise plus an ellipse, cached in --work-dir); without --model-dir an
untrained MobileFaceNet is exported first (speed does not depend on the weights). The timed
part is the evaluate runner itself: decoding, pre-processing, paddle.inference forward passes,
metrics and the output files.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

TARGET_SECONDS = 300.0


def make_images(folder, count, seed=0):
    """`count` 112x112 JPEGs images/<i>.jpg (reused when already there)."""
    import cv2
    import numpy as np

    img_dir = os.path.join(folder, "val", "images")
    os.makedirs(img_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    made = 0
    for i in range(count):
        path = os.path.join(img_dir, f"{i:06d}.jpg")
        if os.path.isfile(path):
            continue
        img = cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), (9, 9), 0)
        color = tuple(int(c) for c in rng.integers(60, 230, 3))
        cv2.ellipse(img, (56, 60), (int(rng.integers(28, 40)), int(rng.integers(38, 50))), 0, 0, 360, color, -1)
        cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        made += 1
    return made


def write_pairs(folder, num_pairs):
    """Pair i = images 2i and 2i+1 (every image distinct), labels alternating 1, 0."""
    lines = [f"images/{2 * i:06d}.jpg images/{2 * i + 1:06d}.jpg {1 - i % 2}\n" for i in range(num_pairs)]
    with open(os.path.join(folder, "val", "pair_label.txt"), "w") as f:
        f.writelines(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--model-dir", default=None, help="an exported inference folder (default: untrained MobileFaceNet)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "facefeat_eval_speed"))
    args = ap.parse_args(argv)

    from engine.config.loader import load_config
    from foundation.runtime import set_threads

    set_threads(args.threads)
    t0 = time.perf_counter()
    made = make_images(args.work_dir, 2 * args.pairs)
    write_pairs(args.work_dir, args.pairs)
    print(f"images: {2 * args.pairs} in {args.work_dir} ({made} generated, {time.perf_counter() - t0:.1f} s)")

    cfg_path = os.path.join(REPO_ROOT, "configs", "face_recognition", "MobileFaceNet.yaml")
    tmp = tempfile.mkdtemp(prefix="facefeat_eval_speed_")
    try:
        model_dir = args.model_dir
        if model_dir is None:
            import paddle

            from engine.inference.folder import export_inference
            from models import build_backbone

            paddle.seed(0)
            model_dir = export_inference(build_backbone("MobileFaceNet"), os.path.join(tmp, "inference"),
                                         "MobileFaceNet")["dir"]
        out = os.path.join(tmp, "out")
        cfg = load_config(cfg_path, [
            "Global.mode=evaluate", f"Global.dataset_dir={args.work_dir}", f"Global.output={out}",
            f"Global.num_threads={args.threads}", f"Evaluate.weight_path={model_dir}",
            f"Evaluate.batch_size={args.batch_size}", f"Evaluate.flip={not args.no_flip}",
        ])
        from engine.runners import evaluate

        start = time.perf_counter()
        evaluate.run(cfg)
        seconds = time.perf_counter() - start
        with open(os.path.join(out, "evaluate_result.json")) as f:
            metrics = json.load(f)["metrics"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    images = 2 * args.pairs
    passes = images * (1 if args.no_flip else 2)
    scale = 6000 / args.pairs
    print(f"\nevaluate: {args.pairs} pairs, {images} distinct images, flip {'off' if args.no_flip else 'on'} "
          f"({passes} forward passes), batch {args.batch_size}, {args.threads} threads, "
          f"model format {metrics['model']['format']}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at the end (other processes slow this down)")
    print(f"total {seconds:.1f} s = {images / seconds:.1f} images/s = {passes / seconds:.1f} forward passes/s "
          f"(embedding alone: {metrics['seconds']:.1f} s)")
    if args.pairs == 6000:
        verdict = "PASS" if seconds < TARGET_SECONDS else "FAIL"
        print(f"target: 6,000 pairs under {TARGET_SECONDS:.0f} s -> {verdict}")
    else:
        print(f"scaled to 6,000 pairs: about {seconds * scale:.0f} s (target {TARGET_SECONDS:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
