"""Fixtures shared by test modules (the repository root's conftest.py holds session settings)."""
import pytest


@pytest.fixture(scope="module")
def fast_ops():
    """The fused C++ CPU kernels on for one test module (built if needed), off after it."""
    from models import fast_cpu_ops

    assert fast_cpu_ops.enable(True), fast_cpu_ops.status()
    yield
    fast_cpu_ops.enable(False)
