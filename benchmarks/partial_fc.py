"""Partial FC on a large synthetic head: time per step and peak memory at several sample rates.

    python benchmarks/partial_fc.py [--classes 200000 --dim 128 --batch 128 --steps 5 --threads 2 --rates 1.0 0.1]

Each rate runs in a fresh process (so peak RSS is its own): random unit features (the backbone's
output) through ArcMargin (m 0.5, s 64), cross-entropy, backward, AdamW step on the head. Prints
the CPU, threads and load with the figures.
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def one_rate(args):
    import resource

    import paddle
    import paddle.nn.functional as F

    from foundation.runtime import set_threads
    from models import ArcMargin

    set_threads(args.threads)
    paddle.seed(0)
    head = ArcMargin(args.dim, args.classes, sample_rate=args.rate)
    head.train()
    opt = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=head.parameters())
    times, losses = [], []
    for step in range(args.steps + 1):
        feat = paddle.randn([args.batch, args.dim])
        label = paddle.randint(0, args.classes, [args.batch])
        start = time.perf_counter()
        logits, target = head.margin_logits(feat, label)
        loss = F.cross_entropy(logits, target.reshape([-1, 1]))
        loss.backward()
        opt.step()
        opt.clear_grad()
        if step:  # the first step allocates the optimizer state
            times.append(time.perf_counter() - start)
        losses.append(float(loss))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rate": args.rate, "step_s": sum(times) / len(times), "peak_rss_mb": peak_mb,
                      "logits_per_step": int(logits.shape[1]), "loss_first": losses[0]}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=200000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rate is not None:
        return one_rate(args)
    from foundation.runtime import cpuinfo_field

    print(f"CPU {cpuinfo_field('model name')}, {args.threads} threads, load {os.getloadavg()[0]:.2f}; "
          f"{args.classes} classes, dim {args.dim}, batch {args.batch}, {args.steps} timed steps")
    rows = []
    for rate in args.rates:
        out = subprocess.run([sys.executable, __file__, "--rate", str(rate), "--classes", str(args.classes),
                              "--dim", str(args.dim), "--batch", str(args.batch), "--steps", str(args.steps),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print("| sample rate | classes scored per step | step s | peak RSS MB |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['rate']:g} | {r['logits_per_step']} | {r['step_s']:.3f} ({base['step_s'] / r['step_s']:.1f}x) "
              f"| {r['peak_rss_mb']:.0f} |")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
