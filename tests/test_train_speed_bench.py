"""benchmarks/train_speed.py, the instrument behind the README's training figures, on a tiny run:
its loss check (this configuration, plain float32 and float64 in fresh processes) starts every
curve from the same weights (ResNet50_face: drawn in float64 its initial weights differed) and passes; the printout names the layout and the peak memory."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_speed_loss_check_and_report():
    # Batch 4, not 2: with 2 images ResNet50_face's embedding BatchNorm maps them to +-1 whatever
    # they are, so every gradient behind it is rounding noise and AdamW's first step (about lr *
    # sign(g)) turns that noise into different weights for any change of rounding.
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "train_speed.py"), "--model", "ResNet50_face", "--batch-size", "4", "--classes", "10",
           "--threads", "1", "--steps", "1", "--warmup", "1", "--data", "synthetic", "--check-loss", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "PASS" in out and "loss check (2 steps" in out
    curves = {name: re.search(rf"{name}\s*: (.+)", out).group(1).split() for name in
              ("this run", "plain float32", "plain float64")}
    # the first loss is before any update: the same weights give it to float32 rounding
    first = [float(c[0]) for c in curves.values()]
    assert max(first) - min(first) <= 1e-4 * abs(first[0]), curves
    assert re.search(r"synthetic tensors :\s+[\d.]+ img/s wall", out)
    assert "peak PSS" in out
