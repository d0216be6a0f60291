"""Small building blocks shared by the backbones.

Every PReLU is made by `make_prelu` and every depthwise convolution by `make_depthwise_conv`,
so a faster implementation of either can be swapped in here once for all models. Whatever is
swapped in must keep the parameter names and shapes (PReLU: `_weight` [C], as paddle.nn.PReLU
names it; depthwise conv: `weight` [C, 1, k, k], no bias), or older checkpoints stop loading.

Sub-layer names (`conv`, `bn`, `prelu`) follow PaddleClas so its checkpoints load by name.

The factories return `PReLU` and `DepthwiseConv2D`, subclasses of the Paddle layers with the same
parameters, which run the fused C++ kernels of models/fast_cpu_ops.py in CPU training once
`fast_cpu_ops.enable()` has succeeded (engine/cpu_speed.py does it), and Paddle's own operators
otherwise (GPU, AMP, export tracing, or no compiler).
"""
import paddle.nn as nn
from paddle import ParamAttr
from paddle.nn.initializer import Constant, KaimingNormal

from models import fast_cpu_ops


def _conv_weight_attr():
    # He initialisation over fan-in, as the reference backbones use (std = sqrt(2 / (k*k*C_in/groups))).
    return ParamAttr(initializer=KaimingNormal())


def make_conv(in_channels, out_channels, kernel_size, stride=1, padding=0):
    """A dense (groups=1) convolution without bias: a BatchNorm always follows it."""
    return nn.Conv2D(
        in_channels, out_channels, kernel_size, stride=stride, padding=padding,
        weight_attr=_conv_weight_attr(), bias_attr=False,
    )


class DepthwiseConv2D(nn.Conv2D):
    """paddle.nn.Conv2D with groups == channels that runs the fused CPU kernel when it can.

    Same parameters and state-dict names as nn.Conv2D. The kernel (models/fast_cpu_ops.py) is
    used only once enabled, in dygraph mode, for float32 CPU tensors, square stride, symmetric
    zero padding, no dilation and no bias; everything else (GPU, AMP, export) runs nn.Conv2D.
    """

    def _fast_geometry(self):
        stride, pad, dil = self._stride, self._padding, self._dilation
        if self.bias is not None or self._data_format != "NCHW" or self._padding_mode != "zeros":
            return None
        if list(dil) != [1, 1] or stride[0] != stride[1] or not isinstance(pad, int):
            return None
        if self._kernel_size[0] != self._kernel_size[1] or self._groups != self._in_channels:
            return None
        return stride[0], pad

    def forward(self, x):
        if fast_cpu_ops.usable_for(x):
            geometry = self._fast_geometry()
            if geometry is not None:
                return fast_cpu_ops.depthwise_conv2d(x, self.weight, *geometry)
        return super().forward(x)


class PReLU(nn.PReLU):
    """paddle.nn.PReLU (per-channel, NCHW) that runs the fused CPU kernel when it can.

    Same parameter (`_weight` [C]) as nn.PReLU; falls back to it as DepthwiseConv2D does.
    """

    def forward(self, x):
        if fast_cpu_ops.usable_for(x) and self._data_format == "NCHW" and x.ndim >= 2 \
                and self._num_parameters == x.shape[1]:
            return fast_cpu_ops.prelu(x, self._weight)
        return super().forward(x)


def make_depthwise_conv(channels, kernel_size, stride=1, padding=0):
    """A depthwise convolution (one filter per channel), without bias. Weight: [C, 1, k, k]."""
    return DepthwiseConv2D(
        channels, channels, kernel_size, stride=stride, padding=padding, groups=channels,
        weight_attr=_conv_weight_attr(), bias_attr=False,
    )


def make_prelu(channels):
    """PReLU with one learnt slope per channel (`_weight` [C], initialised to 0.25)."""
    return PReLU(num_parameters=channels, init=0.25)


def make_batchnorm(channels):
    """BatchNorm2D with scale 1 and shift 0; state names weight, bias, _mean, _variance."""
    return nn.BatchNorm2D(
        channels,
        weight_attr=ParamAttr(initializer=Constant(1.0)),
        bias_attr=ParamAttr(initializer=Constant(0.0)),
    )


class ConvBN(nn.Layer):
    """Convolution + BatchNorm + optional activation ("prelu", "relu" or None for linear).

    `depthwise=True` makes the convolution depthwise (in_channels must equal out_channels).
    Sub-layers: `conv`, `bn`, and `prelu` when act="prelu".
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, depthwise=False, act=None):
        super().__init__()
        if depthwise:
            if in_channels != out_channels:
                raise ValueError(f"depthwise ConvBN needs in_channels == out_channels, got {in_channels}, {out_channels}")
            self.conv = make_depthwise_conv(in_channels, kernel_size, stride, padding)
        else:
            self.conv = make_conv(in_channels, out_channels, kernel_size, stride, padding)
        self.bn = make_batchnorm(out_channels)
        if act not in ("prelu", "relu", None):
            raise ValueError(f"unknown activation '{act}' (use 'prelu', 'relu' or None)")
        self.act = act
        if act == "prelu":
            self.prelu = make_prelu(out_channels)
        elif act == "relu":
            self.relu = nn.ReLU()

    def forward(self, x):
        x = self.bn(self.conv(x))
        if self.act == "prelu":
            return self.prelu(x)
        if self.act == "relu":
            return self.relu(x)
        return x


def ConvBNPReLU(in_channels, out_channels, kernel_size, stride=1, padding=0, depthwise=False):
    """ConvBN followed by a per-channel PReLU."""
    return ConvBN(in_channels, out_channels, kernel_size, stride, padding, depthwise=depthwise, act="prelu")


def ConvBNReLU(in_channels, out_channels, kernel_size, stride=1, padding=0):
    """ConvBN followed by ReLU."""
    return ConvBN(in_channels, out_channels, kernel_size, stride, padding, act="relu")
