"""The milvus backend against real engines: Milvus Lite in this process (a file), a Milvus server on
loopback (one per module, tests/_milvus.py) for what several processes share; the same answers as
faiss Flat; without the extra, asking for milvus says what to install."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.gallery.faiss_index import GalleryIndex, IndexMismatchError
from foundation.errors import UserError
from tests._milvus import milvus_server, need_milvus  # noqa: F401 - milvus_server is a fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = 32


def _people(n_people=25, per_person=4, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_people, DIM)).astype(np.float32)
    feats = np.repeat(centres, per_person, axis=0) + noise * rng.standard_normal((n_people * per_person, DIM),
                                                                               dtype=np.float32) / np.sqrt(DIM) * 4
    labels = [f"person_{p:02d}" for p in range(n_people) for _ in range(per_person)]
    probes = centres + noise * rng.standard_normal(centres.shape, dtype=np.float32) / np.sqrt(DIM) * 4
    return feats, labels, probes


def _same_answers(faiss_index, milvus_index, probes, k=5):
    a, b = faiss_index.search(probes, k), milvus_index.search(probes, k)
    assert [row[0] for row in a[0]] == [row[0] for row in b[0]]  # rank-1 equal
    assert a[0] == b[0]  # and the whole top-k
    np.testing.assert_allclose(np.concatenate(a[1]), np.concatenate(b[1]), atol=1e-5)


def test_lite_gives_faiss_flat_answers_and_keeps_them_on_disk(tmp_path):
    need_milvus()
    from engine.gallery.milvus_index import MilvusGalleryIndex

    feats, labels, probes = _people()
    paths = [f"/gallery/{i}.jpg" for i in range(len(labels))]
    flat = GalleryIndex(DIM, "MobileFaceNet", "Flat", model_fingerprint="w1")
    flat.add(feats, labels, paths)
    uri = str(tmp_path / "gallery.db")
    lite = MilvusGalleryIndex.create(uri, "people", DIM, "MobileFaceNet", "w1")
    ids = lite.add(feats, labels, paths)
    assert len(lite) == len(flat) == len(ids) and len(set(ids.tolist())) == len(ids)
    _same_answers(flat, lite, probes)
    assert lite.labels == flat.labels and lite.entries[int(ids[3])] == {"label": labels[3], "path": paths[3]}
    assert lite.ids_of_label("person_02") == sorted(ids[8:12].tolist())
    with pytest.raises(IndexMismatchError, match="different model"):
        lite.search(probes, 1, model_name="ResNet50_face")
    with pytest.raises(IndexMismatchError, match="32-d"):
        lite.add(np.ones((1, 8), np.float32), ["x"])

    # removal: by label, and by ids with absent ones ignored (and counted out), as on faiss
    assert lite.remove_label("person_01") == flat.remove_label("person_01") == 4
    assert lite.remove_ids([int(ids[0]), 123456789]) == 1 and flat.remove_ids([0, 123456789]) == 1
    _same_answers(flat, lite, probes)
    assert lite.copy() is lite  # one live collection: changes are everyone's at once

    # another process opens the same file once this one has let it go: every write is on disk
    lite.close()
    code = ("import sys; from engine.gallery.milvus_index import MilvusGalleryIndex as M; "
            "ix = M.open(sys.argv[1], 'people'); print(len(ix), ix.model_name, ix.model_fingerprint)")
    out = subprocess.run([sys.executable, "-c", code, uri], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(len(flat)), "MobileFaceNet", "w1"]
    again = MilvusGalleryIndex.open(uri, "people")
    _same_answers(flat, again, probes)
    with pytest.raises(UserError, match="no gallery index 'nobody' on Milvus"):
        MilvusGalleryIndex.open(uri, "nobody")
    again.close()


def test_lite_refuses_what_it_cannot_do_with_the_fix(tmp_path):
    need_milvus()
    from engine.gallery.milvus_index import MilvusGalleryIndex, check_uri

    with pytest.raises(UserError, match="must end in .db"):
        check_uri(str(tmp_path / "gallery.sqlite"))
    with pytest.raises(UserError, match="needs Index.uri"):
        check_uri(None)
    with pytest.raises(UserError, match="HNSWSQ is not available on Milvus Lite: use one of Flat, IVF"):
        MilvusGalleryIndex.create(str(tmp_path / "g.db"), "x", DIM, "m", index_type="HNSWSQ")
    MilvusGalleryIndex.create(str(tmp_path / "g.db"), "x", DIM, "m").close()


def test_without_the_extra_milvus_says_what_to_install(monkeypatch):
    import engine.gallery.milvus_index as mi

    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if it were not installed
    with pytest.raises(UserError, match=r'needs the milvus extra: pip install -e "\.\[milvus\]"'):
        mi.pymilvus()
    with pytest.raises(UserError, match="milvus extra"):
        mi.client_for("http://127.0.0.1:1")


def test_an_unreachable_server_is_one_clear_error_within_the_bound():
    need_milvus()
    import socket

    from engine.gallery.backend import GallerySettings
    from engine.gallery.milvus_index import MilvusUnavailableError, client_for

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with pytest.raises(MilvusUnavailableError, match=f"cannot reach the Milvus server at {uri} after 2 attempts"):
        client_for(uri, timeout=1.0, retries=1)
    assert time.perf_counter() - start < 10  # 2 x 1 s + 0.5 s back-off, not a hang
    problem = GallerySettings("milvus", uri=uri, connect_timeout=0.5, connect_retries=0).store(None).check()
    assert problem and uri in problem


_WRITER = """
import sys, numpy as np
from engine.gallery.milvus_index import MilvusGalleryIndex
ix = MilvusGalleryIndex.open(sys.argv[1], sys.argv[2])
v = np.asarray([float(x) for x in sys.argv[3].split(',')], np.float32)[None]
print(ix.add(v, ["written_by_another_process"])[0])
"""


def test_server_shared_by_processes_sees_each_write_at_once(milvus_server):  # noqa: F811 - the fixture
    from engine.gallery.backend import GallerySettings
    from engine.gallery.milvus_index import MilvusGalleryIndex

    feats, labels, probes = _people(seed=1)
    flat = GalleryIndex(DIM, "m", "Flat")
    flat.add(feats, labels)
    store = GallerySettings("milvus", uri=milvus_server.uri).store(None)
    key = store.create(flat)  # the service's build: an in-memory index written as a collection
    assert key in store.keys() and store.check() is None
    shared = store.get(key)
    _same_answers(flat, shared, probes)
    # a write by another process, acknowledged there, is found by this one's very next search
    vector = ",".join(f"{x:.6f}" for x in probes[7])
    out = subprocess.run([sys.executable, "-c", _WRITER, milvus_server.uri, store.PREFIX + key, vector], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    new_id = int(out.stdout.split()[-1])
    lab, sc, ids = shared.search(probes[7], 1)
    assert lab[0] == ["written_by_another_process"] and ids[0][0] == new_id and sc[0][0] == pytest.approx(1, abs=1e-5)

    def remove(ix):  # what the service's index-remove does
        missing = sorted({new_id, 42} - set(ix.entries))
        ix.remove_ids([new_id, 42])
        return missing

    index, missing = store.update(key, remove)
    assert missing == [42] and len(index) == len(flat)
    other = MilvusGalleryIndex.open(milvus_server.uri, store.PREFIX + key)
    assert other.search(probes[7], 1)[0][0] == flat.search(probes[7], 1)[0][0]
