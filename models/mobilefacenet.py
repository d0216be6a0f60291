"""MobileFaceNet (Chen et al., 2018): a 128-d face embedding network for 112x112 faces.

About 1.0 M parameters and 0.22 G multiply-adds per 112x112 image. Layer table (input 112x112):

    input      operator                          t    c    n   s
    112x112x3  conv3x3 + BN + PReLU              -    64   1   2
    56x56x64   depthwise conv3x3 + BN + PReLU    -    64   1   1
    56x56x64   bottleneck                        2    64   5   2
    28x28x64   bottleneck                        4    128  1   2
    14x14x128  bottleneck                        2    128  6   1
    14x14x128  bottleneck                        4    128  1   2
    7x7x128    bottleneck                        2    128  2   1
    7x7x128    conv1x1 + BN + PReLU              -    512  1   1
    7x7x512    global depthwise conv7x7 + BN     -    512  1   1
    1x1x512    conv1x1 + BN (linear)             -    128  1   1

Parameter names match PaddleClas' MobileFaceNet (conv1, dw_conv1, blocks.i.conv.j, conv2,
linear7, linear1), so its checkpoints load by name.
"""
import paddle
import paddle.nn as nn

from models import fast_cpu_ops
from models.layers import (
    ConvBN,
    ConvBNPReLU,
    bn_prelu,
    bn_prelu_channels_last,
    conv_channels_last,
    make_batchnorm,
    make_conv,
    make_depthwise_conv,
    make_prelu,
    run_layers,
)

# Inverted-residual stages: (expansion t, output channels c, repeats n, stride of the first s).
BOTTLENECK_SETTINGS = [
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
]


class Bottleneck(nn.Layer):
    """Inverted residual: 1x1 expand + BN + PReLU, depthwise 3x3 + BN + PReLU, 1x1 project + BN.

    The eight layers sit in one Sequential named `conv` (indices 0..7) because that is how
    PaddleClas names them (blocks.i.conv.0.weight ...); the residual is added when the block
    keeps both the resolution and the channel count.
    """

    def __init__(self, in_channels, out_channels, stride, expansion):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            make_conv(in_channels, hidden, 1),                              # 0 expand
            make_batchnorm(hidden),                                         # 1
            make_prelu(hidden),                                             # 2
            make_depthwise_conv(hidden, 3, stride=stride, padding=1),       # 3 depthwise
            make_batchnorm(hidden),                                         # 4
            make_prelu(hidden),                                             # 5
            make_conv(hidden, out_channels, 1),                             # 6 project (linear)
            make_batchnorm(out_channels),                                   # 7
        )

    def forward(self, x):
        c = self.conv  # the Sequential's order, with each BatchNorm (+ PReLU) as one fused step
        out = bn_prelu(c[1], c[2], c[0](x))
        out = bn_prelu(c[4], c[5], c[3](out))
        out = bn_prelu(c[7], None, c[6](out))
        return x + out if self.use_residual else out

    def forward_channels_last(self, x):
        """`forward` on NHWC activations (CPU training with the channels-last kernels)."""
        c = self.conv
        out = bn_prelu_channels_last(c[1], c[2], conv_channels_last(c[0], x))
        out = bn_prelu_channels_last(c[4], c[5], conv_channels_last(c[3], out))
        out = bn_prelu_channels_last(c[7], None, conv_channels_last(c[6], out))
        return x + out if self.use_residual else out


class MobileFaceNet(nn.Layer):
    """112x112x3 -> [N, embedding_size] raw (not normalised) face features."""

    def __init__(self, embedding_size=128, settings=BOTTLENECK_SETTINGS, recompute=False):
        super().__init__()
        self.embedding_size = embedding_size
        self.recompute = recompute  # training: recompute the activations of conv1, dw_conv1 and each block in backward
        self.conv1 = ConvBNPReLU(3, 64, 3, stride=2, padding=1)
        self.dw_conv1 = ConvBNPReLU(64, 64, 3, stride=1, padding=1, depthwise=True)

        blocks = []
        channels = 64
        for t, c, n, s in settings:
            for i in range(n):
                blocks.append(Bottleneck(channels, c, stride=s if i == 0 else 1, expansion=t))
                channels = c
        self.blocks = nn.Sequential(*blocks)

        self.conv2 = ConvBNPReLU(channels, 512, 1)
        # Global depthwise conv: a learnt spatial weighting of the 7x7 map instead of average
        # pooling (the face centre matters more than the corners). No padding: 7x7 -> 1x1.
        self.linear7 = ConvBN(512, 512, 7, depthwise=True, act=None)
        self.linear1 = ConvBN(512, embedding_size, 1, act=None)

    def forward(self, x):
        if self.training and fast_cpu_ops.channels_last_for(x):
            # CPU training: the same layers on [N, H, W, C] activations (faster there, see
            # models/fast_cpu_ops.py); after the global 7x7 conv the map is 1x1, so flattening
            # either layout gives the same [N, C].
            x = run_layers([self.conv1, self.dw_conv1, *self.blocks], paddle.transpose(x, [0, 2, 3, 1]),
                           self.recompute, channels_last=True)
            for layer in (self.conv2, self.linear7, self.linear1):
                x = layer.forward_channels_last(x)
            return paddle.flatten(x, start_axis=1)
        x = run_layers([self.conv1, self.dw_conv1, *self.blocks], x, self.recompute)
        x = self.conv2(x)
        x = self.linear7(x)
        x = self.linear1(x)
        return paddle.flatten(x, start_axis=1)
