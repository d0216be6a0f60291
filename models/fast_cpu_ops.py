"""Fused CPU training kernels, built from models/csrc at run time: PReLU, depthwise convolution and
BatchNorm + PReLU in NCHW (csrc/fast_cpu_ops.cc), and MobileFaceNet's channels-last (NHWC) path
(csrc/channels_last_ops.cc: pointwise convolutions as one MKL matrix product each, NHWC depthwise
convolution and BatchNorm + PReLU). BatchNorm + PReLU is there for memory: see batchnorm_prelu below.

Why: in Paddle eager mode on CPU these layers took about 75% of MobileFaceNet's training
time (PReLU forward+backward alone about half), because Paddle's CPU kernels for them run far
below memory bandwidth; and Paddle's NCHW convolutions run one small matrix product per image.
The C++ custom operators do the same arithmetic (same formulas, float32, per-channel sums
accumulated in double).

The kernels are optional. `enable()` compiles them once with the machine's C++ compiler through
paddle.utils.cpp_extension (about 40 s the first time, then cached in the project's cache folder
under `build_key()`: a hash of the sources, the Paddle version and commit, the compilers and their
versions, the flags, the MKL library, the Python version and environment (sys.prefix) and the CPU
model and flags, so separate virtualenvs on one machine never rebuild or load each other's
library). It returns False, never raising, with the reason in `status()`, when that is not possible
(no compiler, no Paddle headers...). Where Paddle's wheel has no MKL (libmklml_intel.so) the
channels-last kernels are compiled out and MobileFaceNet trains in NCHW. Until `enable()` succeeds,
and always for tensors that are not float32 on CPU in dygraph mode (GPU, AMP, to_static/export
tracing), the layers in models/layers.py run Paddle's own operators, so exported inference models
never contain these custom operators.
"""
import contextlib
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import sys
import sysconfig
import warnings

import numpy as np
import paddle

from foundation.logger import get_logger
from foundation.runtime import cache_dir, compiler_version, cpu_flags, cpuinfo_field, find_compiler

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "fast_cpu_ops.cc")
CHANNELS_LAST_SOURCE = os.path.join(os.path.dirname(SOURCE), "channels_last_ops.cc")
# -march=native: the build happens on the machine that runs it, and the cache key holds the CPU model and flags.
CXX_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17"]
LD_FLAGS = ["-fopenmp"]
DISABLE_ENV = "FACEFEAT_NO_FAST_OPS"  # set to 1 to never build or use the kernels
NO_FUSED_BN_ENV = "FACEFEAT_NO_FUSED_BN"  # set to 1 to keep BatchNorm + PReLU as Paddle's two layers
NO_CHANNELS_LAST_ENV = "FACEFEAT_NO_CHANNELS_LAST"  # set to 1 to train MobileFaceNet in NCHW
GEMM_ENV = "FACEFEAT_CPU_GEMM"  # mkl (default) or dnnl: the channels-last kernels' matrix product

_module = None
_enabled = False
_fused_bn = False
_channels_last = False
_status = "off (not requested)"


def cpu_model_name():
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cxx_compiler():
    """(path, reason): the C++ compiler paddle.utils.cpp_extension will use ($CXX, else c++ or g++
    on PATH) as an absolute path, or (None, why there is none)."""
    return find_compiler("CXX", ("c++", "g++"), "C++")


def _compiler_identity(path):
    return f"{path} -> {os.path.realpath(path)}: {compiler_version(path)}" if path else "none"


def build_key():
    """A short hash of everything the compiled library depends on (see the module docstring)."""
    cxx, _ = cxx_compiler()
    # setuptools, which cpp_extension drives, compiles and links with $CC / sysconfig's CC and
    # honours these variables too: they change the build as much as CXX does.
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "").split()
    cc_path = shutil.which(cc[0]) if cc else None
    build_env = " ".join(f"{name}={os.environ.get(name, '')}"
                         for name in ("CC", "CXX", "CFLAGS", "CPPFLAGS", "CXXFLAGS", "LDFLAGS", "LDSHARED"))
    parts = (
        "source",
        "paddle", paddle.__version__, str(getattr(paddle.version, "commit", "") or ""),
        "c++", _compiler_identity(cxx),
        "cc", _compiler_identity(cc_path),
        "flags", " ".join(CXX_FLAGS), " ".join(LD_FLAGS), build_env,
        "python", sys.version, sys.prefix,
        "cpu", cpu_model_name(), " ".join(sorted(cpu_flags())),
    )
    h = hashlib.sha256()
    for source in (SOURCE, CHANNELS_LAST_SOURCE):
        with open(source, "rb") as f:
            h.update(f.read())
    for part in (*parts, "gemm", str(gemm_choice()), mkl_library() or "none", dnnl_library() or "none"):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:12]


@contextlib.contextmanager
def _output_to(path):
    """Send this process's stdout/stderr (including the compiler's) to `path` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def mkl_library():
    """The MKL library shipped in Paddle's wheel (x86), whose cblas_sgemm the channels-last
    kernels call, or None (then they are compiled out and MobileFaceNet trains in NCHW)."""
    path = os.path.join(os.path.dirname(os.path.abspath(paddle.__file__)), "libs", "libmklml_intel.so")
    return path if os.path.isfile(path) else None


def dnnl_library():
    """The oneDNN library shipped in Paddle's wheel, or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(paddle.__file__)), "libs", "libdnnl.so.3")
    return path if os.path.isfile(path) else None


def gemm_choice():
    """'mkl', 'dnnl' or None: whose matrix product the channels-last kernels call.

    MKL by default: the kernels then share its OpenMP runtime, where oneDNN's dnnl_sgemm puts them
    on libgomp beside MKL's libiomp5 and trained markedly slower (docs/speed.md).
    FACEFEAT_CPU_GEMM=dnnl is there for CPUs where MKL's matrix product is slow (non-Intel ones
    run without the MKL vendor shim)."""
    wanted = os.environ.get(GEMM_ENV, "").strip().lower() or "mkl"
    found = {"mkl": mkl_library(), "dnnl": dnnl_library()}
    if found.get(wanted):
        return wanted
    return next((name for name in ("mkl", "dnnl") if found[name]), None)


def _blas_flags():
    """(compile flags, link flags) for the channels-last kernels: Paddle's own MKL (or oneDNN), found
    at run time through the rpath (Paddle has loaded the same file already).

    With MKL the kernels also take its OpenMP runtime (libiomp5, next to it) instead of GCC's
    libgomp: with two runtimes in one process each keeps its own threads, and MKL's spin for
    200 ms after every matrix product (KMP_BLOCKTIME) while the kernels' threads wait for the
    same cores."""
    choice = gemm_choice()
    if choice is None:
        return [], LD_FLAGS
    lib = mkl_library() if choice == "mkl" else dnnl_library()
    folder = os.path.dirname(lib)
    if choice == "dnnl":  # oneDNN in Paddle's wheel runs on libgomp, as the kernels do by default
        return ["-DFACEFEAT_HAVE_CBLAS", "-DFACEFEAT_GEMM_DNNL"], [*LD_FLAGS, f"-L{folder}", "-l:libdnnl.so.3",
                                                                  f"-Wl,-rpath,{folder}"]
    openmp = ["-l:libiomp5.so"] if os.path.isfile(os.path.join(folder, "libiomp5.so")) else LD_FLAGS
    return ["-DFACEFEAT_HAVE_CBLAS"], [f"-L{folder}", "-l:libmklml_intel.so", *openmp, f"-Wl,-rpath,{folder}"]


def _compile_and_load():
    cxx, why = cxx_compiler()
    if not cxx:
        raise RuntimeError(why)
    key = build_key()
    build_dir = os.path.join(cache_dir(), f"fast_cpu_ops_{key}")
    os.makedirs(build_dir, exist_ok=True)
    log_path = os.path.join(build_dir, "build.log")
    if not any(name.endswith(".so") for _, _, files in os.walk(build_dir) for name in files):
        get_logger().info(f"Compiling the fused CPU kernels (first use only, about 30 s) in {build_dir}")
    # One build at a time: data-parallel ranks start together and share the cache folder.
    with open(os.path.join(build_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with warnings.catch_warnings(), _output_to(log_path):
                warnings.simplefilter("ignore")  # "No ccache found"
                # imported here, not at the top: it costs a second and warns about ccache,
                # and only a machine that builds the kernels needs it
                from paddle.utils.cpp_extension import load

                # cpp_extension logs "using custom operator only" at INFO through the root logger.
                previous = logging.root.level
                logging.root.setLevel(logging.WARNING)
                try:
                    blas_cflags, blas_ldflags = _blas_flags()
                    return load(name=f"fast_cpu_ops_{key}", sources=[SOURCE, CHANNELS_LAST_SOURCE],
                                extra_cxx_cflags=CXX_FLAGS + blas_cflags, extra_ldflags=blas_ldflags,
                                build_directory=build_dir, verbose=False)
                finally:
                    logging.root.setLevel(previous)
        except SystemExit as e:  # setuptools exits on a compiler error
            raise RuntimeError(f"compiling {SOURCE} and {CHANNELS_LAST_SOURCE} failed (exit {e.code}); compiler output: {log_path}") from None
        except Exception as e:
            raise RuntimeError(f"{type(e).__name__}: {e}; compiler output: {log_path}") from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def enable(on=True, channels_last=True, layout_reason=""):
    """Build/load the kernels (when `on`) and route the fast layers to them. Returns whether they are in use.
    `channels_last`: MobileFaceNet trains in NHWC (the caller's per-CPU choice, `layout_reason` says
    why; FACEFEAT_NO_CHANNELS_LAST=1 overrides it to NCHW).

    Never raises: when the kernels cannot be built or loaded, `status()` says why and the layers
    run Paddle's own operators.
    """
    global _module, _enabled, _status, _fused_bn, _channels_last
    _fused_bn = _channels_last = False
    if not on:
        _enabled, _status = False, "off (not requested); using Paddle's own PReLU and depthwise conv"
        return False
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        _enabled, _status = False, f"off (disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}); " \
                                   "using Paddle's own PReLU and depthwise conv"
        return False
    if _module is None:
        try:
            _module = _compile_and_load()
        except Exception as e:
            _enabled, _status = False, f"off ({e}); using Paddle's own PReLU and depthwise conv"
            return False
    _fused_bn = os.environ.get(NO_FUSED_BN_ENV, "").strip() in ("", "0")
    why = f": {layout_reason}" if layout_reason else ""
    if os.environ.get(NO_CHANNELS_LAST_ENV, "").strip() not in ("", "0"):
        layout = f"; MobileFaceNet in NCHW: {NO_CHANNELS_LAST_ENV}={os.environ[NO_CHANNELS_LAST_ENV]}"
    elif not channels_last:
        layout = f"; MobileFaceNet in NCHW{why}"
    elif not hasattr(_module, "fast_conv2d_nhwc"):
        layout = "; MobileFaceNet in NCHW: no MKL or oneDNN library in Paddle's wheel for the channels-last kernels"
    else:
        _channels_last = True
        gemm = {"mkl": "MKL", "dnnl": "oneDNN"}[gemm_choice()]
        layout = f"; MobileFaceNet channels-last (NHWC), convolutions as {gemm} matrix products{why}"
    _enabled, _status = True, "on (fused C++ PReLU and depthwise-conv kernels, " + (
        "BatchNorm + PReLU fused, keeping only its output for backward" if _fused_bn
        else f"BatchNorm + PReLU not fused: {NO_FUSED_BN_ENV}={os.environ[NO_FUSED_BN_ENV]}") + layout + ")"
    return True


def enabled():
    return _enabled


def status():
    """One line for the log: whether the kernels are in use and, if not, why."""
    return _status


def usable_for(x):
    """True when `x` can take the fused kernels: enabled, dygraph, float32, on CPU."""
    if not _enabled:
        return False
    return paddle.in_dynamic_mode() and x.dtype == paddle.float32 and x.place.is_cpu_place()


def prelu(x, weight):
    """PReLU over dim 1 of NC... `x` with weight [C]; same result as paddle.nn.functional.prelu."""
    return _module.fast_prelu(x, weight)


def depthwise_conv2d(x, weight, stride, padding):
    """NCHW depthwise convolution, weight [C, 1, K, K], square stride and symmetric zero padding."""
    return _module.fast_depthwise_conv2d(x, weight, int(stride), int(padding))


# --------------------------------------------------------------------- BatchNorm + PReLU, fused
# Eager autograd keeps, for every conv -> BatchNorm -> PReLU triple, the conv output (for the
# BatchNorm backward), the BatchNorm output (for the PReLU backward) and the PReLU output (for the
# next conv): three full-size tensors, about 60% of MobileFaceNet's training memory. The fused
# layer keeps only the PReLU output y (which the next conv keeps anyway) and writes the backward
# from it, as InPlace-ABN does: with every slope > 0 the BatchNorm output z is y where y > 0 and
# y / slope elsewhere, and x_hat = (z - beta) / gamma. Where that cannot be inverted (a slope <= 0,
# a |gamma| below GAMMA_FLOOR) the layer runs the plain operators for that step instead.
GAMMA_FLOOR = 1e-2  # below it, (z - beta) / gamma amplifies z's rounding too much


def _update_running_stats(bn, mean, var):
    """The running statistics as Paddle's batch_norm updates them (biased variance)."""
    momentum = float(bn._momentum)
    with paddle.no_grad():
        paddle.assign(bn._mean * momentum + mean * (1.0 - momentum), output=bn._mean)
        paddle.assign(bn._variance * momentum + var * (1.0 - momentum), output=bn._variance)


class _BatchNormPReLU(paddle.autograd.PyLayer):
    """The fused layer over dim 1 (NCHW), or over the last dim with channels_last=True (NHWC)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, slope, bn, channels_last=False):
        forward_op = _module.fast_bn_prelu_nhwc if channels_last else _module.fast_bn_prelu
        ctx.backward_op = _module.fast_bn_prelu_nhwc_backward if channels_last else _module.fast_bn_prelu_backward
        y, mean, var, inv_std = forward_op(x, gamma, beta, slope, float(bn._epsilon))
        _update_running_stats(bn, mean, var)
        # y.detach(): the same memory, but not the output object itself, which would hold this
        # context through its grad node (a reference cycle until the backward pass)
        ctx.save_for_backward(y.detach(), gamma, beta, slope, inv_std)
        ctx.slope_grad = not slope.stop_gradient
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, gamma, beta, slope, inv_std = ctx.saved_tensor()
        dx, dgamma, dbeta, dslope = ctx.backward_op(y, grad_y, gamma, beta, slope, inv_std)
        return dx, dgamma, dbeta, (dslope if ctx.slope_grad else None)


def _fused_slope(bn, prelu, channels, values_per_channel):
    """The per-channel slope the fused layer runs `bn` (+ `prelu`) with (PReLU's own, or ones for a
    BatchNorm alone), or None when it does not apply: not enabled, not training on batch statistics,
    frozen or missing affine parameters, a single value per channel, or not invertible (see above)."""
    if not (_fused_bn and bn.training and not bn._use_global_stats and bn.weight is not None
            and bn.bias is not None and not bn.weight.stop_gradient and not bn.bias.stop_gradient
            and values_per_channel > 1):
        return None
    with paddle.no_grad():
        invertible = float(bn.weight.abs().min()) >= GAMMA_FLOOR and (
            prelu is None or float(prelu._weight.min()) > 0.0)
    if not invertible:
        return None
    return prelu._weight if prelu is not None else _ones(channels)


@paddle.jit.not_to_static  # export traces the plain operators below (usable_for is False there)
def batchnorm_prelu(x, bn, prelu=None):
    """`prelu(bn(x))` (or `bn(x)` without `prelu`) for a paddle.nn.BatchNorm in training mode and a
    per-channel paddle.nn.PReLU: same output, gradients and running statistics, but only the output
    is kept for the backward pass (see above). Plain operators when the fused kernel does not apply."""
    if prelu is not None and (prelu._data_format != "NCHW" or prelu._num_parameters != x.shape[1]):
        return prelu(bn(x))
    slope = None
    if usable_for(x) and x.ndim >= 2 and bn._data_format in ("NCHW", "NC", "NCL", "NCDHW"):
        values = int(x.shape[0]) * (int(np.prod(x.shape[2:])) if x.ndim > 2 else 1)
        slope = _fused_slope(bn, prelu, int(x.shape[1]), values)
    if slope is not None:
        return _BatchNormPReLU.apply(x, bn.weight, bn.bias, slope, bn)
    return prelu(bn(x)) if prelu is not None else bn(x)


_ONES = {}


def _ones(channels):
    """A constant slope of 1 (PReLU as identity: plain BatchNorm), one per channel count."""
    if channels not in _ONES:
        _ONES[channels] = paddle.ones([channels], dtype="float32")
    return _ONES[channels]


# ------------------------------------------------------------------ channels-last (NHWC) training
# MobileFaceNet trains faster with its activations as [N, H, W, C] (csrc/channels_last_ops.cc: a
# 1x1 convolution is then one matrix product). The parameters keep their NCHW shapes and names;
# only the activations between the layers change layout, so checkpoints and exports are the same.


def channels_last_for(x):
    """True when a model may run its training forward on `x` in NHWC through these kernels."""
    return _channels_last and usable_for(x)


def conv2d_nhwc(x, weight, stride, padding):
    """Dense conv of NHWC `x` with weight [Cout, Cin, K, K] (no bias) -> NHWC."""
    return _module.fast_conv2d_nhwc(x, weight, int(stride), int(padding), not x.stop_gradient)


def depthwise_conv2d_nhwc(x, weight, stride, padding):
    """Depthwise conv of NHWC `x` with weight [C, 1, K, K] (no bias) -> NHWC."""
    return _module.fast_depthwise_conv2d_nhwc(x, weight, int(stride), int(padding))


def batchnorm_prelu_nhwc(x, bn, prelu=None):
    """`batchnorm_prelu` for NHWC `x` (channels last) with the same BatchNorm2D and PReLU layers:
    the fused kernel when it applies, else Paddle's own NHWC operators with the layers' parameters."""
    slope = _fused_slope(bn, prelu, int(x.shape[-1]), int(np.prod(x.shape[:-1])))
    if slope is not None:
        return _BatchNormPReLU.apply(x, bn.weight, bn.bias, slope, bn, True)
    z = paddle.nn.functional.batch_norm(x, bn._mean, bn._variance, weight=bn.weight, bias=bn.bias,
                                        training=bn.training, momentum=bn._momentum, epsilon=bn._epsilon,
                                        data_format="NHWC", use_global_stats=bn._use_global_stats)
    return z if prelu is None else paddle.nn.functional.prelu(z, prelu._weight, data_format="NHWC")
