"""Atomic writes and downloads (a loopback HTTP server stands in for the network)."""
import functools
import hashlib
import http.server
import os
import threading

import pytest

from foundation.atomic_io import download_file, file_digest, move_dir_into_place


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_file_writes_the_bytes(http_dir, tmp_path):
    root, base = http_dir
    payload = os.urandom(3 << 20)  # more than one copy chunk
    (root / "w.pdparams").write_bytes(payload)
    target = tmp_path / "cache" / "w.pdparams"
    assert download_file(f"{base}/w.pdparams", str(target)) == str(target)
    assert target.read_bytes() == payload


def test_failed_download_leaves_nothing(http_dir, tmp_path):
    _, base = http_dir
    (tmp_path / "cache").mkdir()
    with pytest.raises(OSError):
        download_file(f"{base}/missing.pdparams", str(tmp_path / "cache" / "missing.pdparams"))
    assert os.listdir(tmp_path / "cache") == []


def test_move_dir_into_place_replaces_whole_folder(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    new = tmp_path / "new"
    new.mkdir()
    (new / "a.txt").write_text("new")
    move_dir_into_place(str(new), str(dst))
    assert sorted(os.listdir(dst)) == ["a.txt"] and not new.exists()
    assert file_digest(str(dst / "a.txt")) == hashlib.sha256(b"new").hexdigest()
