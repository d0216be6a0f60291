"""Soak and fault benchmark of the HTTP service (loopback only, bounded in count and time).

    python benchmarks/serve_soak.py --clients 8 --minutes 10 --kills 3

N client threads send, for M minutes, a mix of infer (most), index-add of one photo under a new
label and index-remove of one of their own earlier adds, against the live service
(`main.py ... Global.mode=serve` in a subprocess on 127.0.0.1). K times, evenly spaced, the service
is killed with SIGKILL and started again on the same index folder (clients meet refused
connections meanwhile and retry). At the end every add the service acknowledged, and did not
acknowledge removing, must be in the index.

With --milvus (the milvus extra) the indexes are collections on a Milvus server started on
loopback, and once, between two restarts, that server is stopped for --outage seconds and started
again: the service answers 503 meanwhile and recovers by itself.

Reports: requests and their statuses, p50 / p99 latency per operation, 5xx answers outside the
restarts and the outage (must be 0), the peak RSS of each service process, and acknowledged adds
lost (must be 0); the machine and load are printed before and after. Exit code 1 when a check fails.
"""
import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
import urllib.request

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks.loopback_service import MilvusServer, b64, detected_demo_photos, export_random_model  # noqa: E402
from benchmarks.serve_load import check_acknowledged, machine_line, percentile, start_service  # noqa: E402


def peak_rss_mb(pid):
    """VmHWM (the process's peak resident memory so far) in MB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return 0.0


class Soak:
    """The service in use, replaced at each restart; what the clients saw, under one lock."""

    def __init__(self, model_dir, work, threads, photos, extra=()):
        self.model_dir, self.work, self.threads, self.photos, self.extra = model_dir, work, threads, photos, extra
        self.lock = threading.Lock()
        self.records = []  # (operation, status, seconds, time it was answered)
        self.acked = {}  # label -> photo index, for every add acknowledged and not removed since
        self.removed = 0
        self.down = []  # [start, end] of each time the service was being killed and restarted
        self.peaks = []
        self.outages = []  # [start, end] of each time the index backend (Milvus) was down
        self.service = start_service(model_dir, work, threads, *extra)
        _, r = self.service.post("/face-recognition-index-build", {"imageLabelPairs": [
            {"image": b64(p), "label": lbl} for lbl, p in photos]})
        self.key = r["result"]["indexKey"]

    def restart(self):
        with self.lock:
            self.down.append([time.monotonic(), None])
            old = self.service
        self.peaks.append(peak_rss_mb(old.proc.pid))
        old.proc.send_signal(signal.SIGKILL)
        old.stop()
        new = start_service(self.model_dir, self.work, self.threads, *self.extra)
        with self.lock:
            self.service = new
            self.down[-1][1] = time.monotonic()

    def client(self, i, stop_at, seed):
        rng = random.Random(seed + i)
        mine, n = [], 0  # this client's acknowledged adds, still in the index
        while time.monotonic() < stop_at:
            with self.lock:
                service = self.service
            roll, photo = rng.random(), rng.randrange(len(self.photos))
            t0 = time.monotonic()
            try:
                if roll < 0.15:
                    label = f"soak-{i}-{n}"
                    op, (status, r) = "add", service.post("/face-recognition-index-add", {
                        "indexKey": self.key, "imageLabelPairs": [{"image": b64(self.photos[photo][1]),
                                                                    "label": label}]}, timeout=60)
                    if status == 200:
                        ids = [int(k) for k, v in r["result"]["idMap"].items() if v == label]
                        mine.append((label, ids))
                        with self.lock:
                            self.acked[label] = photo
                elif roll < 0.2 and mine:
                    label, ids = mine.pop(rng.randrange(len(mine)))
                    with self.lock:  # from now on it may be gone, acknowledged or not: no longer checked
                        self.acked.pop(label, None)
                    op, (status, _) = "remove", service.post("/face-recognition-index-remove",
                                                             {"indexKey": self.key, "ids": ids}, timeout=60)
                    with self.lock:
                        self.removed += status == 200
                else:
                    op, (status, _) = "infer", service.post("/face-recognition-infer", {
                        "image": b64(self.photos[photo][1]), "indexKey": self.key, "visualize": False}, timeout=60)
            except OSError:  # refused or reset: the service is being restarted
                op, status = "-", -1
                time.sleep(0.2)
            with self.lock:
                self.records.append((op, status, time.monotonic() - t0, time.monotonic()))
            n += 1

    def outage(self, milvus, seconds):
        """Stop the Milvus server for `seconds`, then start it again on its port and data; the
        outage ends when the service's /health says the backend answers again."""
        self.outages.append([time.monotonic(), None])
        milvus.kill()
        time.sleep(seconds)
        milvus.start_again()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with self.lock:
                service = self.service
            try:
                with urllib.request.urlopen(service.url + "/health", timeout=10) as r:
                    if r.status == 200:
                        break
            except OSError:  # 503 (HTTPError) while Milvus is not ready yet, or refused during a restart
                pass
            time.sleep(0.5)
        self.outages[-1][1] = time.monotonic()

    @staticmethod
    def within(windows, t, grace):
        return any(start - grace <= t <= (end or float("inf")) + grace for start, end in windows)

    def during_restart(self, t, grace=2.0):
        return self.within(self.down, t, grace)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="exported face feature model (default: a random-init MobileFaceNet)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--kills", type=int, default=3, help="SIGKILL / restart cycles, evenly spaced")
    ap.add_argument("--threads", type=int, default=2, help="model threads of the service")
    ap.add_argument("--milvus", action="store_true", help="indexes on a Milvus server on loopback, with one outage")
    ap.add_argument("--outage", type=float, default=15.0, help="seconds the Milvus server is down (with --milvus)")
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="serve_soak_")
    model_dir = args.model_dir or export_random_model(work)
    photos = detected_demo_photos()
    print(machine_line(args.threads))
    milvus, extra = None, ()
    if args.milvus:
        milvus = MilvusServer()
        print(f"Milvus server on {milvus.uri} (started in {milvus.seconds:.0f} s)")
        extra = ("Index.backend=milvus", f"Index.uri={milvus.uri}")
    soak = Soak(model_dir, work, args.threads, photos, extra)
    seconds = args.minutes * 60
    stop_at = time.monotonic() + seconds
    clients = [threading.Thread(target=soak.client, args=(i, stop_at, 0)) for i in range(args.clients)]
    for c in clients:
        c.start()
    start = stop_at - seconds
    for k in range(args.kills):
        time.sleep(max(0.0, start + seconds * (k + 1) / (args.kills + 1) - time.monotonic()))
        soak.restart()
        print(f"  kill {k + 1}: SIGKILL, restarted in {soak.down[-1][1] - soak.down[-1][0]:.1f} s")
        if milvus is not None and k == 0:  # half way to the next restart: the backend goes away
            time.sleep(max(0.0, start + seconds * 1.5 / (args.kills + 1) - time.monotonic()))
            soak.outage(milvus, args.outage)
            print(f"  Milvus outage: stopped and started again, {soak.outages[-1][1] - soak.outages[-1][0]:.1f} s")
    for c in clients:
        c.join()
    failed = False
    try:
        ops = {}
        for op, status, s, _ in soak.records:
            ops.setdefault(op, []).append((status, s))
        print(f"{args.clients} clients for {args.minutes:g} min, {len(soak.down)} SIGKILL/restart cycles: "
              f"{len(soak.records)} requests ({len(soak.records) / seconds:.1f}/s)")
        for op in ("infer", "add", "remove"):
            done = [s for status, s in ops.get(op, []) if status == 200]
            other = sorted({status for status, _ in ops.get(op, []) if status != 200})
            print(f"  {op}: {len(done)} answered 200 (p50 {percentile(done, 50):.0f} ms, p99 {percentile(done, 99):.0f} ms)"
                  f"{', other statuses ' + str(other) if other else ''}")
        refused = len(ops.get("-", []))
        in_outage = [st for _, st, _, t in soak.records if st >= 500 and soak.within(soak.outages, t, 5.0)]
        bad = [(op, status) for op, status, _, t in soak.records
               if status >= 500 and not soak.during_restart(t) and not soak.within(soak.outages, t, 5.0)]
        print(f"  refused connections (all during restarts): {refused}; 5xx during the Milvus outage: "
              f"{len(in_outage)}; 5xx outside the restarts and the outage: {len(bad)}")
        soak.peaks.append(peak_rss_mb(soak.service.proc.pid))
        print(f"  peak RSS of the service processes: {', '.join(f'{p:.0f}' for p in soak.peaks)} MB")
        missing, _ = check_acknowledged(soak.service, soak.key, photos, list(soak.acked.items()), sample=0)
        print(f"  acknowledged adds kept: {len(soak.acked) - len(missing)} of {len(soak.acked)} "
              f"({soak.removed} acknowledged removes); lost: {len(missing)}")
        failed = bool(bad or missing)
    finally:
        soak.service.stop()
        if milvus is not None:
            milvus.stop()
    print(machine_line(args.threads) + " (after)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
