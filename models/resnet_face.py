"""ResNet50_face: a bottleneck ResNet50 adapted to 112x112 faces, 512-d embedding.

Layer table (input 112x112):

    input        operator                                   out     blocks  first stride
    112x112x3    conv7x7 + BN + ReLU (stride 1, no 2x down)  64      1       1
    112x112x64   max-pool 3x3                                64      1       2
    56x56x64     bottleneck stage 1                          256     3       1
    56x56x256    bottleneck stage 2                          512     4       2
    28x28x512    bottleneck stage 3                          1024    6       2
    14x14x1024   bottleneck stage 4                          2048    3       2
    7x7x2048     global average pool + Linear                512     -       -

Total stride 16 (112 -> 7), about 24.6 M parameters (23.5 M convolutional + 1.05 M in the
2048->512 Linear). It is a plain ResNet50 with a stride-1 stem, not insightface's IResNet50.

About the pool: the reference config (PaddleX ResNet50_face.yaml) asks for `max_pool: False`
with `stride_list: [1, 2, 2, 2, 2]`, but the PaddleClas ResNet it builds has no such option and
always applies its 3x3 stride-`stride_list[1]` max-pool, so the network actually trained and
published pools once after the stem. We do the same, which is what makes the total stride 16 and
keeps features identical for weights trained by the reference.

Parameter names follow PaddleClas' ResNet (stem.0.conv/bn, blocks.i.conv0/conv1/conv2/short,
fc), so its checkpoints load by name.
"""
import math

import paddle
import paddle.nn as nn
from paddle import ParamAttr
from paddle.nn.initializer import Uniform

from models.layers import ConvBN, ConvBNReLU, run_layers

# (bottleneck width, blocks, stride of the first block); the output width is 4x the bottleneck width.
STAGE_SETTINGS = [
    (64, 3, 1),
    (128, 4, 2),
    (256, 6, 2),
    (512, 3, 2),
]
EXPANSION = 4


class BottleneckBlock(nn.Layer):
    """1x1 reduce + BN + ReLU, 3x3 (strided) + BN + ReLU, 1x1 expand + BN, plus shortcut, then ReLU.

    The first block of each stage changes width (and maybe resolution), so its shortcut is a
    strided 1x1 conv + BN (`short`); the others add the input unchanged.
    """

    def __init__(self, in_channels, width, stride, projection):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv0 = ConvBNReLU(in_channels, width, 1)
        self.conv1 = ConvBNReLU(width, width, 3, stride=stride, padding=1)
        self.conv2 = ConvBN(width, out_channels, 1, act=None)
        self.short = ConvBN(in_channels, out_channels, 1, stride=stride, act=None) if projection else None
        self.relu = nn.ReLU()

    def forward(self, x):
        shortcut = self.short(x) if self.short is not None else x
        out = self.conv2(self.conv1(self.conv0(x)))
        return self.relu(out + shortcut)


class ResNet50Face(nn.Layer):
    """112x112x3 -> [N, embedding_size] raw (not normalised) face features."""

    def __init__(self, embedding_size=512, stages=STAGE_SETTINGS, recompute=False):
        super().__init__()
        self.embedding_size = embedding_size
        self.recompute = recompute  # training: recompute the activations of the stem and each block in backward
        self.stem = nn.Sequential(ConvBNReLU(3, 64, 7, stride=1, padding=3))
        self.max_pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)

        blocks = []
        channels = 64
        for width, n, stride in stages:
            for i in range(n):
                blocks.append(BottleneckBlock(channels, width, stride=stride if i == 0 else 1, projection=i == 0))
                channels = width * EXPANSION
        self.blocks = nn.Sequential(*blocks)

        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        bound = 1.0 / math.sqrt(channels)
        self.fc = nn.Linear(channels, embedding_size, weight_attr=ParamAttr(initializer=Uniform(-bound, bound)))

    def forward(self, x):
        x = run_layers([self.stem, self.max_pool, *self.blocks], x, self.recompute)
        x = paddle.flatten(self.avg_pool(x), start_axis=1)
        return self.fc(x)
