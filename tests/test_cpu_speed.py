"""engine/training/cpu_speed.py and the fused-kernel cache key: the MKL vendor shim (opt-in, never a
re-execution), the allocator, the opt-outs, and the fallback to plain Paddle without a compiler."""
import ctypes
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from engine.training import cpu_speed
from models import fast_cpu_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_CC = cpu_speed.c_compiler() is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler: the shim cannot be built here")


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def amd(monkeypatch):
    """Behave as on an AMD CPU under Linux, started without any LD_PRELOAD, whatever this machine is."""
    monkeypatch.setattr(cpu_speed, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(cpu_speed.platform, "system", lambda: "Linux")
    monkeypatch.delenv(cpu_speed.NO_SHIM_ENV, raising=False)
    monkeypatch.delenv(cpu_speed.ALL_OFF_ENV, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)


@pytest.fixture
def no_exec(monkeypatch):
    """Any attempt to replace the process fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"the process must not re-execute itself: {args}")

    for name in ("execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)


@pytest.fixture
def kernels_state(monkeypatch):
    """Let a test change fast_cpu_ops' module state (loaded library, switch, status) and restore it."""
    for name in ("_module", "_enabled", "_status"):
        monkeypatch.setattr(fast_cpu_ops, name, getattr(fast_cpu_ops, name))


@pytest.mark.parametrize("vendor,wanted", [("AuthenticAMD", True), ("HygonGenuine", True),
                                           ("GenuineIntel", False), ("", False)])
def test_shim_only_for_non_intel_cpus(monkeypatch, vendor, wanted):
    monkeypatch.delenv(cpu_speed.NO_SHIM_ENV, raising=False)
    monkeypatch.setattr(cpu_speed, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(cpu_speed.platform, "system", lambda: "Linux")
    assert cpu_speed.mkl_shim_decision()[0] is wanted


def test_intel_cpu_says_not_needed(monkeypatch):
    monkeypatch.setattr(cpu_speed, "cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.setattr(cpu_speed.platform, "system", lambda: "Linux")
    monkeypatch.delenv(cpu_speed.NO_SHIM_ENV, raising=False)
    monkeypatch.setattr(cpu_speed, "build_mkl_shim", lambda: pytest.fail("built on an Intel CPU"))
    status = cpu_speed.apply_mkl_shim()
    assert status.startswith("MKL vendor shim: off") and "not needed" in status and "GenuineIntel" in status


def test_shim_env_opt_out_does_not_even_build(amd, monkeypatch):
    monkeypatch.setenv(cpu_speed.NO_SHIM_ENV, "1")
    wanted, reason = cpu_speed.mkl_shim_decision()
    assert not wanted and cpu_speed.NO_SHIM_ENV in reason
    monkeypatch.setattr(cpu_speed, "build_mkl_shim", lambda: pytest.fail("built although opted out"))
    status = cpu_speed.apply_mkl_shim()
    assert status.startswith("MKL vendor shim: off") and cpu_speed.NO_SHIM_ENV in status


@needs_cc
def test_shim_builds_and_answers_intel(private_cache):
    path = cpu_speed.build_mkl_shim()
    assert path.startswith(str(private_cache)) and os.path.isfile(path)
    lib = ctypes.CDLL(path)
    assert lib.mkl_serv_intel_cpu_true() == 1
    assert cpu_speed.build_mkl_shim() == path  # cached


def test_shim_cache_path_follows_the_compiler(private_cache, monkeypatch):
    cc = "/usr/bin/cc"
    monkeypatch.setattr(cpu_speed, "compiler_version", lambda path: "cc (Debian 12.2.0) 12.2.0")
    first = cpu_speed.shim_cache_path(cc)
    assert first == cpu_speed.shim_cache_path(cc)
    assert first.startswith(str(private_cache)) and os.path.basename(first).startswith(cpu_speed.SHIM_PREFIX)
    monkeypatch.setattr(cpu_speed, "compiler_version", lambda path: "cc (Debian 13.1.0) 13.1.0")
    assert cpu_speed.shim_cache_path(cc) != first
    assert cpu_speed.shim_cache_path("/opt/other/cc") != cpu_speed.shim_cache_path(cc)


def test_no_c_compiler_falls_back(private_cache, amd, no_exec, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)  # the module every compiler lookup uses
    status = cpu_speed.apply_mkl_shim()
    assert status.startswith("MKL vendor shim: off") and "no C compiler" in status


@needs_cc
def test_setup_never_reexecutes_and_reports_the_shim(private_cache, amd, no_exec):
    report = cpu_speed.setup_cpu_speed(enabled=True, fast_ops=False, allocator=False)
    assert set(report) == {"mkl_shim", "allocator", "fast_ops"}
    path = cpu_speed.shim_cache_path()
    assert os.path.isfile(path)
    line = report["mkl_shim"]
    # this test process has run matrix products already, so MKL may have made its choice: either
    # way the line says what happened, and when it is too late it gives the command that works
    assert line.startswith("MKL vendor shim: on (loaded in-process") or (
        line.startswith("MKL vendor shim: not active") and f"LD_PRELOAD={shlex.quote(path)} " in line), line
    assert report["fast_ops"].startswith("fused kernels: off")


def test_command_without_orig_argv(monkeypatch):
    monkeypatch.delattr(sys, "orig_argv", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert cpu_speed.run_command_with("/c/libx.so") == "LD_PRELOAD=/c/libx.so python your_script.py"


PROBE = """
import ctypes, os, sys
sys.path.insert(0, {root!r})
from engine.training import cpu_speed
cpu_speed.cpu_vendor = lambda: "AuthenticAMD"   # behave as on AMD whatever this CPU is
cpu_speed.platform.system = lambda: "Linux"
print("start", sys.argv[1:], flush=True)
if {late!r}:
    import paddle
    paddle.matmul(paddle.ones([8, 8]), paddle.ones([8, 8]))  # MKL makes its kernel choice now
status = cpu_speed.apply_mkl_shim()
mkl = ctypes.CDLL(cpu_speed.fast_cpu_ops.mkl_library())
print("mkl", mkl.mkl_serv_intel_cpu(), flush=True)
print("status", status, flush=True)
"""


def _probe(tmp_path, late, command=None):
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(root=ROOT, late=late))
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", cpu_speed.NO_SHIM_ENV, cpu_speed.ALL_OFF_ENV)}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    argv = command or [sys.executable, str(script), "--flag", "x y"]
    proc = subprocess.run(argv, shell=command is not None, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.split(" ", 1)[0] in ("start", "mkl", "status")]
    assert lines[0] == "start ['--flag', 'x y']" and len(lines) == 3, proc.stdout  # ran once, no restart
    return lines[1], lines[2][len("status "):]


@needs_cc
@pytest.mark.skipif(fast_cpu_ops.mkl_library() is None, reason="Paddle's wheel has no MKL here")
def test_shim_loads_in_process_before_mkl_works(tmp_path):
    """No LD_PRELOAD, no restart: loaded before MKL's first call, MKL takes the Intel kernel paths."""
    mkl, status = _probe(tmp_path, late=False)
    assert mkl == "mkl 1", status
    assert status.startswith("MKL vendor shim: on (loaded in-process before MKL's first call; MKL's kernel branch ")


@needs_cc
@pytest.mark.skipif(fast_cpu_ops.mkl_library() is None, reason="Paddle's wheel has no MKL here")
@pytest.mark.skipif(cpu_speed.cpu_vendor() == "GenuineIntel", reason="MKL says 'Intel' here whatever the shim does")
def test_shim_too_late_gives_the_command_that_works(tmp_path):
    """After MKL's first call its choice stands: the line says so, and its command runs with the shim."""
    mkl, status = _probe(tmp_path, late=True)
    assert mkl == "mkl 0" and status.startswith("MKL vendor shim: not active (MKL was already in use"), status
    command = status.split(" run: ", 1)[1]
    assert command.startswith("LD_PRELOAD=") and command.endswith("probe.py --flag 'x y'")
    mkl, status = _probe(tmp_path, late=True, command=command)
    assert mkl == "mkl 1" and status.startswith("MKL vendor shim: on (preloaded with LD_PRELOAD="), status


@pytest.mark.parametrize("vendor,flags,expected", [
    ("GenuineIntel", {"avx2", "avx512f", "amx_bf16"}, "intel-amx"),
    ("GenuineIntel", {"avx2", "avx512f"}, "intel-avx512"),
    ("GenuineIntel", {"avx2"}, "intel-avx2"),
    ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, "amd-avx512"),
    ("HygonGenuine", {"avx2"}, "amd-avx2"),
    ("AuthenticAMD", {"sse4_2"}, "other"),
    ("", {"avx2"}, "other"),
])
def test_cpu_class(vendor, flags, expected):
    from foundation.runtime import CPU_CLASSES, cpu_class

    assert cpu_class(vendor, flags) == expected and expected in CPU_CLASSES


def test_training_layout_per_cpu_class():
    from foundation.runtime import CPU_CLASSES

    for cls, (layout, measured) in cpu_speed.TRAINING_LAYOUTS.items():
        assert cls in CPU_CLASSES and layout in ("nhwc", "nchw") and measured.startswith("measured: ")
        channels_last, why = cpu_speed.training_layout(cls)
        assert channels_last is (layout == "nhwc") and cls in why and "img/s" in why
    for cls in set(CPU_CLASSES) - set(cpu_speed.TRAINING_LAYOUTS):  # every class gets a choice, and says so
        channels_last, why = cpu_speed.training_layout(cls)
        nearest = cpu_speed.NEAREST_MEASURED[cls]
        assert channels_last is (cpu_speed.TRAINING_LAYOUTS[nearest][0] == "nhwc")
        assert "not measured yet" in why and nearest in why


def test_ld_preload_set_later_is_not_active(amd, monkeypatch, tmp_path):
    fake = tmp_path / (cpu_speed.SHIM_PREFIX + "0123456789ab.so")
    fake.write_bytes(b"")
    monkeypatch.setenv("LD_PRELOAD", str(fake))  # in os.environ now, but the process did not start with it
    assert cpu_speed.preloaded_shim() == ""


def test_allocator_tuning_reports():
    status = cpu_speed.tune_allocator()
    assert status.startswith("allocator: on") or status.startswith("allocator: unchanged (")


def test_everything_off_by_config_or_env(monkeypatch):
    monkeypatch.delenv(cpu_speed.ALL_OFF_ENV, raising=False)
    report = cpu_speed.setup_cpu_speed(enabled=False)
    assert "Global.cpu_speedup" in report["fast_ops"] and not fast_cpu_ops.enabled()
    assert all(": off (" in line or ": unchanged (" in line for line in report.values()), report
    monkeypatch.setenv(cpu_speed.ALL_OFF_ENV, "0")
    report = cpu_speed.setup_cpu_speed(enabled=True)
    assert cpu_speed.ALL_OFF_ENV in report["mkl_shim"] and not fast_cpu_ops.enabled()


def test_no_reexecution_api_left():
    assert not hasattr(cpu_speed, "REEXEC_MARK_ENV")
    import inspect

    assert "reexec" not in inspect.signature(cpu_speed.setup_cpu_speed).parameters
    assert "reexec" not in inspect.signature(cpu_speed.apply_mkl_shim).parameters


# --- the fused kernels' cache key and their fallback ------------------------------------------

@pytest.fixture
def fake_cxx(monkeypatch):
    """A fixed C++ compiler identity, so the key does not depend on what this machine has."""
    monkeypatch.setattr(fast_cpu_ops, "cxx_compiler", lambda: ("/usr/bin/c++", ""))
    monkeypatch.setattr(fast_cpu_ops, "compiler_version", lambda path: f"{os.path.basename(path)} (GCC) 12.2.0")


def test_build_key_is_stable(fake_cxx):
    assert fast_cpu_ops.build_key() == fast_cpu_ops.build_key()


def test_build_key_differs_per_virtualenv(fake_cxx, monkeypatch):
    key = fast_cpu_ops.build_key()
    monkeypatch.setattr(sys, "prefix", sys.prefix + "-other-venv")
    assert fast_cpu_ops.build_key() != key


def test_build_key_differs_per_compiler_version(fake_cxx, monkeypatch):
    key = fast_cpu_ops.build_key()
    monkeypatch.setattr(fast_cpu_ops, "compiler_version", lambda path: "c++ (GCC) 13.1.0")
    assert fast_cpu_ops.build_key() != key


def test_build_key_differs_per_compiler_flags(fake_cxx, monkeypatch):
    key = fast_cpu_ops.build_key()
    monkeypatch.setattr(fast_cpu_ops, "CXX_FLAGS", fast_cpu_ops.CXX_FLAGS + ["-ffast-math"])
    assert fast_cpu_ops.build_key() != key


def test_build_key_differs_per_cpu_features(fake_cxx, monkeypatch):
    key = fast_cpu_ops.build_key()
    monkeypatch.setattr(fast_cpu_ops, "cpu_flags", lambda: {"sse2", "avx2", "avx512f", "made-up-flag"})
    assert fast_cpu_ops.build_key() != key


@pytest.mark.parametrize("how", ["which", "path"])
def test_no_cxx_compiler_trains_with_plain_paddle(kernels_state, monkeypatch, tmp_path, how):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv(fast_cpu_ops.DISABLE_ENV, raising=False)
    if how == "which":
        monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    else:
        monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no c++, no g++
    monkeypatch.setattr(fast_cpu_ops, "_module", None)  # as in a fresh process
    assert fast_cpu_ops.enable(True) is False
    assert not fast_cpu_ops.enabled()
    status = fast_cpu_ops.status()
    assert status.startswith("off (no C++ compiler") and "CXX is unset" in status and "Paddle's own" in status


def test_cxx_that_does_not_exist_is_named(kernels_state, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++-99")
    monkeypatch.delenv(fast_cpu_ops.DISABLE_ENV, raising=False)
    monkeypatch.setattr(fast_cpu_ops, "_module", None)
    assert fast_cpu_ops.enable(True) is False
    assert "CXX='/nonexistent/g++-99' is not an executable" in fast_cpu_ops.status()


def test_setup_without_any_compiler_reports_plain_paddle(kernels_state, private_cache, amd, no_exec, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv(fast_cpu_ops.DISABLE_ENV, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    monkeypatch.setattr(fast_cpu_ops, "_module", None)
    report = cpu_speed.setup_cpu_speed(enabled=True, allocator=False)
    assert report["fast_ops"].startswith("fused kernels: off (no C++ compiler")
    assert report["mkl_shim"].startswith("MKL vendor shim: off (cannot build or load it: no C compiler")
    assert not fast_cpu_ops.enabled()


def test_recompute_leaves_the_allocator_alone(monkeypatch, kernels_state):
    """Train.recompute is for memory: training then keeps glibc's default (freed blocks go back),
    and the log line says why; without it the allocator setting is applied."""
    from types import SimpleNamespace

    from engine.training.trainer import cpu_speed_notes

    calls = []
    monkeypatch.setattr(cpu_speed, "tune_allocator", lambda: calls.append(1) or "allocator: on (test)")
    monkeypatch.setenv(fast_cpu_ops.DISABLE_ENV, "1")
    monkeypatch.delenv(cpu_speed.ALL_OFF_ENV, raising=False)

    def notes(recompute):
        return cpu_speed_notes(SimpleNamespace(Global=SimpleNamespace(cpu_speedup=True, num_threads=1),
                                               Train=SimpleNamespace(recompute=recompute)))

    assert "allocator: on (test)" in notes(False) and calls == [1]
    lines = notes(True)
    assert calls == [1] and any(line.startswith("allocator: unchanged (Train.recompute") for line in lines), lines
