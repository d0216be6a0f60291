"""Real Milvus engines for the tests: is the milvus extra installed, and a Milvus server on loopback.

Without the extra (pip install -e ".[milvus]") the Milvus tests skip with that reason locally; in
CI (CI=true, where .ci/run installs the extra) they fail instead, so they cannot be lost silently.
"""
import importlib.util
import os
import socket
import tempfile
import time

import pytest

MODULES = ("pymilvus", "milvus_lite", "milvus")
MISSING = [m for m in MODULES if importlib.util.find_spec(m) is None]
REASON = f"the milvus extra is not installed (no {', '.join(MISSING)}): pip install -e \".[milvus]\""


def need_milvus():
    """Call at the start of a test (or fixture) that needs the extra."""
    if MISSING:
        if os.environ.get("CI") == "true":
            pytest.fail(REASON + " - .ci/run installs it, so CI must have it")
        pytest.skip(REASON)


def port_open(port, host="127.0.0.1"):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class MilvusServer:
    """A Milvus standalone server (PyPI's `milvus` package) on 127.0.0.1, in a fresh base folder."""

    def __init__(self):
        from milvus import MilvusServer as Server

        self.base = tempfile.mkdtemp(prefix="facefeat_milvus_")
        self.server = Server()
        self.server.set_base_dir(self.base)
        # the package picks free ports itself (19530 when free, else the next ones)
        start = time.perf_counter()
        self.server.start()  # waits for its health port
        self.port = int(self.server.listen_port)
        while not port_open(self.port):
            if time.perf_counter() - start > 120:
                self.stop()
                raise AssertionError("the Milvus server did not open its port within 120 s")
            time.sleep(0.2)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.seconds = time.perf_counter() - start

    @property
    def running(self):
        return self.server.running

    def kill(self):
        """Stop the server process (SIGTERM, then SIGKILL after 1 s) but keep its data, to start it again."""
        self.server.stop()

    def start_again(self, timeout=120):
        """Start the server again on the same port and base folder (its collections are kept there)."""
        self.server.config.update(proxy_port=self.port)  # that port or an error, not the next free one
        start = time.perf_counter()
        self.server.start()
        while not port_open(self.port):
            if time.perf_counter() - start > timeout:
                raise AssertionError(f"the Milvus server did not open port {self.port} again within {timeout} s")
            time.sleep(0.2)

    def stop(self):
        self.server.stop()
        try:
            self.server.cleanup()
        except RuntimeError:
            pass


@pytest.fixture(scope="module")
def milvus_server():
    """One Milvus server per test module (it takes ~1 GB and ~10 s to start), stopped at the end."""
    need_milvus()
    server = MilvusServer()
    try:
        yield server
    finally:
        server.stop()
