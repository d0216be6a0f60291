"""Downloads keyed by the whole URL with an optional sha256 pin; a gallery index that is damaged
or inconsistent says "rebuild the index"; removing absent ids says which; OS errors are one line."""
import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import yaml

from engine.gallery.faiss_index import GalleryIndex
from foundation.atomic_io import cached_download
from foundation.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    for sub, body in (("a", b"first file"), ("b", b"second file")):
        (root / sub).mkdir(parents=True)
        (root / sub / "model.pdparams").write_bytes(body)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_two_urls_with_one_file_name_get_two_cache_entries(server, tmp_path):
    cache = str(tmp_path / "cache")
    a = cached_download(f"{server}/a/model.pdparams", cache)
    b = cached_download(f"{server}/b/model.pdparams", cache)
    assert a != b and open(a, "rb").read() == b"first file" and open(b, "rb").read() == b"second file"
    assert cached_download(f"{server}/a/model.pdparams", cache) == a  # fetched once


def test_sha256_pin(server, tmp_path):
    cache = str(tmp_path / "cache")
    good = hashlib.sha256(b"first file").hexdigest()
    assert open(cached_download(f"{server}/a/model.pdparams", cache, sha256=good), "rb").read() == b"first file"
    with pytest.raises(ValueError, match="sha256 mismatch"):
        cached_download(f"{server}/b/model.pdparams", cache, sha256=good)
    kept = [os.path.join(d, f) for d, _, files in os.walk(cache) for f in files]
    assert len(kept) == 1 and open(kept[0], "rb").read() == b"first file"  # the mismatching download is not kept


def _saved_index(tmp_path, n=6):
    rng = np.random.default_rng(0)
    index = GalleryIndex(8, "MobileFaceNet")
    index.add(rng.normal(size=(n, 8)), [f"p{i % 3}" for i in range(n)], [f"img{i}.jpg" for i in range(n)])
    folder = str(tmp_path / "index")
    index.save(folder)
    return folder


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_vector_index_says_rebuild(tmp_path, damage):
    folder = _saved_index(tmp_path)
    path = os.path.join(folder, "vector.index")
    data = open(path, "rb").read()
    new = {"truncate": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(len(data))}[damage]
    open(path, "wb").write(new)
    with pytest.raises(UserError, match="rebuild the index"):
        GalleryIndex.load(folder)


def test_damaged_index_without_a_checksum_still_says_rebuild(tmp_path):
    folder = _saved_index(tmp_path)
    meta_path = os.path.join(folder, "meta.json")
    meta = json.load(open(meta_path))
    meta.pop("index_sha256")
    json.dump(meta, open(meta_path, "w"))
    open(os.path.join(folder, "vector.index"), "wb").write(b"not faiss")
    with pytest.raises(UserError, match="not a readable faiss index.*rebuild the index"):
        GalleryIndex.load(folder)


def test_id_map_that_does_not_match_the_index(tmp_path):
    folder = _saved_index(tmp_path)
    path = os.path.join(folder, "id_map.yaml")
    info = yaml.safe_load(open(path))
    info["id_map"][99] = info["id_map"].pop(0)
    yaml.safe_dump(info, open(path, "w"))
    with pytest.raises(UserError, match="ids in id_map do not match"):
        GalleryIndex.load(folder)
    yaml.safe_dump(dict(info, id_map={"x": "a"}), open(path, "w"))
    with pytest.raises(UserError, match="rebuild the index"):
        GalleryIndex.load(folder)
    open(path, "w").write("id_map: [unclosed")
    with pytest.raises(UserError, match="unreadable index info"):
        GalleryIndex.load(folder)


def test_read_only_output_folder_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write into read-only folders")
    out = tmp_path / "ro"
    out.mkdir()
    os.chmod(out, 0o555)
    proc = subprocess.run([sys.executable, "main.py", "-c", "configs/face_recognition/MobileFaceNet.yaml",
                           "-o", "Global.mode=check_dataset", "-o", f"Global.output={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_os_errors_from_a_runner_are_one_line(tmp_path, monkeypatch, capsys):
    """Whatever OSError a runner meets (full disk, read-only folder) ends as one line, exit 1."""
    import errno

    import main

    def full_disk(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x"))

    monkeypatch.setattr("engine.cli.runner_for", lambda mode: full_disk)
    code = main.main(["-c", os.path.join(REPO, "configs", "face_recognition", "MobileFaceNet.yaml"),
                      "-o", f"Global.output={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0] and "out/x" in err[0]
