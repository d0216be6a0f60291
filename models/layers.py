"""Small building blocks shared by the backbones.

Every PReLU is made by `make_prelu` and every depthwise convolution by `make_depthwise_conv`,
so a faster implementation of either can be swapped in here once for all models. Whatever is
swapped in must keep the parameter names and shapes (PReLU: `_weight` [C], as paddle.nn.PReLU
names it; depthwise conv: `weight` [C, 1, k, k], no bias), or older checkpoints stop loading.

Sub-layer names (`conv`, `bn`, `prelu`) follow PaddleClas so its checkpoints load by name.

The factories return `PReLU` and `DepthwiseConv2D`, subclasses of the Paddle layers with the same
parameters, which run the fused C++ kernels of models/fast_cpu_ops.py in CPU training once
`fast_cpu_ops.enable()` has succeeded (engine/training/cpu_speed.py does it), and Paddle's own operators
otherwise (GPU, AMP, export tracing, or no compiler).
"""
import logging

import paddle
import paddle.nn as nn
from paddle import ParamAttr
from paddle.distributed.fleet.utils import recompute as paddle_recompute
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


def bn_prelu(bn, prelu, x):
    """`prelu(bn(x))`, or `bn(x)` when `prelu` is None. In CPU training with the fused kernels it
    runs as one layer that keeps only its output for the backward pass, not `x` and `bn(x)` too
    (models/fast_cpu_ops.batchnorm_prelu: same output, gradients and running statistics)."""
    return fast_cpu_ops.batchnorm_prelu(x, bn, prelu)


def conv_channels_last(conv, x):
    """`conv(x)` for NHWC `x` and out, with the conv layer's own NCHW-shaped weight: the
    channels-last kernels (models/fast_cpu_ops.py) for depthwise and dense convolutions without
    bias, else the layer itself between two transposes."""
    geometry = conv._fast_geometry() if isinstance(conv, DepthwiseConv2D) else None
    if geometry is not None:
        return fast_cpu_ops.depthwise_conv2d_nhwc(x, conv.weight, *geometry)
    if (type(conv) is nn.Conv2D and conv._groups == 1 and conv.bias is None and conv._padding_mode == "zeros"
            and list(conv._dilation) == [1, 1] and conv._stride[0] == conv._stride[1]
            and isinstance(conv._padding, int) and conv._kernel_size[0] == conv._kernel_size[1]):
        return fast_cpu_ops.conv2d_nhwc(x, conv.weight, conv._stride[0], conv._padding)
    return paddle.transpose(conv(paddle.transpose(x, [0, 3, 1, 2])), [0, 2, 3, 1])


def bn_prelu_channels_last(bn, prelu, x):
    """`bn_prelu` for NHWC `x` and out (fast_cpu_ops.batchnorm_prelu_nhwc)."""
    return fast_cpu_ops.batchnorm_prelu_nhwc(x, bn, prelu)


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
        x = self.conv(x)
        if self.act == "prelu":
            return bn_prelu(self.bn, self.prelu, x)
        if self.act == "relu":
            return self.relu(self.bn(x))
        return bn_prelu(self.bn, None, x)

    def forward_channels_last(self, x):
        """`forward` on NHWC `x` (CPU training with the channels-last kernels), NHWC out."""
        x = conv_channels_last(self.conv, x)
        if self.act == "relu":
            return paddle.nn.functional.relu(bn_prelu_channels_last(self.bn, None, x))
        return bn_prelu_channels_last(self.bn, self.prelu if self.act == "prelu" else None, x)


def ConvBNPReLU(in_channels, out_channels, kernel_size, stride=1, padding=0, depthwise=False):
    """ConvBN followed by a per-channel PReLU."""
    return ConvBN(in_channels, out_channels, kernel_size, stride, padding, depthwise=depthwise, act="prelu")


def ConvBNReLU(in_channels, out_channels, kernel_size, stride=1, padding=0):
    """ConvBN followed by ReLU."""
    return ConvBN(in_channels, out_channels, kernel_size, stride, padding, act="relu")


class _DropNoGradInputWarning(logging.Filter):
    """Paddle's recompute warns when no input of a block needs a gradient (the image into the first
    layer), as if recomputing it were useless; with the hook implementation used here the block's
    parameters still get their gradients, so the warning is wrong and only that one is dropped."""

    def filter(self, record):
        return "None of the inputs to current recompute block need grad" not in record.getMessage()


logging.getLogger("paddle.distributed.fleet.utils.log_util").addFilter(_DropNoGradInputWarning())


def _batchnorms(layer):
    return [m for m in layer.sublayers(include_self=True) if isinstance(m, nn.BatchNorm2D)]


def recomputed(layer, x, run_layer=None):
    """`layer(x)` whose activations are not kept for the backward pass: they are computed again
    there from `x` (paddle.distributed.fleet.utils.recompute, hook implementation), trading one
    more forward pass of `layer` for its activation memory. Loss and gradients equal `layer(x)`.

    The second forward would update the BatchNorm running statistics a second time; they are
    put back to their values after the first, so the statistics also equal the plain run's.
    `run_layer` (default: `layer` itself) is what runs, e.g. layer.forward_channels_last.
    """
    norms = _batchnorms(layer)
    calls = []
    run_layer = run_layer or layer

    def run(inp):
        calls.append(1)
        if len(calls) == 1 or not norms:
            return run_layer(inp)
        with paddle.no_grad():
            kept = [(paddle.assign(bn._mean), paddle.assign(bn._variance)) for bn in norms]
        out = run_layer(inp)
        with paddle.no_grad():
            for bn, (mean, var) in zip(norms, kept):
                paddle.assign(mean, output=bn._mean)
                paddle.assign(var, output=bn._variance)
        return out

    return paddle_recompute(run, x, use_reentrant=False)


@paddle.jit.not_to_static  # export traces it as the plain loop it is in eval mode
def run_layers(layers, x, recompute=False, channels_last=False):
    """`x` through `layers` in order; with `recompute` (in training, with gradients on) each one
    through `recomputed`, so only the inputs of the layers stay in memory until the backward.
    `channels_last`: NHWC `x`, each layer run by its forward_channels_last."""
    use = recompute and paddle.is_grad_enabled() and any(layer.training for layer in layers)
    for layer in layers:
        run_layer = layer.forward_channels_last if channels_last else layer
        x = recomputed(layer, x, run_layer) if use else run_layer(x)
    return x
