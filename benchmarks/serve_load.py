"""Load and fault benchmark of the HTTP service (loopback only, bounded in time).

    python benchmarks/serve_load.py --model-dir output/best_model/inference --clients 8 --seconds 30

1. In-process baseline: the same pipeline in this process, photos/s for decode + detect + align +
   embed + search of the same JPEG photos (what one infer request does, without HTTP).
2. Load: the service (`main.py ... Global.mode=serve`, a subprocess on 127.0.0.1) with N client
   threads for T seconds, each sending infer requests and, with probability --add-share, an
   index-add of one photo under a new label. Prints requests/s, infer photos/s, p50/p99 latency
   per operation and the error count, then checks that every acknowledged add is in the index and
   that searching its photo finds its label.
3. Fault: clients add for a few seconds, the server is killed with SIGKILL mid-stream, restarted
   on the same index folder, and every add it had acknowledged must still be there.

Photos are the generated demo faces, enlarged onto a plain canvas (YuNet finds some of them);
without --model-dir a random-init MobileFaceNet is exported to a temporary folder (speed does not
depend on the weights). Exit code 1 when a check fails (an error, a lost acknowledged add).
"""
import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# the service, its photos and the random model, shared with tests/test_serve.py
from benchmarks.loopback_service import Service, b64, detected_demo_photos, export_random_model  # noqa: E402


def machine_line(threads):
    from foundation.runtime import cpuinfo_field

    load = os.getloadavg()
    return (f"CPU {cpuinfo_field('model name') or 'unknown'}, {os.cpu_count()} cores, {threads} model threads, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def in_process_rate(model_dir, photos, seconds, threads):
    """Photos/s of decode + recognize_image in this process, over the same photos."""
    from datasets.transforms import decode_image_bytes
    from engine import create_pipeline

    pipe = create_pipeline(config={"SubModules.Recognition.model_dir": model_dir, "det_threshold": 0.5,
                                   "Global.num_threads": threads})
    index = pipe.build_index([decode_image_bytes(p) for _, p in photos], [lbl for lbl, _ in photos])
    pipe.recognize_image(decode_image_bytes(photos[0][1]), index=index)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        pipe.recognize_image(decode_image_bytes(photos[n % len(photos)][1]), index=index)
        n += 1
    return n / (time.perf_counter() - start)


def start_service(model_dir, work, threads, *extra):
    """The service on <work>/indexes, its log in <work>/log (the same folders at every restart), with
    `extra` -o overrides."""
    return Service(model_dir, os.path.join(work, "indexes"), os.path.join(work, "log"), f"Global.num_threads={threads}",
                   *extra)


def percentile(values, q):
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def run_clients(service, key, photos, clients, seconds, add_share, seed=0):
    """N threads for `seconds`; returns (records [(op, status, seconds)], acknowledged adds [(label, photo)])."""
    records, acked, lock = [], [], threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(i):
        rng = random.Random(seed + i)
        n = 0
        while time.perf_counter() < stop_at:
            photo = rng.randrange(len(photos))
            t0 = time.perf_counter()
            if rng.random() < add_share:
                label = f"added-{i}-{n}"
                try:
                    status, _ = service.post("/face-recognition-index-add", {
                        "indexKey": key, "imageLabelPairs": [{"image": b64(photos[photo][1]), "label": label}]})
                except OSError:
                    status = -1  # connection refused/reset: the server is gone
                with lock:
                    records.append(("add", status, time.perf_counter() - t0))
                    if status == 200:
                        acked.append((label, photo))
            else:
                try:
                    status, _ = service.post("/face-recognition-infer", {
                        "image": b64(photos[photo][1]), "indexKey": key, "visualize": False})
                except OSError:
                    status = -1
                with lock:
                    records.append(("infer", status, time.perf_counter() - t0))
            n += 1
            if status == -1:
                return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records, acked


def check_acknowledged(service, key, photos, acked, sample=20):
    """(missing labels, labels whose photo search does not find them)."""
    _, r = service.post("/face-recognition-index-remove", {"ids": [], "indexKey": key})
    held = set(r["result"]["idMap"].values())
    missing = [label for label, _ in acked if label not in held]
    not_found = []
    for label, photo in acked[:sample]:
        _, r = service.post("/face-recognition-infer", {"image": b64(photos[photo][1]), "indexKey": key,
                                                        "recThreshold": -1.0, "topk": 1000, "visualize": False})
        found = {m["label"] for f in r["result"]["faces"] for m in f["recResults"]}
        if label not in found:
            not_found.append(label)
    return missing, not_found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="exported face feature model (default: a random-init MobileFaceNet)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--baseline-seconds", type=float, default=15.0)
    ap.add_argument("--add-share", type=float, default=0.1, help="share of requests that are index-adds")
    ap.add_argument("--threads", type=int, default=2, help="model threads (in-process and in the service)")
    ap.add_argument("--fault-seconds", type=float, default=4.0, help="adds before the SIGKILL (0: no fault test)")
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="serve_load_")
    model_dir = args.model_dir or export_random_model(work)
    photos = detected_demo_photos()
    print(machine_line(args.threads))
    print(f"{len(photos)} demo photos (320x320 JPEG, one face each); model {model_dir}")
    # the baseline is measured in two halves, before and after the load, and averaged: on a shared
    # machine the load of other jobs drifts, and the ratio should not depend on which came first
    before = in_process_rate(model_dir, photos, args.baseline_seconds / 2, args.threads)

    failed = False
    service = start_service(model_dir, work, args.threads)
    try:
        _, r = service.post("/face-recognition-index-build", {"imageLabelPairs": [
            {"image": b64(p), "label": lbl} for lbl, p in photos]})
        key = r["result"]["indexKey"]
        records, acked = run_clients(service, key, photos, args.clients, args.seconds, args.add_share)
        wall = args.seconds
        after = in_process_rate(model_dir, photos, args.baseline_seconds / 2, args.threads)
        base = (before + after) / 2
        print(f"in-process pipeline: {base:.1f} photos/s (before the load {before:.1f}, after {after:.1f}; decode + "
              f"detect + align + embed + search, one thread)")
        errors = [rec for rec in records if rec[1] != 200]
        infers = [s for op, st, s in records if op == "infer" and st == 200]
        adds = [s for op, st, s in records if op == "add" and st == 200]
        served = len(infers) / wall
        print(f"load: {args.clients} clients for {wall:.0f} s: {len(records) / wall:.1f} requests/s, "
              f"{served:.1f} infer photos/s, {len(adds) / wall:.2f} adds/s, errors {len(errors)}")
        print(f"  infer latency p50 {percentile(infers, 50):.0f} ms, p99 {percentile(infers, 99):.0f} ms; "
              f"add p50 {percentile(adds, 50):.0f} ms, p99 {percentile(adds, 99):.0f} ms")
        photos_served = (len(infers) + len(adds)) / wall  # an add embeds one photo too
        print(f"  served photos/s (infer + add) / in-process = {photos_served / base:.2f}; "
              f"infer alone / in-process = {served / base:.2f}")
        missing, not_found = check_acknowledged(service, key, photos, acked)
        print(f"  acknowledged adds: {len(acked)}; missing from the index: {len(missing)}; "
              f"photo search not finding its label (of {min(len(acked), 20)} checked): {len(not_found)}")
        failed |= bool(errors or missing or not_found)
    finally:
        service.stop()

    if args.fault_seconds > 0:
        service = start_service(model_dir, work, args.threads)
        killer = threading.Timer(args.fault_seconds, lambda: service.proc.send_signal(signal.SIGKILL))
        killer.start()
        _, acked = run_clients(service, key, photos, max(2, args.clients // 2), args.fault_seconds + 3.0, 1.0, seed=100)
        killer.join()
        service.stop()  # already gone: waits and drops its output
        print(f"fault: SIGKILL after {args.fault_seconds:.0f} s of adds ({len(acked)} acknowledged); restarting")
        service = start_service(model_dir, work, args.threads)
        try:
            missing, _ = check_acknowledged(service, key, photos, acked, sample=0)
            print(f"  after the restart: {len(acked) - len(missing)} of {len(acked)} acknowledged adds kept"
                  f"{'' if not missing else ' -- LOST: ' + ', '.join(missing[:5])}")
            failed |= bool(missing)
        finally:
            service.stop()
    print(machine_line(args.threads) + " (after)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
