"""Process set-up shared by every layer: CPU facts, threads, device, seeds and the cache folder.

Paddle forces OMP_NUM_THREADS=1 when it is unset, so the thread count is set here
deliberately, before Paddle is imported where possible and through Paddle's own call after.
Nothing here reads a config: callers pass plain values.
"""
import functools
import os
import random
import shlex
import shutil
import subprocess
import sys

import numpy as np

from foundation.errors import ConfigError

# the folder holding the top-level packages (foundation, models, datasets, engine) and configs/:
# the repository, or site-packages of an installed copy
PACKAGES_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpuinfo_field(key):
    """A field of the first CPU in /proc/cpuinfo ('vendor_id', 'model name', 'flags', ...) or ''."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags():
    """The CPU feature flags (avx2, avx512f, avx512_bf16, amx_bf16, ...) as a set."""
    return set(cpuinfo_field("flags").split())


# The CPU classes speed choices and measurements are kept for (docs/speed.md): vendor, then the
# widest vector unit and native bf16, which is what moves MKL's, oneDNN's and OpenVINO's kernels.
CPU_CLASSES = {
    "intel-amx": "Intel with AMX (Sapphire Rapids and later Xeons)",
    "intel-avx512": "Intel with AVX-512, no AMX",
    "intel-avx2": "Intel with AVX2, no AVX-512",
    "amd-avx512": "AMD with AVX-512 (Zen 4/5 EPYC and Ryzen)",
    "amd-avx2": "AMD with AVX2, no AVX-512 (Zen 1-3)",
    "other": "another vendor or architecture, or x86 without AVX2",
}
_AMD_VENDORS = ("AuthenticAMD", "HygonGenuine")
_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_class(vendor=None, flags=None):
    """This CPU's class (a key of CPU_CLASSES); `vendor` and `flags` default to /proc/cpuinfo's."""
    vendor = cpuinfo_field("vendor_id") if vendor is None else vendor
    flags = cpu_flags() if flags is None else set(flags)
    family = "intel" if vendor == "GenuineIntel" else "amd" if vendor in _AMD_VENDORS else ""
    if not family or "avx2" not in flags:
        return "other"
    if family == "intel" and "amx_bf16" in flags:
        return "intel-amx"
    return f"{family}-avx512" if "avx512f" in flags else f"{family}-avx2"


def cpu_bf16_class(flags=None):
    """'amx', 'avx512_bf16' or '' (no native bf16) for a set of CPU flags (this CPU's by default):
    the inference precision's question, where cpu_class answers the training layout's."""
    flags = cpu_flags() if flags is None else set(flags)
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return ""


def cpu_summary():
    """One line naming this CPU for a log or a benchmark: model, vendor, family/model, class, the
    flags that move speed, and the cores this process may use."""
    flags = cpu_flags()
    name = cpuinfo_field("model name") or "unknown CPU"
    ident = f"{cpuinfo_field('vendor_id') or 'unknown vendor'} family {cpuinfo_field('cpu family') or '?'} " \
            f"model {cpuinfo_field('model') or '?'}"
    shown = [f for f in _FLAGS_OF_INTEREST if f in flags] or ["none of " + "/".join(_FLAGS_OF_INTEREST)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({ident}; class {cpu_class()}; {' '.join(shown)}; {cores} cores)"


def find_compiler(env_var, names, kind):
    """(absolute path, '') of the compiler $env_var names (its first word), else of the first of
    `names` on PATH; (None, why) when there is none. `kind` ('C', 'C++') words the reason."""
    value = os.environ.get(env_var, "").strip()
    if value:
        words = shlex.split(value)
        path = shutil.which(words[0]) if words else None
        return (path, "") if path else (None, f"{env_var}={value!r} is not an executable")
    for name in names:
        path = shutil.which(name)
        if path:
            return path, ""
    return None, f"no {kind} compiler: {env_var} is unset and none of {', '.join(names)} is on PATH"


@functools.lru_cache(maxsize=None)
def compiler_version(path):
    """The first line of `path --version` ('' when it cannot be run): part of a build cache key."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def cache_dir(*parts):
    """The project's one cache folder ($XDG_CACHE_HOME/facefeat or ~/.cache/facefeat), or a
    sub-folder of it: compiled helpers, downloaded weights and models."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "facefeat", *parts)


def num_threads_from(value):
    """Global.num_threads: a positive count, or 0/None for every core."""
    n = int(value or 0)
    return n if n > 0 else (os.cpu_count() or 1)


def set_threads(n):
    """Use `n` CPU threads for OpenMP/MKL/OpenBLAS (and Paddle, if imported)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if "paddle" in sys.modules:
        from paddle.base import core  # only when Paddle is loaded already: never load it here

        core.set_num_threads(n)
    try:
        import cv2  # optional at this layer; every mode that reads images has it
    except ImportError:
        return
    # OpenCV's own thread pool does not survive fork: a forked data-loader worker that touches
    # it hangs. Images are processed in parallel at the image level instead (thread and process
    # pools), so OpenCV runs its functions sequentially (0 = no threading).
    cv2.setNumThreads(0)


def parse_device(device):
    """'cpu' | 'gpu' | 'gpu:0' | 'gpu:0,1' -> ('cpu'|'gpu', [ids])."""
    device = str(device or "cpu").strip().lower()
    kind, _, ids = device.partition(":")
    if kind not in ("cpu", "gpu"):
        raise ConfigError(f"Global.device '{device}' is not one of cpu, gpu, gpu:0, gpu:0,1,...")
    try:
        id_list = [int(i) for i in ids.split(",") if i.strip() != ""] if ids else ([0] if kind == "gpu" else [])
    except ValueError:
        raise ConfigError(f"Global.device '{device}': device ids must be integers, e.g. gpu:0,1") from None
    return kind, id_list


def seed_everything(seed):
    import paddle  # lazy: this module is imported by modes that never load Paddle

    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def setup_paddle(device="cpu", num_threads=0, seed=42, single_device=True):
    """Threads, device and seed; returns the paddle device string in use ('cpu', 'gpu:1')."""
    set_threads(num_threads_from(num_threads))
    import paddle  # lazy: see seed_everything

    kind, ids = parse_device(device)
    if kind == "gpu":
        if not paddle.is_compiled_with_cuda():
            raise ConfigError(f"Global.device={device} but this Paddle build has no CUDA: "
                              "install paddlepaddle-gpu or use -o Global.device=cpu")
        local_rank = int(os.environ.get("PADDLE_LOCAL_RANK", os.environ.get("FLAGS_selected_gpus", "0").split(",")[0] or 0))
        dev = f"gpu:{ids[local_rank] if single_device and local_rank < len(ids) else ids[0]}"
    else:
        dev = "cpu"
    paddle.set_device(dev)
    seed_everything(int(seed))
    return dev
