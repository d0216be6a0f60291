"""Process-level speed settings for CPU training, chosen per CPU class at run time and applied once.

`setup_cpu_speed(enabled)` does four independent things, each optional and each falling back to
plain Paddle when it cannot be done. It never restarts the process and needs no environment
variable; the returned dict holds one status line per item (on or off, and why) for the log.

1. MKL vendor shim (non-Intel CPUs). Paddle's bundled MKL asks mkl_serv_intel_cpu_true() and, on
   any other vendor, takes its generic kernels even on CPUs with AVX2/AVX-512 (sgemm about 4x
   slower on an AMD EPYC). A one-line C library (csrc/mkl_intel_shim.c), compiled with the
   machine's `cc` into the cache folder, answers that question. It is loaded into this process
   with RTLD_GLOBAL before MKL's first call, so it is searched before MKL's own definition (as
   LD_PRELOAD would be); MKL's own mkl_serv_cpu_detect() then says which kernel branch it took,
   which is how the status line knows it worked. When MKL was used before (too late to change
   its choice) the line gives the LD_PRELOAD command instead. FACEFEAT_NO_MKL_SHIM=1 skips it.
2. Allocator: glibc returns every large block (a batch-64 activation is 50-100 MB) to the kernel
   on free and page-faults it back in on the next allocation; that was ~15% of training time in
   system calls. mallopt keeps freed memory in the heap instead (glibc only).
3. Fused C++ kernels (models/fast_cpu_ops.py: PReLU, depthwise conv, BatchNorm + PReLU), compiled
   once and cached; without a C++ compiler training runs Paddle's own operators.
4. MobileFaceNet's layout, channels-last (NHWC) or NCHW, from TRAINING_LAYOUTS: which one is faster
   depends on the CPU class (measured, docs/speed.md); a class not measured takes its nearest
   measured one's choice and the line says so.

FACEFEAT_CPU_SPEEDUP=0 (or Global.cpu_speedup: False) turns all of them off; FACEFEAT_NO_MKL_SHIM=1,
FACEFEAT_NO_FAST_OPS=1 and FACEFEAT_NO_CHANNELS_LAST=1 turn off one each (for measuring). A GPU run
should not call it.
"""
import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile

from foundation.runtime import (
    CPU_CLASSES,
    cache_dir,
    compiler_version,
    cpu_class,
    cpuinfo_field,
    find_compiler,
    set_threads,
)
from models import fast_cpu_ops

SHIM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "mkl_intel_shim.c")
SHIM_PREFIX = "libmkl_intel_shim_"
SHIM_CFLAGS = ["-shared", "-fPIC", "-O2"]
ALL_OFF_ENV = "FACEFEAT_CPU_SPEEDUP"
NO_SHIM_ENV = "FACEFEAT_NO_MKL_SHIM"
VENDOR_NAMES = {"AuthenticAMD": "AMD", "HygonGenuine": "Hygon", "CentaurHauls": "Centaur", "Shanghai": "Zhaoxin"}

# MobileFaceNet's training layout per CPU class (with the MKL shim where the vendor needs it):
# (layout, what decided it). Images/s from benchmarks/train_speed.py, batch 64, idle; the runs
# are in docs/speed.md. Channels-last turns each 1x1 convolution into one large MKL product.
TRAINING_LAYOUTS = {
    "intel-amx": ("nhwc", "measured: 2 threads, NHWC 61.9 img/s vs NCHW 51.5"),
    "amd-avx512": ("nhwc", "measured: 2 threads, with the shim, NHWC 105.8 img/s vs NCHW 88.1"),
    "amd-avx2": ("nchw", "measured: 1 thread, with the shim, NCHW 11.07 img/s vs NHWC 9.06"),
}
# an unmeasured class takes the choice of the measured class with the same vector width
NEAREST_MEASURED = {"intel-avx512": "intel-amx", "intel-avx2": "amd-avx2", "other": "amd-avx2"}

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _env_off(name):
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def _env_on(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def cpu_vendor():
    """The CPU vendor id (GenuineIntel, AuthenticAMD, ...) or '' when unknown."""
    return cpuinfo_field("vendor_id")


def c_compiler():
    """Absolute path of the C compiler used for the shim ($CC, else cc, gcc or clang on PATH), or None."""
    return find_compiler("CC", ("cc", "gcc", "clang"), "C")[0]


def shim_cache_path(cc=None):
    """Where the shim built from this source with compiler `cc` (default: c_compiler()) is cached."""
    cc = cc or c_compiler()
    h = hashlib.sha256()
    with open(SHIM_SOURCE, "rb") as f:
        h.update(f.read())
    for part in (cc or "no compiler", os.path.realpath(cc) if cc else "", compiler_version(cc) if cc else "",
                 " ".join(SHIM_CFLAGS)):
        h.update(b"\0" + part.encode())
    return os.path.join(cache_dir(), f"{SHIM_PREFIX}{h.hexdigest()[:12]}.so")


def build_mkl_shim():
    """Compile the shim (once; cached) and return its path. Raises RuntimeError when it cannot."""
    cc, why = find_compiler("CC", ("cc", "gcc", "clang"), "C")
    if not cc:
        raise RuntimeError(why)
    out = shim_cache_path(cc)
    if os.path.isfile(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".shim.", suffix=".so", dir=os.path.dirname(out))
    os.close(fd)
    try:
        proc = subprocess.run([cc, *SHIM_CFLAGS, "-o", tmp, SHIM_SOURCE], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SHIM_SOURCE}: {proc.stderr.strip()[:300]}")
        os.replace(tmp, out)  # atomic: a concurrent rank sees either no file or a whole one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def _ld_preload_entries():
    return os.environ.get("LD_PRELOAD", "").replace(":", " ").split()


def _mapped_files():
    """Files mapped into this process (/proc/self/maps), or None when that cannot be read."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    except OSError:
        return None


def preloaded_shim():
    """The path of an MKL vendor shim this process was started with (LD_PRELOAD), or ''."""
    mapped = _mapped_files()
    for entry in _ld_preload_entries():
        if not os.path.basename(entry).startswith(SHIM_PREFIX) or not os.path.isfile(entry):
            continue
        if mapped is None or os.path.realpath(entry) in mapped:  # set at start, not later in os.environ
            return entry
    return ""


def run_command_with(path):
    """The shell command that runs this process's program again with `path` preloaded."""
    preload = " ".join([path] + [e for e in _ld_preload_entries() if e != path])
    argv = list(getattr(sys, "orig_argv", None) or [])
    command = shlex.join(argv) if argv else "python your_script.py"
    return f"LD_PRELOAD={shlex.quote(preload)} {command}"


def mkl_shim_decision():
    """(wanted, reason): whether this process should run with the MKL shim."""
    if platform.system() != "Linux":
        return False, "not Linux"
    if _env_on(NO_SHIM_ENV):
        return False, f"disabled by {NO_SHIM_ENV}={os.environ.get(NO_SHIM_ENV)}; not built"
    vendor = cpu_vendor()
    if vendor == "GenuineIntel" or not vendor:
        return False, f"not needed, CPU vendor {vendor or 'unknown'}"
    return True, f"CPU vendor {vendor}"


def _mkl_dispatch(mkl_path):
    """(MKL answers 'Intel CPU', its kernel branch) from MKL's own service calls, or None."""
    try:
        mkl = ctypes.CDLL(mkl_path)
        return bool(mkl.mkl_serv_intel_cpu()), int(mkl.mkl_serv_cpu_detect())
    except (OSError, AttributeError):
        return None


def apply_mkl_shim():
    """One status line about the MKL vendor shim; loads it into this process when it helps."""
    wanted, reason = mkl_shim_decision()
    if not wanted:
        return f"MKL vendor shim: off ({reason})"
    active = preloaded_shim()
    if active:
        return f"MKL vendor shim: on (preloaded with LD_PRELOAD={active}; {reason})"
    mkl = fast_cpu_ops.mkl_library()
    if mkl is None:
        return "MKL vendor shim: off (no MKL in Paddle's wheel)"
    try:
        path = build_mkl_shim()
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # searched before MKL's own symbol from now on
    except Exception as e:
        return f"MKL vendor shim: off (cannot build or load it: {e}); MKL keeps its slow non-Intel code paths"
    dispatch = _mkl_dispatch(mkl)
    name = VENDOR_NAMES.get(cpu_vendor(), cpu_vendor())
    if dispatch and dispatch[0]:
        return (f"MKL vendor shim: on (loaded in-process before MKL's first call; MKL's kernel branch "
                f"{dispatch[1]} on this {name} CPU)")
    return (f"MKL vendor shim: not active (MKL was already in use when it loaded, and keeps its generic "
            f"kernels); for faster training on this {name} CPU run: {run_command_with(path)}")


def training_layout(cls=None):
    """(channels_last, why) for MobileFaceNet training on CPU class `cls` (this CPU's by default)."""
    cls = cls or cpu_class()
    if cls in TRAINING_LAYOUTS:
        layout, measured = TRAINING_LAYOUTS[cls]
        return layout == "nhwc", f"CPU class {cls}, {measured}"
    nearest = NEAREST_MEASURED.get(cls, "amd-avx2")
    layout, _ = TRAINING_LAYOUTS[nearest]
    return layout == "nhwc", (f"CPU class {cls} ({CPU_CLASSES.get(cls, cls)}) not measured yet: "
                              f"the choice of {nearest}")


def tune_allocator():
    """Keep freed large blocks in the glibc heap instead of unmapping them (fewer page faults)."""
    if platform.libc_ver()[0] != "glibc":
        return "allocator: unchanged (not glibc)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError) as e:
        return f"allocator: unchanged ({e})"
    if not ok:
        return "allocator: unchanged (mallopt refused)"
    return "allocator: on (large blocks kept in the glibc heap, mallopt)"


def release_free_heap():
    """Give the heap's freed blocks back to the system now (glibc malloc_trim): the allocator
    setting keeps them between steps, which is wasted while a checkpoint's export runs beside it."""
    if platform.libc_ver()[0] == "glibc":
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def setup_cpu_speed(enabled=True, fast_ops=True, allocator=True, channels_last=None, threads=None):
    """Apply the CPU speed settings; returns {"mkl_shim", "allocator", "fast_ops"} status lines.

    `enabled` is Global.cpu_speedup; FACEFEAT_CPU_SPEEDUP=0 overrides it to off. `channels_last`
    None takes this CPU class's layout (training_layout); True/False forces one (benchmarks).
    `threads`: the CPU thread count, set here after the shim has loaded (Paddle's set_num_threads
    is MKL's first call, which fixes MKL's kernel choice). Call it before anything else runs a
    matrix product; nothing here restarts the process. A GPU run should not call it.
    """
    if not enabled or _env_off(ALL_OFF_ENV):
        why = f"{ALL_OFF_ENV}={os.environ.get(ALL_OFF_ENV)}" if _env_off(ALL_OFF_ENV) else "Global.cpu_speedup is False"
        if threads:
            set_threads(threads)
        fast_cpu_ops.enable(False)
        return {"mkl_shim": f"MKL vendor shim: off ({why})", "allocator": f"allocator: unchanged ({why})",
                "fast_ops": f"fused kernels: off ({why})"}
    report = {"mkl_shim": apply_mkl_shim()}
    if threads:
        set_threads(threads)  # before the fused kernels load: their OpenMP runtime reads it once
    report["allocator"] = tune_allocator() if allocator else "allocator: unchanged (not requested)"
    if channels_last is None:
        channels_last, why = training_layout()
    else:
        why = "chosen by the caller"
    fast_cpu_ops.enable(fast_ops, channels_last=channels_last, layout_reason=why)
    report["fast_ops"] = f"fused kernels: {fast_cpu_ops.status()}"
    return report
