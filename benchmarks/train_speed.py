"""Training speed of one configuration, in images/s, with a loss check against plain eager mode.

    python benchmarks/train_speed.py --model MobileFaceNet --batch-size 64 --threads 1
    python benchmarks/train_speed.py --plain            # Paddle as shipped: no shim, no fused kernels
    python benchmarks/train_speed.py --data demo --num-workers 1 --demo-dir /tmp/face_demo
    python benchmarks/train_speed.py --data synthetic --torch   # + the same step in PyTorch, and the ratio

Protocol: face model + ArcMargin head (m 0.5, s 64) + cross-entropy + AdamW (lr 1e-3, weight decay
0.05 on 2+-D parameters), 112x112 inputs, fp32 eager (dygraph) training. `--data synthetic` cycles
over 4 fixed random batches (no input cost); `--data demo` reads the synthetic demo face dataset
(datasets/demo.py, generated if missing) through the training data loader, decoding and flipping
included. Timing starts after `--warmup` steps and covers `--steps` full steps (forward, backward,
optimizer, reading the loss). Besides wall-clock images/s it prints CPU-time images/s: on a machine
shared with other jobs wall time is meaningless, and for one thread CPU time approximates an idle
machine.

`--check-loss K` (default 5) first trains K steps on the synthetic batches in this configuration,
then the same K steps in plain eager mode in fresh processes (same seed, same weights, same
batches): once in float32 and once in float64, the exact curve to within float32's rounding. The
check passes when this configuration's curve is no further from the float64 one than
--loss-factor times plain float32 eager's own largest distance from it (or --loss-rtol, whichever
is larger): a speed-up may round differently, but not worse than by the same order as Paddle
itself. A training step that amplifies rounding (at step 5 the loss falls from 48 to 14.5 and
plain float32 is 5e-4 from float64 there) is judged by what float32 can do. Failing: exit code 1.

Memory: each measurement prints the peak PSS and summed RSS of the whole process tree (this
process and its loader workers; benchmarks/peak_rss.py's sampler, in a watcher process of its
own), and the end line the peak over the run.

`--torch` adds the PyTorch reference (benchmarks/torch_reference.py: the same MobileFaceNet layer
table, ArcFace head, AdamW, batch and threads), run by --torch-python (default: this Python if it
has torch, else $FACEFEAT_TORCH_PYTHON) in one process per variant (eager, channels_last, compile),
between two measurements of ours on the synthetic batches, and prints ours / torch's best variant
for wall and CPU-time images/s. `pip install -e ".[bench]"` installs PyTorch (CPU).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
for _path in (ROOT, BENCH):
    if _path not in sys.path:
        sys.path.insert(0, _path)
TORCH_VARIANTS = ("eager", "channels_last", "compile")
# glibc mallopt parameters (malloc.h) and the settings --allocator can apply instead of the shipped one
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8
ALLOCATORS = {
    "glibc": [],  # glibc's defaults: large blocks mmapped and returned on free (dynamic threshold)
    "shipped": [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30)],
    "mmap32": [(_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30)],
    "mmap64": [(_M_MMAP_THRESHOLD, 64 << 20), (_M_TRIM_THRESHOLD, 1 << 30)],
    "mmap128": [(_M_MMAP_THRESHOLD, 128 << 20), (_M_TRIM_THRESHOLD, 1 << 30)],
    "heap-trim256": [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 256 << 20)],
    "heap-trim64": [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 64 << 20)],
    "shipped-1arena": [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30), (_M_ARENA_MAX, 1)],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="MobileFaceNet", choices=("MobileFaceNet", "ResNet50_face"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=1000, help="ArcMargin classes for synthetic data")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for Paddle/MKL/OpenMP")
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--data", choices=("synthetic", "demo", "both"), default="both")
    p.add_argument("--demo-dir", default=os.path.join(ROOT, "dataset", "face_demo"))
    p.add_argument("--num-workers", type=int, default=1, help="data loader processes for --data demo")
    p.add_argument("--plain", action="store_true", help="plain Paddle: no MKL shim, no fused kernels, no allocator change")
    p.add_argument("--no-mkl-shim", action="store_true")
    p.add_argument("--no-fast-ops", action="store_true")
    p.add_argument("--no-allocator", action="store_true")
    p.add_argument("--layout", choices=("auto", "nhwc", "nchw"), default="auto", help="MobileFaceNet's training "
                   "layout with the fused kernels: auto is the CPU class's choice (engine/training/cpu_speed.py)")
    p.add_argument("--no-channels-last", action="store_true", help="the same as --layout nchw")
    p.add_argument("--no-fused-bn", action="store_true", help="BatchNorm + PReLU as Paddle's two layers "
                   "(FACEFEAT_NO_FUSED_BN=1): autograd keeps the conv and BatchNorm outputs too")
    p.add_argument("--allocator", choices=sorted(ALLOCATORS), default=None,
                   help="a glibc mallopt setting instead of the shipped one (for measuring; implies --no-allocator)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:FLAGS",
                   help="compare configurations in one run: each --variant=NAME:FLAGS (e.g. before:--no-fused-bn, "
                   "after:) runs the synthetic measurement in a fresh process with these extra flags, --rounds "
                   "times in alternating order, and the table gives img/s and peak PSS as ratios to the first")
    p.add_argument("--rounds", type=int, default=2, help="rounds of --variant measurements")
    p.add_argument("--saved-bytes", action="store_true", help="print what autograd keeps for the backward pass of "
                   "one forward (distinct tensors, counted with paddle.autograd.saved_tensors_hooks), then exit")
    p.add_argument("--result-json", help=argparse.SUPPRESS)  # internal: one --variant measurement
    p.add_argument("--recompute", action="store_true", help="Train.recompute: activations recomputed in backward")
    p.add_argument("--check-loss", type=int, default=5, metavar="K", help="steps of the loss check (0: skip)")
    p.add_argument("--loss-rtol", type=float, default=1e-4, help="smallest relative tolerance of the loss check")
    p.add_argument("--loss-factor", type=float, default=3.0, help="loss check: allowed distance from the float64 "
                   "curve, in units of plain float32 eager's own")
    p.add_argument("--float64", action="store_true", help=argparse.SUPPRESS)  # internal: the exact reference
    p.add_argument("--profile", action="store_true", help="print Paddle's operator time table for the timed steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch", action="store_true", help="also time the same step in PyTorch and print the ratio")
    p.add_argument("--torch-python", default=None, help="a Python with PyTorch (default: this one if it has torch, "
                   "else $FACEFEAT_TORCH_PYTHON)")
    p.add_argument("--torch-variants", default=",".join(TORCH_VARIANTS), help="comma-separated subset of "
                   + ", ".join(TORCH_VARIANTS))
    p.add_argument("--losses-json", help=argparse.SUPPRESS)  # internal: the plain-eager reference run
    return p.parse_args(argv)


def setup(args):
    """Threads and speed settings, as training applies them (the CPU class's choices unless a flag
    forces one), before anything runs a matrix product."""
    if args.plain:
        os.environ["FACEFEAT_CPU_SPEEDUP"] = "0"
    if args.no_mkl_shim:
        os.environ["FACEFEAT_NO_MKL_SHIM"] = "1"
    if args.no_fast_ops:
        os.environ["FACEFEAT_NO_FAST_OPS"] = "1"
    from engine.training.cpu_speed import setup_cpu_speed

    if args.no_fused_bn:
        os.environ["FACEFEAT_NO_FUSED_BN"] = "1"
    layout = "nchw" if args.no_channels_last else args.layout
    report = setup_cpu_speed(enabled=not args.plain, allocator=not (args.no_allocator or args.allocator),
                             channels_last=None if layout == "auto" else layout == "nhwc", threads=args.threads)
    if args.allocator:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = all(libc.mallopt(param, value) == 1 for param, value in ALLOCATORS[args.allocator])
        report["allocator"] = f"allocator: {args.allocator} {ALLOCATORS[args.allocator]}" + ("" if ok else " (refused)")
    return report


def variant_flags(spec):
    name, _, flags = spec.partition(":")
    return name, flags.split()


def run_variants(args, argv):
    """--variant: each configuration's synthetic measurement in a fresh process (so one's heap
    never counts in another's peak), --rounds times in alternating order; a table of ratios."""
    import shlex
    import statistics
    import tempfile

    skip = {"--variant", "--rounds", "--check-loss", "--data", "--torch", "--result-json", "--losses-json"}
    common, it = [], iter(argv)
    for a in it:  # this run's own flags, minus the comparison's
        key = a.split("=", 1)[0]
        if key in skip:
            if "=" not in a and key not in ("--torch",):
                next(it, None)
            continue
        common.append(a)
    variants = [variant_flags(v) for v in args.variant]
    results = {name: [] for name, _ in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, flags in order:
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "result.json")
                cmd = [sys.executable, os.path.abspath(__file__), *common, *flags, "--data", "synthetic",
                       "--check-loss", "0", "--result-json", out]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0 or not os.path.isfile(out):
                    raise SystemExit(f"variant {name} failed ({shlex.join(cmd)}):\n{proc.stderr[-2000:]}")
                with open(out) as f:
                    res = json.load(f)
            results[name].append(res)
            print(f"  round {r + 1} {name:12s}: {res['wall']:6.2f} img/s wall, {res['cpu']:6.2f} img/s of CPU time, "
                  f"peak PSS {gb(res['peak_pss'])} (load average {res['load']:.1f})", flush=True)
    first = variants[0][0]

    def best(name, key):
        return max(r[key] for r in results[name])

    print(f"variants, best of {args.rounds} rounds (ratios to {first}; load average now {os.getloadavg()[0]:.1f}):")
    for name, flags in variants:
        pss = statistics.median(r["peak_pss"] for r in results[name])
        print(f"  {name:12s} {' '.join(flags) or '(as shipped)':40s} wall {best(name, 'wall'):6.2f} img/s "
              f"(x{best(name, 'wall') / best(first, 'wall'):.2f}), CPU time {best(name, 'cpu'):6.2f} img/s "
              f"(x{best(name, 'cpu') / best(first, 'cpu'):.2f}), peak PSS {gb(pss)} "
              f"(x{pss / statistics.median(r['peak_pss'] for r in results[first]):.2f})")


def build(args, num_classes, dtype="float32"):
    """Model and AdamW; the weights are always drawn in float32 (so a float64 reference starts from
    the very same weights, cast: drawn in float64, some initialisers give other numbers)."""
    import paddle

    from models import ArcMargin, FaceRecModel, build_backbone

    paddle.seed(args.seed)
    backbone = build_backbone(args.model, recompute=args.recompute)
    model = FaceRecModel(backbone, ArcMargin(backbone.embedding_size, num_classes))
    if dtype != "float32":
        model.to(dtype=dtype)
        paddle.set_default_dtype(dtype)  # the head's constants and the optimizer state too
    model.train()
    decay = {p.name for p in model.parameters() if len(p.shape) > 1}
    opt = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=model.parameters(), weight_decay=0.05,
                                 apply_decay_param_fun=lambda name: name in decay)
    return model, opt


def train_step(model, opt, images, labels):
    import paddle.nn.functional as F

    loss = F.cross_entropy(model(images, labels), labels)
    loss.backward()
    opt.step()
    opt.clear_grad()
    return float(loss)


def saved_bytes(model, images, labels):
    """(bytes, tensors): the distinct tensors autograd keeps for the backward pass of one forward
    and loss (a tensor kept by two operators, e.g. a layer's output and the next conv's input,
    counts once), parameters included."""
    import paddle
    import paddle.nn.functional as F

    kept = {}

    def pack(t):
        kept[t.data_ptr()] = int(t.numel()) * t.element_size()
        return t

    with paddle.autograd.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(paddle.to_tensor(images), paddle.to_tensor(labels)), paddle.to_tensor(labels))
    del loss
    return sum(kept.values()), len(kept)


def synthetic_batches(args, num_classes):
    import numpy as np

    rng = np.random.RandomState(args.seed)
    batches = [(rng.uniform(-1, 1, (args.batch_size, 3, 112, 112)).astype("float32"),
                rng.randint(0, num_classes, (args.batch_size,)).astype("int64")) for _ in range(4)]
    while True:
        yield from batches


def demo_batches(args):
    from datasets.demo import generate_demo
    from datasets.face_dataset import BatchLoader, FaceTrainDataset, SeededBatchSampler
    from datasets.label_files import load_train_list

    if not os.path.isdir(args.demo_dir):
        generate_demo(args.demo_dir)
    samples = load_train_list(args.demo_dir)
    dataset = FaceTrainDataset(samples, flip_prob=0.5, seed=args.seed)
    sampler = SeededBatchSampler(len(samples), args.batch_size, seed=args.seed)
    loader = BatchLoader(dataset, sampler, num_workers=args.num_workers).start()  # fork while this process is small

    def gen():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    return gen(), dataset.num_classes, loader


def run(args, batches, model, opt, profile=False):
    """Train warmup + steps; returns (wall img/s, cpu img/s, losses)."""
    import paddle

    prof = None
    if profile:
        import paddle.profiler as profiler

        # on_trace_ready: no chrome trace files in the working folder, only the printed table
        prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU], scheduler=(args.warmup, args.warmup + args.steps),
                                 on_trace_ready=lambda p: None)
        prof.start()
    losses = []
    t0 = c0 = None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            t0, c0 = time.perf_counter(), time.process_time()
        images, labels = next(batches)
        losses.append(train_step(model, opt, paddle.to_tensor(images), paddle.to_tensor(labels)))
        if prof is not None:
            prof.step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if prof is not None:
        import paddle.profiler as profiler

        prof.stop()
        prof.summary(sorted_by=profiler.SortedKeys.CPUTotal, op_detail=False, thread_sep=False, time_unit="ms")
    n = args.batch_size * args.steps
    return n / wall, n / cpu, losses


def reference_losses(args, float64=False):
    """The plain-eager loss curve of the same K steps, from a fresh process without any speed-up
    (in float64 with float64=True)."""
    import tempfile

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "losses.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--plain", "--model", args.model, "--batch-size",
               str(args.batch_size), "--classes", str(args.classes), "--threads", str(args.threads),
               "--seed", str(args.seed), "--steps", str(args.check_loss), "--losses-json", out]
        cmd += ["--float64"] if float64 else []
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the plain-eager reference run failed:\n{proc.stderr[-2000:]}")
        with open(out) as f:
            return json.load(f)


def torch_python(args):
    """The Python that runs the PyTorch reference, or SystemExit saying how to get one."""
    import importlib.util

    candidates = [args.torch_python] if args.torch_python else (
        [sys.executable] if importlib.util.find_spec("torch") else []) + [os.environ.get("FACEFEAT_TORCH_PYTHON")]
    for python in filter(None, candidates):
        probe = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
        if probe.returncode == 0:
            return python
    tried = ", ".join(filter(None, candidates)) or "this Python has no torch"
    raise SystemExit("--torch: no Python with PyTorch found (" + tried + "). Install it with "
                     "pip install -e \".[bench]\" (or pip install torch), or give --torch-python /path/to/python "
                     "of a virtualenv that has it (or set FACEFEAT_TORCH_PYTHON)")


def torch_reference(args, python, variant):
    """One variant of benchmarks/torch_reference.py in its own process; its JSON result."""
    cmd = [python, os.path.join(BENCH, "torch_reference.py"), "--variant", variant, "--batch-size",
           str(args.batch_size), "--classes", str(args.classes), "--threads", str(args.threads),
           "--steps", str(args.steps), "--warmup", str(max(args.warmup, 3 if variant == "compile" else 1)),
           "--seed", str(args.seed)]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"variant": variant, "error": proc.stderr.strip().splitlines()[-1:] or ["exit code %d" % proc.returncode]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gb(n):
    return f"{n / 2**30:.2f} GB"


def main(argv=None):
    args = parse_args(argv)
    report = setup(args)
    import paddle

    if args.losses_json:  # reference run for --check-loss
        dtype = "float64" if args.float64 else "float32"
        model, opt = build(args, args.classes, dtype)  # parameters and optimizer state in that precision
        batches = synthetic_batches(args, args.classes)
        losses = []
        for _ in range(args.steps):
            images, labels = next(batches)
            losses.append(train_step(model, opt, paddle.to_tensor(images.astype(dtype)), paddle.to_tensor(labels)))
        with open(args.losses_json, "w") as f:
            json.dump(losses, f)
        return 0

    options = "plain Paddle eager" if args.plain else "; ".join(report.values())
    print(f"model {args.model}, batch {args.batch_size}, threads {args.threads}, fp32 eager, Paddle {paddle.__version__}")
    print(f"options: {options}")
    if args.saved_bytes:
        model, _ = build(args, args.classes)
        total, count = saved_bytes(model, *next(synthetic_batches(args, args.classes)))
        print(f"kept for backward at batch {args.batch_size}: {gb(total)} in {count} tensors "
              f"({total / args.batch_size / 2**20:.1f} MB per image)")
        return 0
    # the demo loader's workers fork first, while this process is small (BatchLoader.start)
    demo = demo_batches(args) if args.data in ("demo", "both") and not args.variant else None
    status = 0
    if args.check_loss > 0:
        model, opt = build(args, args.classes)
        batches = synthetic_batches(args, args.classes)
        mine = [train_step(model, opt, *map(paddle.to_tensor, next(batches))) for _ in range(args.check_loss)]
        ref = mine if args.plain else reference_losses(args)
        exact = reference_losses(args, float64=True)

        def distance(curve):
            return max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(curve, exact))

        worst, plain_error = distance(mine), distance(ref)
        tolerance = max(args.loss_rtol, args.loss_factor * plain_error)
        ok = worst <= tolerance
        print(f"loss check ({args.check_loss} steps against plain eager in float64): max relative difference "
              f"{worst:.2e}; plain float32 eager's own {plain_error:.2e} "
              f"({'PASS' if ok else 'FAIL'}, tolerance {tolerance:.2e} = max({args.loss_rtol:g}, "
              f"{args.loss_factor:g} x plain's))")
        print("  this run      : " + " ".join(f"{v:.5f}" for v in mine))
        print("  plain float32 : " + " ".join(f"{v:.5f}" for v in ref))
        print("  plain float64 : " + " ".join(f"{v:.5f}" for v in exact))
        status = 0 if ok else 1

    from peak_rss import TreeMemorySampler

    from foundation.runtime import cpu_summary

    print(f"CPU {cpu_summary()}; load average {os.getloadavg()[0]:.2f} at the start")
    ours, last_memory = [], [0, 0]

    def synthetic(label="synthetic tensors"):
        with TreeMemorySampler() as mem:
            model, opt = build(args, args.classes)
            wall, cpu, _ = run(args, synthetic_batches(args, args.classes), model, opt, profile=args.profile)
            del model, opt
        ours.append((wall, cpu))
        last_memory[:] = [mem.peak_pss, mem.peak_rss]
        print(f"{label} : {wall:6.2f} img/s wall, {cpu:6.2f} img/s of CPU time ({args.steps} steps after "
              f"{args.warmup} warm-up, load average {os.getloadavg()[0]:.1f}); process tree peak PSS "
              f"{gb(mem.peak_pss)}, RSS {gb(mem.peak_rss)}", flush=True)

    if args.result_json:  # one --variant measurement
        synthetic()
        with open(args.result_json, "w") as f:
            json.dump({"wall": ours[0][0], "cpu": ours[0][1], "peak_pss": last_memory[0], "peak_rss": last_memory[1],
                       "load": os.getloadavg()[0], "options": options}, f)
        return status
    if args.variant:
        run_variants(args, sys.argv[1:] if argv is None else list(argv))
        return status
    python = torch_python(args) if args.torch else None
    if args.data in ("synthetic", "both") or args.torch:
        synthetic()
    if args.torch:
        results = []
        for variant in [v for v in args.torch_variants.split(",") if v]:
            r = torch_reference(args, python, variant)
            results.append(r)
            if "error" in r:
                print(f"PyTorch {variant:13s}: failed: {r['error'][0]}", flush=True)
                continue
            print(f"PyTorch {r['torch']} {variant:13s}: {r['wall_img_s']:6.2f} img/s wall, {r['cpu_img_s']:6.2f} "
                  f"img/s of CPU time (load average {r['load']:.1f}); peak RSS {gb(r['peak_rss_bytes'])}", flush=True)
        synthetic("synthetic, again  ")  # ours after torch too: the ratio is not one side's luck of the load
        good = [r for r in results if "error" not in r]
        if good:
            best_wall = max(good, key=lambda r: r["wall_img_s"])
            best_cpu = max(good, key=lambda r: r["cpu_img_s"])
            wall, cpu = max(w for w, _ in ours), max(c for _, c in ours)
            print(f"ratio ours / PyTorch's best: {wall / best_wall['wall_img_s']:.2f} wall ({best_wall['variant']}), "
                  f"{cpu / best_cpu['cpu_img_s']:.2f} CPU time ({best_cpu['variant']}); best of our "
                  f"{len(ours)} runs, batch {args.batch_size}, {args.threads} threads, load average "
                  f"{os.getloadavg()[0]:.1f} at the end")
    if args.data in ("demo", "both"):
        with TreeMemorySampler() as mem:
            batches, num_classes, loader = demo
            try:
                model, opt = build(args, num_classes)
                wall, cpu, _ = run(args, batches, model, opt)
            finally:
                loader.close()
        print(f"demo dataset      : {wall:6.2f} img/s wall, {cpu:6.2f} img/s of main-process CPU time "
              f"({num_classes} classes, {args.num_workers} loader workers, load average {os.getloadavg()[0]:.1f}); "
              f"process tree peak PSS {gb(mem.peak_pss)}, RSS {gb(mem.peak_rss)}")
    print(f"peak RSS of this process over the run {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return status


if __name__ == "__main__":
    sys.exit(main())
