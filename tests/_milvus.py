"""Real Milvus engines for the tests: is the milvus extra installed, and a Milvus server on loopback.

Without the extra (pip install -e ".[milvus]") the Milvus tests skip with that reason locally; in
CI (CI=true, where .ci/run installs the extra) they fail instead, so they cannot be lost silently.
"""
import importlib.util
import os

import pytest

from benchmarks.loopback_service import MilvusServer

MODULES = ("pymilvus", "milvus_lite", "milvus")
MISSING = [m for m in MODULES if importlib.util.find_spec(m) is None]
REASON = f"the milvus extra is not installed (no {', '.join(MISSING)}): pip install -e \".[milvus]\""


def need_milvus():
    """Call at the start of a test (or fixture) that needs the extra."""
    if MISSING:
        if os.environ.get("CI") == "true":
            pytest.fail(REASON + " - .ci/run installs it, so CI must have it")
        pytest.skip(REASON)


@pytest.fixture(scope="module")
def milvus_server():
    """One Milvus server per test module (it takes ~1 GB and ~10 s to start), stopped at the end."""
    need_milvus()
    server = MilvusServer()
    try:
        yield server
    finally:
        server.stop()
