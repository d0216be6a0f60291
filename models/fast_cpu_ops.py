"""Fused CPU kernels for PReLU and depthwise convolution, built from models/csrc at run time.

Why: in Paddle eager mode on CPU these two layers took about 75% of MobileFaceNet's training
time (PReLU forward+backward alone about half), because Paddle's CPU kernels for them run far
below memory bandwidth. The C++ custom operators in csrc/fast_cpu_ops.cc do the same arithmetic
(same formulas, float32, per-channel sums accumulated in double) plane by plane.

The kernels are optional. `enable()` compiles them once with the machine's C++ compiler through
paddle.utils.cpp_extension (about 30 s the first time, then cached per source, Paddle version,
compiler flags and CPU model) and returns False, with the reason in `status()`, when that is not
possible (no compiler, no Paddle headers...). Until `enable()` succeeds, and always for tensors
that are not float32 on CPU in dygraph mode (GPU, AMP, to_static/export tracing), the layers in
models/layers.py run Paddle's own operators, so exported inference models never contain these
custom operators.
"""
import contextlib
import hashlib
import os
import platform
import shutil
import sys
import warnings

from foundation.runtime import cache_dir, cpuinfo_field

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "fast_cpu_ops.cc")
# -march=native: the build happens on the machine that runs it, and the cache key holds the CPU model.
CXX_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17"]
LD_FLAGS = ["-fopenmp"]
DISABLE_ENV = "FACEFEAT_NO_FAST_OPS"  # set to 1 to never build or use the kernels

_module = None
_enabled = False
_status = "not requested"


def cpu_model_name():
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def build_key():
    """A short hash of everything the compiled library depends on."""
    import paddle

    h = hashlib.sha256()
    with open(SOURCE, "rb") as f:
        h.update(f.read())
    for part in (paddle.__version__, " ".join(CXX_FLAGS), cpu_model_name(), sys.version.split()[0]):
        h.update(part.encode())
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


def _compile_and_load():
    import fcntl
    import logging

    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        raise RuntimeError("no C++ compiler (c++, g++ or clang++) on PATH")
    key = build_key()
    build_dir = os.path.join(cache_dir(), f"fast_cpu_ops_{key}")
    os.makedirs(build_dir, exist_ok=True)
    log_path = os.path.join(build_dir, "build.log")
    if not any(name.endswith(".so") for _, _, files in os.walk(build_dir) for name in files):
        from foundation.logger import get_logger

        get_logger().info(f"Compiling the fused CPU kernels (first use only, about 30 s) in {build_dir}")
    # One build at a time: data-parallel ranks start together and share the cache folder.
    with open(os.path.join(build_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with warnings.catch_warnings(), _output_to(log_path):
                warnings.simplefilter("ignore")  # "No ccache found"
                from paddle.utils.cpp_extension import load

                # cpp_extension logs "using custom operator only" at INFO through the root logger.
                previous = logging.root.level
                logging.root.setLevel(logging.WARNING)
                try:
                    return load(name=f"fast_cpu_ops_{key}", sources=[SOURCE], extra_cxx_cflags=CXX_FLAGS,
                                extra_ldflags=LD_FLAGS, build_directory=build_dir, verbose=False)
                finally:
                    logging.root.setLevel(previous)
        except SystemExit as e:  # setuptools exits on a compiler error
            raise RuntimeError(f"compiling {SOURCE} failed (exit {e.code}); compiler output: {log_path}") from None
        except Exception as e:
            raise RuntimeError(f"{type(e).__name__}: {e}; compiler output: {log_path}") from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def enable(on=True):
    """Build/load the kernels (when `on`) and route the fast layers to them. Returns whether they are in use."""
    global _module, _enabled, _status
    if not on:
        _enabled, _status = False, "disabled"
        return False
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        _enabled, _status = False, f"disabled by {DISABLE_ENV}"
        return False
    if _module is None:
        try:
            _module = _compile_and_load()
        except Exception as e:
            _enabled, _status = False, f"unavailable ({e}); using Paddle's own PReLU and depthwise conv"
            return False
    _enabled, _status = True, "in use (fused C++ PReLU and depthwise conv kernels)"
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
    import paddle

    return paddle.in_dynamic_mode() and x.dtype == paddle.float32 and x.place.is_cpu_place()


def prelu(x, weight):
    """PReLU over dim 1 of NC... `x` with weight [C]; same result as paddle.nn.functional.prelu."""
    return _module.fast_prelu(x, weight)


def depthwise_conv2d(x, weight, stride, padding):
    """NCHW depthwise convolution, weight [C, 1, K, K], square stride and symmetric zero padding."""
    return _module.fast_depthwise_conv2d(x, weight, int(stride), int(padding))
