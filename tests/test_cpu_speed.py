"""engine/cpu_speed.py: the MKL vendor shim decision, build and re-execution; allocator; opt-outs."""
import ctypes
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from engine import cpu_speed
from models import fast_cpu_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_CC = bool(shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler: the shim cannot be built here")


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("vendor,wanted", [("AuthenticAMD", True), ("HygonGenuine", True),
                                           ("GenuineIntel", False), ("", False)])
def test_shim_only_for_non_intel_cpus(monkeypatch, vendor, wanted):
    monkeypatch.delenv(cpu_speed.NO_SHIM_ENV, raising=False)
    monkeypatch.setattr(cpu_speed, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(cpu_speed.platform, "system", lambda: "Linux")
    assert cpu_speed.mkl_shim_decision()[0] is wanted


def test_shim_env_opt_out(monkeypatch):
    monkeypatch.setattr(cpu_speed, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setenv(cpu_speed.NO_SHIM_ENV, "1")
    wanted, reason = cpu_speed.mkl_shim_decision()
    assert not wanted and cpu_speed.NO_SHIM_ENV in reason


@needs_cc
def test_shim_builds_and_answers_intel(private_cache):
    path = cpu_speed.build_mkl_shim()
    assert path.startswith(str(private_cache)) and os.path.isfile(path)
    lib = ctypes.CDLL(path)
    assert lib.mkl_serv_intel_cpu_true() == 1
    assert cpu_speed.build_mkl_shim() == path  # cached


def test_no_compiler_falls_back(private_cache, monkeypatch):
    monkeypatch.setattr(cpu_speed, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(cpu_speed.platform, "system", lambda: "Linux")
    monkeypatch.delenv(cpu_speed.NO_SHIM_ENV, raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(cpu_speed.shutil, "which", lambda name: None)
    status = cpu_speed.apply_mkl_shim()
    assert "unavailable" in status and "no C compiler" in status


@needs_cc
def test_not_reexecuted_inside_pytest(private_cache, monkeypatch):
    monkeypatch.setattr(cpu_speed, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(cpu_speed.platform, "system", lambda: "Linux")
    monkeypatch.delenv(cpu_speed.NO_SHIM_ENV, raising=False)
    monkeypatch.delenv(cpu_speed.REEXEC_MARK_ENV, raising=False)
    assert "not applied" in cpu_speed.apply_mkl_shim()


@needs_cc
def test_reexecutes_once_with_the_shim_preloaded(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import ctypes, os, sys
        sys.path.insert(0, {ROOT!r})
        from engine import cpu_speed
        cpu_speed.cpu_vendor = lambda: "AuthenticAMD"   # behave as on AMD whatever this CPU is
        cpu_speed.platform.system = lambda: "Linux"
        print("start", os.getpid(), sys.argv[1:], flush=True)
        status = cpu_speed.apply_mkl_shim()
        found = ctypes.CDLL(None).mkl_serv_intel_cpu_true()  # resolves only when preloaded
        print("status", status, "|", found, os.environ.get(cpu_speed.REEXEC_MARK_ENV), flush=True)
    """))
    env = {k: v for k, v in os.environ.items() if k not in (cpu_speed.REEXEC_MARK_ENV, cpu_speed.NO_SHIM_ENV)}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, str(script), "--flag", "x y"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    starts = [line for line in lines if line.startswith("start")]
    assert len(starts) == 2 and starts[0] == starts[1]  # same PID, same arguments, exactly one restart
    assert "['--flag', 'x y']" in starts[0]
    assert lines[-1].startswith("status MKL vendor shim: active") and lines[-1].endswith("| 1 1")


def test_allocator_tuning_reports():
    status = cpu_speed.tune_allocator()
    assert status.startswith("allocator:")


def test_everything_off_by_config_or_env(monkeypatch):
    report = cpu_speed.setup_cpu_speed(enabled=False)
    assert "Global.cpu_speedup" in report["fast_ops"] and not fast_cpu_ops.enabled()
    monkeypatch.setenv(cpu_speed.ALL_OFF_ENV, "0")
    report = cpu_speed.setup_cpu_speed(enabled=True)
    assert cpu_speed.ALL_OFF_ENV in report["mkl_shim"] and not fast_cpu_ops.enabled()
