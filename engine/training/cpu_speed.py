"""Process-level speed settings for CPU training, applied once at the start of a run.

`setup_cpu_speed(enabled)` does three independent things, each optional and each falling back
to plain Paddle when it cannot be done. It never restarts or re-executes the process; the
returned dict holds one status line per item, saying whether it is on or off and why, for the log.

1. MKL vendor shim (non-Intel CPUs only; opt-in). Paddle's bundled MKL takes slow generic paths
   when the CPU vendor is not Intel (sgemm 38-58 GFLOP/s instead of 169-195 on an AMD EPYC). A
   one-line C library (engine/training/csrc/mkl_intel_shim.c), compiled with the machine's `cc` into the
   cache folder, overrides MKL's vendor test when it is loaded with LD_PRELOAD. LD_PRELOAD only
   acts when a process starts, so this module cannot switch it on for the running process: on a
   non-Intel CPU it builds the library (once, cached) and its status line gives the exact command
   that runs the same program with it, `LD_PRELOAD=<cache>/libmkl_intel_shim_<hash>.so python ...`.
   When the process already runs with the shim preloaded the line says it is active.
   FACEFEAT_NO_MKL_SHIM=1 skips it (not even built).
2. Allocator: glibc returns every large block (a batch-64 activation is 50-100 MB) to the kernel
   on free and page-faults it back in on the next allocation; that was ~15% of training time in
   system calls. mallopt keeps freed memory in the heap instead (glibc only).
3. Fused C++ kernels (models/fast_cpu_ops.py: PReLU, depthwise conv, BatchNorm + PReLU, and
   MobileFaceNet's channels-last path), compiled once and cached; without a C++ compiler training
   runs Paddle's own operators and the status line says why.

FACEFEAT_CPU_SPEEDUP=0 (or Global.cpu_speedup: False) turns all three off;
FACEFEAT_NO_MKL_SHIM=1 / FACEFEAT_NO_FAST_OPS=1 turn off one each. A GPU run should not call it.
"""
import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile

from foundation.runtime import cache_dir, compiler_version, cpuinfo_field, find_compiler
from models import fast_cpu_ops

SHIM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "mkl_intel_shim.c")
SHIM_PREFIX = "libmkl_intel_shim_"
SHIM_CFLAGS = ["-shared", "-fPIC", "-O2"]
ALL_OFF_ENV = "FACEFEAT_CPU_SPEEDUP"
NO_SHIM_ENV = "FACEFEAT_NO_MKL_SHIM"
VENDOR_NAMES = {"AuthenticAMD": "AMD", "HygonGenuine": "Hygon", "CentaurHauls": "Centaur", "Shanghai": "Zhaoxin"}

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


def apply_mkl_shim():
    """One status line about the MKL vendor shim; builds it when it would help. Never re-executes."""
    wanted, reason = mkl_shim_decision()
    if not wanted:
        return f"MKL vendor shim: off ({reason})"
    active = preloaded_shim()
    if active:
        return f"MKL vendor shim: on (preloaded with LD_PRELOAD={active}; {reason})"
    try:
        path = build_mkl_shim()
    except Exception as e:
        return f"MKL vendor shim: off (cannot build it: {e}); MKL keeps its slow non-Intel code paths"
    vendor = cpu_vendor()
    name = VENDOR_NAMES.get(vendor, vendor)
    return (f"MKL vendor shim: not active; for about 1.4x faster training on this {name} CPU run: "
            f"{run_command_with(path)}")


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


def setup_cpu_speed(enabled=True, fast_ops=True, allocator=True):
    """Apply the CPU speed settings; returns {"mkl_shim", "allocator", "fast_ops"} status lines.

    `enabled` is Global.cpu_speedup; FACEFEAT_CPU_SPEEDUP=0 overrides it to off. Nothing here
    restarts the process, so it may be called at any point before training; a GPU run should not.
    """


    if not enabled or _env_off(ALL_OFF_ENV):
        why = f"{ALL_OFF_ENV}={os.environ.get(ALL_OFF_ENV)}" if _env_off(ALL_OFF_ENV) else "Global.cpu_speedup is False"
        fast_cpu_ops.enable(False)
        return {"mkl_shim": f"MKL vendor shim: off ({why})", "allocator": f"allocator: unchanged ({why})",
                "fast_ops": f"fused kernels: off ({why})"}
    report = {"mkl_shim": apply_mkl_shim(),
              "allocator": tune_allocator() if allocator else "allocator: unchanged (not requested)"}
    fast_cpu_ops.enable(fast_ops)
    report["fast_ops"] = f"fused kernels: {fast_cpu_ops.status()}"
    return report
