"""Peak memory of a whole process tree (a command and every process it starts).

    python benchmarks/peak_rss.py [--interval 0.2] -- python main.py -c configs/face_recognition/MobileFaceNet.yaml -o Global.mode=train ...

Samples the command and all its descendants (loader workers included) every --interval seconds
and prints the peak of the summed PSS (proportional set size: a page shared by forked workers and
their parent is split between them, so this is the memory the tree really holds) and of the summed
RSS (which counts every shared page once per process, as `ps` shows it: an overstatement for
forked workers), with the CPU and load. Needs psutil.
"""
import argparse
import os
import subprocess
import sys
import time

import psutil


def tree_memory(proc):
    """(summed RSS, summed PSS) of a process and its descendants, in bytes. RSS counts pages that
    forked workers share with their parent once per process; PSS splits each shared page between
    the processes that map it, so the PSS sum is the memory the tree really holds."""
    rss = pss = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            info = p.memory_full_info()
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, pss


class TreeMemorySampler:
    """Peak tree_memory of this process and its descendants while the `with` block runs.

        with TreeMemorySampler() as mem:
            ...
        print(mem.peak_pss, mem.peak_rss)

    The sampling runs in a separate watcher process (this script with --watch), left out of the
    sums, so that reading /proc costs the measured process no CPU time.
    """

    def __init__(self, interval=0.2):
        self.interval = interval
        self.peak_rss = self.peak_pss = 0
        self._watcher = None

    def __enter__(self):
        self._watcher = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--watch", str(os.getpid()),
                                          "--interval", str(self.interval)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        out, _ = self._watcher.communicate("")  # closing its stdin asks for the peaks
        rss, pss = (int(v) for v in out.split()[-2:])
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        return False


def watch(pid, interval):
    """--watch: sample the tree of `pid` (without this process) until stdin closes; print the peaks."""
    import select

    proc, me = psutil.Process(pid), os.getpid()
    peak_rss = peak_pss = 0
    while True:
        rss = pss = 0
        for p in [proc] + proc.children(recursive=True):
            if p.pid == me:
                continue
            try:
                info = p.memory_full_info()
                rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        if select.select([sys.stdin], [], [], interval)[0] or not proc.is_running():
            break
    print(peak_rss, peak_pss, flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--timeline", type=float, default=0, metavar="S",
                        help="also print the tree's RSS and process count every S seconds")
    parser.add_argument("--watch", type=int, metavar="PID", help=argparse.SUPPRESS)  # TreeMemorySampler's watcher
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.watch:
        return watch(args.watch, args.interval)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("give the command after --")
    start = time.perf_counter()
    child = subprocess.Popen(cmd)
    proc = psutil.Process(child.pid)
    peak, peak_at, next_line, peak_rss = 0, 0.0, 0.0, 0
    while child.poll() is None:
        rss, pss = tree_memory(proc)
        now = time.perf_counter() - start
        peak_rss = max(peak_rss, rss)
        if pss > peak:
            peak, peak_at = pss, now
        if args.timeline and now >= next_line:
            try:
                count = 1 + len(proc.children(recursive=True))
            except psutil.NoSuchProcess:
                count = 0
            print(f"[mem] {now:6.1f} s  PSS {pss / 2**30:5.2f} GB  RSS {rss / 2**30:5.2f} GB  {count} processes",
                  file=sys.stderr, flush=True)
            next_line = now + args.timeline
        time.sleep(args.interval)
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"peak memory of the process tree: PSS {peak / 2**30:.2f} GB (at {peak_at:.0f} s of "
          f"{time.perf_counter() - start:.0f} s), summed RSS {peak_rss / 2**30:.2f} GB; "
          f"exit code {child.returncode}; CPU {model}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
