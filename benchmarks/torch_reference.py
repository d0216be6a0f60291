"""The PyTorch reference of benchmarks/train_speed.py: the same training step in PyTorch.

    python benchmarks/torch_reference.py --variant eager|channels_last|compile --batch-size 64 --threads 1

Runs under a Python that has PyTorch (train_speed.py --torch starts it, one process per variant so
that each peak memory is its own). It imports nothing from this project: the network below is
MobileFaceNet written from the same layer table as models/mobilefacenet.py (Chen et al., 2018),
with the same ArcFace head (m 0.5, s 64, the same pi - m continuation), cross-entropy and AdamW
(lr 1e-3, weight decay 0.05 on 2+-D parameters only), fp32, 112x112 inputs, 4 fixed random batches
cycled. Variants: eager (NCHW), channels_last (NHWC memory format), compile (torch.compile of the
channels-last model, default mode). Prints one JSON line: wall and CPU-time images/s over --steps
timed steps after --warmup (compilation happens in the warm-up), the loss of each step and the
process's peak RSS.
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# (expansion t, output channels c, repeats n, stride of the first s): the paper's table, as in models/mobilefacenet.py
BOTTLENECK_SETTINGS = [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]


def conv_bn(cin, cout, k, stride=1, padding=0, groups=1, prelu=True):
    layers = [nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if prelu:
        layers.append(nn.PReLU(cout, init=0.25))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """1x1 expand + BN + PReLU, depthwise 3x3 + BN + PReLU, 1x1 project + BN (+ residual)."""

    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(conv_bn(cin, hidden, 1), conv_bn(hidden, hidden, 3, stride, 1, groups=hidden),
                                  conv_bn(hidden, cout, 1, prelu=False))

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileFaceNet(nn.Module):
    def __init__(self, embedding_size=128):
        super().__init__()
        self.conv1 = conv_bn(3, 64, 3, 2, 1)                     # 112x112x3 -> 56x56x64
        self.dw_conv1 = conv_bn(64, 64, 3, 1, 1, groups=64)      # depthwise 3x3
        blocks, c_in = [], 64
        for t, c, n, s in BOTTLENECK_SETTINGS:
            for i in range(n):
                blocks.append(Bottleneck(c_in, c, s if i == 0 else 1, t))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = conv_bn(c_in, 512, 1)                      # 7x7x128 -> 7x7x512
        self.linear7 = conv_bn(512, 512, 7, groups=512, prelu=False)  # global depthwise 7x7
        self.linear1 = conv_bn(512, embedding_size, 1, prelu=False)   # linear 1x1 + BN
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = self.blocks(self.dw_conv1(self.conv1(x)))
        return torch.flatten(self.linear1(self.linear7(self.conv2(x))), 1)


class ArcMargin(nn.Module):
    def __init__(self, embedding_size, class_num, margin=0.5, scale=64.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(embedding_size, class_num))
        nn.init.xavier_normal_(self.weight)
        self.scale, self.cos_m, self.sin_m = scale, math.cos(margin), math.sin(margin)
        self.th, self.mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin

    def forward(self, features, label):
        cos = F.normalize(features, dim=1) @ F.normalize(self.weight, dim=0)
        sin = torch.sqrt(torch.clamp(1.0 - cos * cos, min=1e-12))
        phi = cos * self.cos_m - sin * self.sin_m
        phi = torch.where(cos > self.th, phi, cos - self.mm)
        one_hot = F.one_hot(label, cos.shape[1]).to(cos.dtype)
        return (one_hot * phi + (1.0 - one_hot) * cos) * self.scale


class FaceRecModel(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.backbone = MobileFaceNet()
        self.head = ArcMargin(128, num_classes)

    def forward(self, x, label):
        return F.cross_entropy(self.head(self.backbone(x), label), label)


def peak_rss_bytes():
    """This process's own peak RSS: VmHWM, which starts afresh at exec; ru_maxrss would carry the
    peak of the parent that started this process (a 3.8 GB trainer) through fork and exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=("eager", "channels_last", "compile"), default="eager")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = FaceRecModel(args.classes).train()
    channels_last = args.variant in ("channels_last", "compile")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    decay = [q for q in model.parameters() if q.ndim > 1]
    no_decay = [q for q in model.parameters() if q.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3)
    step_fn = torch.compile(model) if args.variant == "compile" else model
    gen = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(4):
        x = torch.rand(args.batch_size, 3, 112, 112, generator=gen) * 2 - 1
        batches.append((x.contiguous(memory_format=torch.channels_last) if channels_last else x,
                        torch.randint(0, args.classes, (args.batch_size,), generator=gen)))
    losses, t0, c0 = [], None, None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            t0, c0 = time.perf_counter(), time.process_time()
        x, y = batches[i % 4]
        loss = step_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = args.batch_size * args.steps
    print(json.dumps({"variant": args.variant, "torch": torch.__version__, "wall_img_s": n / wall,
                      "cpu_img_s": n / cpu, "losses": losses, "threads": args.threads,
                      "peak_rss_bytes": peak_rss_bytes(),
                      "load": os.getloadavg()[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
