"""Benchmark: generate a large demo dataset and time check_dataset on it (not a test).

    python benchmarks/check_dataset_speed.py [--identities 10000 --images 10 --out /tmp/face_bench]

Prints the generation time (10,000 identities must take minutes on 2 cores) and the check time
for the resulting 100,000-line train/label.txt, split into parsing, header reading and decoding.
The check runs twice: the first with a cold-ish page cache right after writing, the second warm.
"""
import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--identities", type=int, default=10000)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--out", default="/tmp/face_bench")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="reuse an existing dataset at --out")
    args = parser.parse_args()

    from datasets.check import check
    from datasets.demo import generate_demo

    data = os.path.join(args.out, "data")
    if not (args.keep and os.path.isfile(os.path.join(data, "train", "label.txt"))):
        info = generate_demo(data, train_identities=args.identities, images_per_identity=args.images,
                             val_identities=50, val_pairs=600, workers=args.workers, overwrite=True)
        n = (args.identities + 50) * args.images
        print(f"generate: {n} images ({args.identities} identities x {args.images} + 50 val identities) "
              f"in {info['seconds']:.1f} s ({n / info['seconds']:.0f} img/s, {os.cpu_count()} cores)")
    for run in ("first", "second"):
        out = os.path.join(args.out, f"out_{run}")
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        result, problems = check(data, out, decode_sample=2000, workers=2)
        seconds = time.perf_counter() - start
        ic = result["analysis"]["image_check"]
        print(f"check_dataset ({run} run): {result['attributes']['train_samples']} train lines + "
              f"{result['attributes']['val_samples']} pairs, {ic['listed_files']} files: {seconds:.1f} s total "
              f"(headers+decode {ic['seconds']:.1f} s, {ic['decoded']} decoded), pass={result['check_pass']}, "
              f"errors={problems.num_errors()}")


if __name__ == "__main__":
    main()
