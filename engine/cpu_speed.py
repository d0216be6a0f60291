"""Process-level speed settings for CPU training, applied once at the start of a run.

`setup_cpu_speed(enabled)` does three independent things, each optional and each falling back
to plain Paddle when it cannot be done (the returned dict says what happened, for the log):

1. MKL vendor shim (non-Intel CPUs only). Paddle's bundled MKL takes slow generic paths when the
   CPU vendor is not Intel (sgemm 38-58 GFLOP/s instead of 169-195 on this AMD EPYC). A one-line
   C library (engine/csrc/mkl_intel_shim.c), compiled with the machine's `cc` into a cache folder,
   overrides MKL's vendor test when loaded with LD_PRELOAD. LD_PRELOAD only acts at process start,
   so the process re-executes itself (same PID, same arguments) with it set. It is skipped when
   there is no C compiler, when the build fails, inside pytest, and when FACEFEAT_NO_MKL_SHIM=1.
2. Allocator: glibc returns every large block (a batch-64 activation is 50-100 MB) to the kernel
   on free and page-faults it back in on the next allocation; that was ~15% of training time in
   system calls. mallopt keeps freed memory in the heap instead (glibc only).
3. Fused C++ PReLU and depthwise-conv kernels (models/fast_cpu_ops.py), compiled once and cached.

Call it FIRST in a runner, before the runner creates files or logs: the re-execution starts the
process again from the beginning. FACEFEAT_CPU_SPEEDUP=0 (or Global.cpu_speedup: False) turns all
three off; FACEFEAT_NO_MKL_SHIM=1 / FACEFEAT_NO_FAST_OPS=1 turn off one each.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

from foundation.runtime import cache_dir, cpuinfo_field

SHIM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "mkl_intel_shim.c")
ALL_OFF_ENV = "FACEFEAT_CPU_SPEEDUP"
NO_SHIM_ENV = "FACEFEAT_NO_MKL_SHIM"
REEXEC_MARK_ENV = "FACEFEAT_MKL_SHIM_REEXEC"  # set in the re-executed process: never re-exec twice

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


def shim_cache_path():
    with open(SHIM_SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    return os.path.join(cache_dir(), f"libmkl_intel_shim_{digest}.so")


def build_mkl_shim():
    """Compile the shim (once; cached) and return its path. Raises RuntimeError when it cannot."""
    out = shim_cache_path()
    if os.path.isfile(out):
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".shim.", suffix=".so", dir=os.path.dirname(out))
    os.close(fd)
    try:
        proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", tmp, SHIM_SOURCE],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SHIM_SOURCE}: {proc.stderr.strip()[:300]}")
        os.replace(tmp, out)  # atomic: a concurrent rank sees either no file or a whole one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def _preloaded(path):
    return path in os.environ.get("LD_PRELOAD", "").replace(":", " ").split()


def mkl_shim_decision():
    """(wanted, reason): whether this process should run with the MKL shim."""
    if platform.system() != "Linux":
        return False, "not Linux"
    if _env_on(NO_SHIM_ENV):
        return False, f"disabled by {NO_SHIM_ENV}"
    vendor = cpu_vendor()
    if vendor == "GenuineIntel" or not vendor:
        return False, f"not needed (CPU vendor {vendor or 'unknown'})"
    return True, f"CPU vendor {vendor}"


def apply_mkl_shim(reexec=True):
    """Make sure the process runs with the shim preloaded, re-executing it if need be.

    Returns a status line; does not return at all when it re-executes.
    """
    wanted, reason = mkl_shim_decision()
    if not wanted:
        return f"MKL vendor shim: {reason}"
    try:
        path = build_mkl_shim()
    except Exception as e:
        return f"MKL vendor shim: unavailable ({e}); MKL keeps its slow non-Intel paths"
    if _preloaded(path):
        return f"MKL vendor shim: active ({reason}, {path})"
    if os.environ.get(REEXEC_MARK_ENV):
        return "MKL vendor shim: re-execution did not preload it; continuing without"
    argv = list(getattr(sys, "orig_argv", []) or [])
    if not reexec or "pytest" in sys.modules or len(argv) < 2 or argv[1] == "-c" or not sys.executable:
        return "MKL vendor shim: built but not applied (this process cannot be re-executed)"
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join([path] + env.get("LD_PRELOAD", "").replace(":", " ").split())
    env[REEXEC_MARK_ENV] = "1"
    from foundation.logger import get_logger

    get_logger().info(f"Restarting with the MKL vendor shim preloaded ({reason}; {NO_SHIM_ENV}=1 turns this off)")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execve(sys.executable, [sys.executable] + argv[1:], env)
    except OSError as e:
        return f"MKL vendor shim: built but the process could not restart with it ({e})"
    return "unreachable"


def tune_allocator():
    """Keep freed large blocks in the glibc heap instead of unmapping them (fewer page faults)."""
    if platform.libc_ver()[0] != "glibc":
        return "allocator: unchanged (not glibc)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError) as e:
        return f"allocator: unchanged ({e})"
    return "allocator: large blocks kept in the heap (mallopt)" if ok else "allocator: mallopt refused; unchanged"


def setup_cpu_speed(enabled=True, fast_ops=True, reexec=True, allocator=True):
    """Apply the CPU speed settings; returns {"mkl_shim", "allocator", "fast_ops"} status lines.

    `enabled` is Global.cpu_speedup; FACEFEAT_CPU_SPEEDUP=0 overrides it to off. Call before the
    runner has side effects (see the module docstring); a GPU run should not call it.
    """
    if not enabled or _env_off(ALL_OFF_ENV):
        why = f"{ALL_OFF_ENV}=0" if _env_off(ALL_OFF_ENV) else "Global.cpu_speedup is False"
        from models import fast_cpu_ops

        fast_cpu_ops.enable(False)
        return {"mkl_shim": f"MKL vendor shim: off ({why})", "allocator": "allocator: unchanged",
                "fast_ops": f"fused kernels: off ({why})"}
    report = {"mkl_shim": apply_mkl_shim(reexec=reexec),
              "allocator": tune_allocator() if allocator else "allocator: unchanged"}
    from models import fast_cpu_ops

    fast_cpu_ops.enable(fast_ops)
    report["fast_ops"] = f"fused kernels: {fast_cpu_ops.status()}"
    return report
