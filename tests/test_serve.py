"""The HTTP service, run for real: `main.py ... Global.mode=serve` in a subprocess on a loopback port,
called the way PaddleX's client example calls it (build, add, remove, infer with PaddleX's field
names), then restarted on the same index folder; errors come back in PaddleX's envelope."""
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest
from _tiny_face_model import export_random_model

from benchmarks.loopback_service import Service as Server
from benchmarks.loopback_service import b64, demo_face_photo, free_port, jpeg
from tests._milvus import milvus_server, need_milvus  # noqa: F401 - milvus_server is a fixture

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(REPO_ROOT, "configs", "face_recognition", "pipeline.yaml")
DEMO_FACES = ("p00000/00", "p00000/03", "p00000/05", "p00001/00")  # ones YuNet finds on a canvas (scores 0.65-0.76)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_random_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """{name: JPEG bytes}: demo faces enlarged onto a plain 320x320 canvas, so YuNet detects them."""
    return {name: jpeg(demo_face_photo(name)) for name in DEMO_FACES}


def test_paddlex_client_flow_and_restart_keeps_the_index(model_dir, photos, tmp_path):
    server = Server(model_dir, tmp_path / "indexes", tmp_path / "out")
    try:
        status, r = server.post("/face-recognition-index-build", {"imageLabelPairs": [
            {"image": b64(photos["p00000/00"]), "label": "alice"}, {"image": b64(photos["p00001/00"]), "label": "bob"}]})
        assert status == 200 and r["errorCode"] == 0 and r["errorMsg"] == "Success" and len(r["logId"]) == 36
        key = r["result"]["indexKey"]
        assert r["result"]["imageCount"] == 2 and r["result"]["idMap"] == {"0": "alice", "1": "bob"}
        status, r = server.post("/face-recognition-index-add", {"imageLabelPairs": [
            {"image": "data:image/jpeg;base64," + b64(photos["p00000/03"]), "label": "alice"}], "indexKey": key})
        assert status == 200 and r["result"]["imageCount"] == 3
        status, r = server.post("/face-recognition-infer", {"image": b64(photos["p00001/00"]), "indexKey": key})
        assert status == 200
        (face,) = r["result"]["faces"]
        assert face["recResults"][0] == {"label": "bob", "score": pytest.approx(1.0, abs=1e-3)}
        assert face["label"] == "bob" and 0.5 <= face["score"] <= 1.0 and len(face["bbox"]) == 4
        drawn = cv2.imdecode(np.frombuffer(base64.b64decode(r["result"]["image"]), np.uint8), cv2.IMREAD_COLOR)
        assert drawn.shape == (320, 320, 3)
        status, r = server.post("/face-recognition-index-remove", {"ids": [1, 42], "indexKey": key})
        assert status == 200 and r["result"]["imageCount"] == 2 and r["result"]["missingIds"] == [42]
        status, r = server.post("/face-recognition-infer", {"image": b64(photos["p00001/00"]), "indexKey": key,
                                                            "recThreshold": 0.999, "visualize": False})
        assert r["result"]["faces"][0]["label"] == "unknown" and r["result"]["image"] is None
        assert "bob" not in [m["label"] for m in r["result"]["faces"][0]["recResults"]]
    finally:
        assert server.stop() in (0, -signal.SIGTERM)  # SIGTERM: a graceful stop, ended by the signal
    again = Server(model_dir, tmp_path / "indexes", tmp_path / "out")
    try:
        status, r = again.post("/face-recognition-infer", {"image": b64(photos["p00000/05"]), "indexKey": key,
                                                           "recThreshold": -1.0, "topk": 5})
        assert status == 200
        assert sorted(m["label"] for m in r["result"]["faces"][0]["recResults"]) == ["alice", "alice"]
        status, r = again.post("/face-recognition-index-info", {"indexKey": key})
        assert status == 200 and r["result"]["idMap"] == {"0": "alice", "2": "alice"} and r["result"]["labels"] == ["alice"]
        versions = sorted(os.listdir(tmp_path / "indexes" / key))
        status, r = again.post("/face-recognition-index-remove", {"ids": [77], "indexKey": key})
        assert r["result"]["missingIds"] == [77] and sorted(os.listdir(tmp_path / "indexes" / key)) == versions
        # a face crop, in which the detector finds no face: embedded whole, as PaddleX's service does
        crop = jpeg(np.full((112, 112, 3), 120, np.uint8))
        status, r = again.post("/face-recognition-index-build", {"imageLabelPairs": [{"image": b64(crop), "label": "c"}]})
        assert status == 200 and r["result"]["imageCount"] == 1
    finally:
        again.stop()
    assert "POST /face-recognition-infer 200" in (tmp_path / "out" / "serve.log").read_text()


def test_errors_come_in_the_envelope_with_what_to_fix(model_dir, photos, tmp_path):
    server = Server(model_dir, tmp_path / "indexes", tmp_path / "out", "Serve.max_request_mb=0.2",
                    "Serve.max_images_per_request=2")
    try:
        def error(path, body=None, raw=None):
            status, r = server.post(path, body, raw)
            assert r["errorCode"] == status and "result" not in r and len(r["logId"]) == 36
            return status, r["errorMsg"]

        status, msg = error("/face-recognition-infer", {"image": "%%% not base64"})
        assert status == 422 and "neither base64 file content nor an http(s) URL" in msg
        status, msg = error("/face-recognition-infer", {"image": b64(b"GIF89a but not really")})
        assert status == 422 and "is not an image" in msg
        status, msg = error("/face-recognition-infer", {"image": b64(photos["p00000/00"]), "indexKey": "no-such-key"})
        assert status == 404 and "no index with indexKey 'no-such-key'" in msg
        status, msg = error("/face-recognition-infer", {"image": b64(photos["p00000/00"]), "indexKey": "../etc"})
        assert status == 404 and "not a valid key" in msg
        status, msg = error("/face-recognition-index-build", {"imageLabelPairs": [{"image": b64(photos["p00000/00"])}]})
        assert status == 422 and "imageLabelPairs.0.label: Field required" in msg
        status, msg = error("/face-recognition-index-build", raw=b"{not json")
        assert status == 422 and "invalid request" in msg
        three = [{"image": b64(photos["p00000/00"]), "label": "a"}] * 3
        status, msg = error("/face-recognition-index-build", {"imageLabelPairs": three})
        assert status == 413 and "above the limit of 2" in msg
        status, msg = error("/face-recognition-index-build", raw=b"x" * 300_000)
        assert status == 413 and "Serve.max_request_mb" in msg
        # the same body sent chunked (no Content-Length): the same 413, not a body-parsing error
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/face-recognition-index-build", body=iter([b"x" * 100_000] * 3),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        answer = conn.getresponse()
        r = json.loads(answer.read())
        conn.close()
        assert answer.status == 413 and r["errorCode"] == 413 and "Serve.max_request_mb" in r["errorMsg"]
        body = json.dumps({"image": b64(photos["p00000/00"]), "visualize": False}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/face-recognition-infer", body=iter([body[:100], body[100:]]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        answer = conn.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["errorCode"] == 0  # under the limit: handed on whole
        conn.close()
        not_an_image = b"\x89PNG\r\n\x1a\n but nothing after"
        status, msg = error("/face-recognition-index-build", {"imageLabelPairs": [
            {"image": b64(photos["p00000/00"]), "label": "a"}, {"image": b64(not_an_image), "label": "junk"}]})
        assert status == 422 and "imageLabelPairs[1].image" in msg
        assert os.listdir(tmp_path / "indexes") == []  # nothing half-built
        huge = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()
        huge = huge[:16] + (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big") + huge[24:]  # a 3.6 GP header
        status, msg = error("/face-recognition-infer", {"image": b64(huge)})
        assert status == 413 and "megapixels, above the limit" in msg and "Global.max_image_pixels" in msg
        status, msg = error("/face-recognition-infer", {"image": b64(photos["p00000/00"]), "detThreshold": 3})
        assert status == 422 and "detThreshold 3.0 is outside 0 to 1" in msg
        status, msg = error("/no-such-endpoint", {})
        assert status == 404
        with urllib.request.urlopen(server.url + "/health") as r:
            assert json.loads(r.read())["indexes"] == 0
    finally:
        server.stop()


def test_taken_port_is_one_line_and_exit_1(model_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "main.py"), "-c", PIPELINE, "-o", "Global.mode=serve",
                              "-o", f"Serve.port={port}", "-o", f"SubModules.Recognition.model_dir={model_dir}",
                              "-o", f"Global.output={tmp_path}"], capture_output=True, text=True, timeout=120,
                             cwd=REPO_ROOT)
    assert out.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_concurrent_adds_to_one_index_are_all_kept_and_sigterm_finishes_in_flight(model_dir, photos, tmp_path):
    """Six clients add at once to one index (updates serialised: every acknowledged add is in the
    final index), while SIGTERM arrives during a last batch of requests: those still answer 200."""
    server = Server(model_dir, tmp_path / "indexes", tmp_path / "out")
    try:
        _, r = server.post("/face-recognition-index-build", {"imageLabelPairs": [
            {"image": b64(photos["p00000/00"]), "label": "seed"}]})
        key = r["result"]["indexKey"]
        results = []

        def add(i):
            results.append(server.post("/face-recognition-index-add", {"indexKey": key, "imageLabelPairs": [
                {"image": b64(photos["p00001/00"]), "label": f"client{i}"}]}))

        threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(status == 200 for status, _ in results)
        _, r = server.post("/face-recognition-index-remove", {"ids": [], "indexKey": key})
        assert sorted(set(r["result"]["idMap"].values())) == ["client0", "client1", "client2", "client3", "client4",
                                                               "client5", "seed"]
        late = []
        threads = [threading.Thread(target=lambda: late.append(server.post("/face-recognition-infer", {
            "image": b64(photos["p00000/05"]), "indexKey": key}))) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert [status for status, _ in late] == [200] * 4
        assert server.proc.wait(timeout=60) == -signal.SIGTERM
    finally:
        server.stop()


def test_sigkill_during_adds_keeps_every_acknowledged_add(model_dir, photos, tmp_path):
    server = Server(model_dir, tmp_path / "indexes", tmp_path / "out")
    _, r = server.post("/face-recognition-index-build", {"imageLabelPairs": [{"image": b64(photos["p00000/00"]),
                                                                              "label": "seed"}]})
    key = r["result"]["indexKey"]
    acked, lock = [], threading.Lock()

    def adder(i):
        for n in range(1000):
            label = f"c{i}-{n}"
            try:
                status, _ = server.post("/face-recognition-index-add", {"indexKey": key, "imageLabelPairs": [
                    {"image": b64(photos["p00001/00"]), "label": label}]})
            except OSError:
                return  # the server is gone
            if status == 200:
                with lock:
                    acked.append(label)

    threads = [threading.Thread(target=adder, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while len(acked) < 6 and time.time() < deadline:
        time.sleep(0.05)
    server.proc.kill()  # SIGKILL: no chance to flush or finish anything
    for t in threads:
        t.join()
    server.stop()  # gone already: waits for it
    assert len(acked) >= 6
    again = Server(model_dir, tmp_path / "indexes", tmp_path / "out")
    try:
        _, r = again.post("/face-recognition-index-info", {"indexKey": key})
        held = set(r["result"]["idMap"].values())
        assert set(acked) <= held, sorted(set(acked) - held)
    finally:
        again.stop()


def test_image_urls_are_fetched_and_can_be_turned_off(model_dir, photos, tmp_path):
    import functools
    import http.server

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "face.jpg").write_bytes(photos["p00001/00"])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # by default a URL leading to this machine (or any private address) is never fetched, and every
    # failure reads the same: an open port, a closed one and a missing file cannot be told apart
    server = Server(model_dir, tmp_path / "indexes", tmp_path / "out")
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        answers = [server.post("/face-recognition-infer", {"image": u}) for u in (
            url + "/face.jpg", f"http://127.0.0.1:{closed_port}/x.jpg", "http://169.254.169.254/latest/meta-data",
            "http://localhost:1/x.jpg", "http://[::1]:1/x.jpg", "http://no-such-host.invalid/x.jpg")]
        assert {status for status, _ in answers} == {422}
        assert {r["errorMsg"] for _, r in answers} == {"image: could not fetch an image from that URL (only public "
                                                        "http(s) addresses are fetched; send the file content as "
                                                        "base64 instead)"}
    finally:
        server.stop()
    server = Server(model_dir, tmp_path / "indexes", tmp_path / "out", "Serve.url_allow_private=True")
    try:
        status, r = server.post("/face-recognition-index-build", {"imageLabelPairs": [
            {"image": url + "/face.jpg", "label": "bob"}]})
        assert status == 200 and r["result"]["imageCount"] == 1
        status, r = server.post("/face-recognition-infer", {"image": url + "/face.jpg", "indexKey": r["result"]["indexKey"]})
        assert status == 200 and r["result"]["faces"][0]["label"] == "bob"
        status, r = server.post("/face-recognition-infer", {"image": url + "/missing.jpg"})
        assert status == 422 and "could not fetch an image from that URL" in r["errorMsg"]
    finally:
        server.stop()
    closed = Server(model_dir, tmp_path / "indexes", tmp_path / "out", "Serve.url_images=False")
    try:
        status, r = closed.post("/face-recognition-infer", {"image": url + "/face.jpg"})
        assert status == 422 and "image URLs are turned off" in r["errorMsg"]
    finally:
        closed.stop()
        httpd.shutdown()


# --------------------------------------------------------------------------- the milvus backend
def client_flow(server):
    """PaddleX's client flow (build, add, infer, remove with an absent id, infer), with the answers a
    client can compare across backends: everything but the ids (Milvus makes its own)."""
    answers = []
    status, r = server.post("/face-recognition-index-build", {"imageLabelPairs": [
        {"image": b64(photos_cache["p00000/00"]), "label": "alice"},
        {"image": b64(photos_cache["p00001/00"]), "label": "bob"}]})
    assert status == 200, r
    key = r["result"]["indexKey"]
    answers.append(("build", r["result"]["imageCount"], sorted(r["result"]["idMap"].values())))
    status, r = server.post("/face-recognition-index-add", {"imageLabelPairs": [
        {"image": b64(photos_cache["p00000/03"]), "label": "alice"}], "indexKey": key})
    answers.append(("add", status, r["result"]["imageCount"], sorted(r["result"]["idMap"].values())))
    bob = [int(i) for i, label in r["result"]["idMap"].items() if label == "bob"]
    for name in ("p00001/00", "p00000/05"):
        status, r = server.post("/face-recognition-infer", {"image": b64(photos_cache[name]), "indexKey": key,
                                                            "recThreshold": -1.0, "topk": 5, "visualize": False})
        face = r["result"]["faces"][0]
        answers.append(("infer", name, face["label"], round(face["labelScore"], 3),
                        [(m["label"], round(m["score"], 3)) for m in face["recResults"]]))
    absent = max(bob) + 1000
    status, r = server.post("/face-recognition-index-remove", {"ids": bob + [absent], "indexKey": key})
    assert r["result"]["missingIds"] == [absent]  # the absent id is named
    answers.append(("remove", status, r["result"]["imageCount"], sorted(r["result"]["idMap"].values())))
    status, r = server.post("/face-recognition-infer", {"image": b64(photos_cache["p00001/00"]), "indexKey": key,
                                                        "recThreshold": 0.999, "visualize": False})
    answers.append(("after remove", r["result"]["faces"][0]["label"],
                    [m["label"] for m in r["result"]["faces"][0]["recResults"]]))
    return key, answers


photos_cache = {}


@pytest.fixture(scope="module")
def faiss_answers(model_dir, photos, tmp_path_factory):
    photos_cache.update(photos)
    folder = tmp_path_factory.mktemp("faiss_flow")
    server = Server(model_dir, folder / "indexes", folder / "out")
    try:
        return client_flow(server)[1]
    finally:
        server.stop()


def milvus_server_args(uri, *more):
    return ("Index.backend=milvus", f"Index.uri={uri}", *more)


@pytest.mark.slow  # ~25 s; still in the default run (and CI's): the core milvus checks
def test_milvus_lite_service_answers_as_faiss_and_restart_keeps_every_enrolment(model_dir, faiss_answers, tmp_path):
    need_milvus()
    uri = tmp_path / "gallery.db"
    server = Server(model_dir, tmp_path / "unused", tmp_path / "out", *milvus_server_args(uri))
    try:
        key, answers = client_flow(server)
        assert answers == faiss_answers
        status, r = server.post("/face-recognition-index-add", {"imageLabelPairs": [
            {"image": b64(photos_cache["p00001/00"]), "label": "carol"}], "indexKey": key})
        assert status == 200 and r["result"]["imageCount"] == 3
    finally:
        server.stop()
    assert not os.path.exists(tmp_path / "unused" / key)  # the index is in the Lite file, not in folders
    again = Server(model_dir, tmp_path / "unused", tmp_path / "out", *milvus_server_args(uri))
    try:
        status, r = again.post("/face-recognition-index-remove", {"ids": [], "indexKey": key})
        assert status == 200 and sorted(r["result"]["idMap"].values()) == ["alice", "alice", "carol"]
        status, r = again.post("/face-recognition-infer", {"image": b64(photos_cache["p00001/00"]), "indexKey": key})
        assert r["result"]["faces"][0]["label"] == "carol"
    finally:
        again.stop()


@pytest.mark.slow  # ~25 s; still in the default run (and CI's): the core milvus checks
def test_two_services_on_one_milvus_server_see_each_others_enrolments_at_once(model_dir, faiss_answers, tmp_path,
                                                                            milvus_server):  # noqa: F811
    args = milvus_server_args(milvus_server.uri)
    one = Server(model_dir, tmp_path / "a", tmp_path / "out_a", *args)
    two = None
    try:
        two = Server(model_dir, tmp_path / "b", tmp_path / "out_b", *args)
        key, answers = client_flow(one)
        assert answers == faiss_answers  # a server-backed index answers as faiss does
        infer = {"image": b64(photos_cache["p00001/00"]), "indexKey": key, "visualize": False}
        answer_one, answer_two = one.post("/face-recognition-infer", infer)[1], two.post("/face-recognition-infer",
                                                                                           infer)[1]
        assert answer_one["result"] == answer_two["result"] and answer_one["result"]["faces"][0]["label"] != "bob"
        # process two enrols bob again; process one's very next request finds him, and both answer alike
        status, r = two.post("/face-recognition-index-add", {"imageLabelPairs": [
            {"image": b64(photos_cache["p00001/00"]), "label": "bob"}], "indexKey": key})
        assert status == 200
        answer_one, answer_two = one.post("/face-recognition-infer", infer)[1], two.post("/face-recognition-infer",
                                                                                           infer)[1]
        assert answer_one["result"]["faces"][0]["label"] == "bob" and answer_one["result"] == answer_two["result"]
        bob_id = [int(i) for i, label in r["result"]["idMap"].items() if label == "bob"]
        status, r = one.post("/face-recognition-index-remove", {"ids": bob_id + [7], "indexKey": key})
        assert r["result"]["missingIds"] == [7] and "bob" not in r["result"]["idMap"].values()
        assert two.post("/face-recognition-infer", infer)[1]["result"]["faces"][0]["label"] != "bob"
        with urllib.request.urlopen(two.url + "/health") as h:
            health = json.loads(h.read())
        assert health["status"] == "ok" and health["indexes"] >= 1 and milvus_server.uri in health["index"]
    finally:
        one.stop()
        if two is not None:
            two.stop()


def health(server):
    """(HTTP status, JSON body) of GET /health (a 503 is an answer, not an exception)."""
    try:
        with urllib.request.urlopen(server.url + "/health", timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


@pytest.mark.slow  # ~40 s (a Milvus restart); still in the default run (and CI's)
def test_milvus_server_going_away_is_503_on_health_and_requests_then_recovers(model_dir, photos, tmp_path,
                                                                             milvus_server):  # noqa: F811
    """The live service on a Milvus server that stops: /health answers 503 naming the URI, an infer
    and an add answer 503 in the envelope within the bound (Index.connect_timeout x attempts), not
    after pymilvus' minutes of retries; the server started again on the same port and data, the
    same process is healthy again and still knows what was enrolled before."""
    uri = milvus_server.uri
    server = Server(model_dir, tmp_path / "unused", tmp_path / "out",
                    *milvus_server_args(uri, "Index.connect_timeout=1", "Index.connect_retries=1"))
    try:
        status, r = server.post("/face-recognition-index-build", {"imageLabelPairs": [
            {"image": b64(photos["p00001/00"]), "label": "bob"}]})
        assert status == 200, r
        key = r["result"]["indexKey"]
        status, body = health(server)
        assert status == 200 and body["status"] == "ok"
        infer = {"image": b64(photos["p00001/00"]), "indexKey": key, "visualize": False}
        add = {"imageLabelPairs": [{"image": b64(photos["p00000/00"]), "label": "alice"}], "indexKey": key}

        milvus_server.kill()
        (status, body), seconds = timed(health, server)
        assert status == 503 and body["status"] == "error" and uri in body["errorMsg"], body
        assert seconds < 20, f"/health took {seconds:.1f} s with Milvus down"
        for path, request in (("/face-recognition-infer", infer), ("/face-recognition-index-add", add)):
            (status, r), seconds = timed(server.post, path, request)
            assert status == 503 and r["errorCode"] == 503 and uri in r["errorMsg"] and len(r["logId"]) == 36, r
            assert "result" not in r and seconds < 30, f"{path} took {seconds:.1f} s with Milvus down"
        assert server.proc.poll() is None  # the service stays up

        milvus_server.start_again()
        deadline = time.time() + 120  # the client's channel reconnects by itself (gRPC back-off)
        while health(server)[0] != 200:
            assert time.time() < deadline, "/health did not come back within 120 s of Milvus' restart"
            time.sleep(1)
        while True:  # Milvus reloads the collection after its restart: 503s ("try again") until then
            (status, r), seconds = timed(server.post, "/face-recognition-infer", infer)
            if status == 200 or time.time() > deadline:
                break
            assert status == 503 and seconds < 30, (status, seconds, r)
            time.sleep(1)
        assert status == 200 and r["result"]["faces"][0]["label"] == "bob", r  # the enrolment survived
        status, r = server.post("/face-recognition-index-add", add)
        assert status == 200 and sorted(r["result"]["idMap"].values()) == ["alice", "bob"], r
    finally:
        server.stop()
        if not milvus_server.running:  # leave the module's server as the other tests expect it
            milvus_server.start_again()


def test_a_wrong_milvus_uri_fails_fast_with_the_uri_named(model_dir, tmp_path):
    need_milvus()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "main.py"), "-c", PIPELINE, "-o", "Global.mode=serve",
                          "-o", f"Serve.port={free_port()}", "-o", f"SubModules.Recognition.model_dir={model_dir}",
                          "-o", f"Global.output={tmp_path}", "-o", "Index.connect_timeout=1", "-o",
                          "Index.connect_retries=1", *[x for a in milvus_server_args(uri) for x in ("-o", a)]],
                         capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 1 and f"cannot reach the Milvus server at {uri} after 2 attempts" in out.stderr
    assert time.perf_counter() - start < 60
    assert "Traceback" not in out.stderr


def _peak_rss_mb(pid):
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def test_large_images_are_bounded_before_and_while_decoding(model_dir, tmp_path):
    """32 images of 49 MP in one request (a 6 MB body of flat PNGs) are refused from their headers,
    413 naming Serve.max_request_pixels; 4 of them are taken, decoded one at a time; the service
    stays under 1.5 GB peak RSS throughout."""
    big = cv2.imencode(".png", np.full((7000, 7000, 3), 127, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]
    big = b64(big.tobytes())
    server = Server(model_dir, tmp_path / "indexes", tmp_path / "out", "Serve.max_images_per_request=64",
                    "Serve.max_request_mb=64")
    try:
        many = [{"image": big, "label": f"p{i}"} for i in range(32)]
        status, r = server.post("/face-recognition-index-build", {"imageLabelPairs": many})
        assert status == 413 and "Serve.max_request_pixels" in r["errorMsg"]
        status, r = server.post("/face-recognition-index-build", {"imageLabelPairs": many[:4]})
        assert status == 200 and r["result"]["imageCount"] == 4  # no face in them: embedded whole
        assert _peak_rss_mb(server.proc.pid) < 1536
    finally:
        server.stop()


def test_slow_image_urls_never_hold_up_health_or_base64_requests(model_dir, photos, tmp_path):
    """45 requests for a URL that never answers: a few are fetched at a time, the rest wait or are
    refused (503), and /health and a base64 infer still answer at once."""
    import http.server

    release = threading.Event()

    class Stall(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            release.wait(30)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    stalled = f"http://127.0.0.1:{httpd.server_address[1]}/slow.jpg"
    server = Server(model_dir, tmp_path / "indexes", tmp_path / "out", "Serve.url_allow_private=True",
                    "Serve.url_timeout=8", "Serve.shutdown_timeout=1")
    answers = []
    try:
        def ask():
            try:
                answers.append(server.post("/face-recognition-infer", {"image": stalled}, timeout=30)[0])
            except OSError:
                answers.append(None)

        clients = [threading.Thread(target=ask, daemon=True) for _ in range(45)]
        for c in clients:
            c.start()
        time.sleep(2)  # every request is in: fetching, waiting, or refused
        start = time.perf_counter()
        with urllib.request.urlopen(server.url + "/health", timeout=10) as h:
            assert h.status == 200
        assert time.perf_counter() - start < 0.5
        start = time.perf_counter()
        status, _ = server.post("/face-recognition-infer", {"image": b64(photos["p00000/00"]), "visualize": False})
        assert status == 200 and time.perf_counter() - start < 5
        assert answers.count(503) >= 45 - 32 - 4  # beyond the fetchers and the queue: refused at once
    finally:
        release.set()
        server.stop()
        httpd.shutdown()


def test_api_keys_and_trusted_hosts(model_dir, photos, tmp_path):
    """With Serve.api_key_file every API call needs a key (Bearer or X-API-Key; /health and the page
    do not); a Host header the service does not answer to is refused; a service that listens beyond
    loopback will not start without keys."""
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key a line\nk-0123456789abcdef-first\nk-0123456789abcdef-second\n")
    keys.chmod(0o600)
    server = Server(model_dir, tmp_path / "indexes", tmp_path / "out", f"Serve.api_key_file={keys}")
    try:
        body = json.dumps({"image": b64(photos["p00000/00"]), "visualize": False}).encode()

        def infer(headers):
            req = urllib.request.Request(server.url + "/face-recognition-infer", data=body,
                                         headers={"Content-Type": "application/json", **headers})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        status, r = infer({})
        assert status == 401 and r["errorCode"] == 401 and "API key" in r["errorMsg"]
        assert infer({"X-API-Key": "k-0123456789abcdef-wrong"})[0] == 401
        assert infer({"Authorization": "Bearer k-0123456789abcdef-second"})[0] == 200
        assert infer({"X-API-Key": "k-0123456789abcdef-first"})[0] == 200
        with urllib.request.urlopen(server.url + "/health", timeout=10) as h:
            assert h.status == 200
        with urllib.request.urlopen(server.url + "/", timeout=10) as page:
            assert page.status == 200
        status, r = infer({"Host": "attacker.example", "X-API-Key": "k-0123456789abcdef-first"})
        assert status == 400 and "Serve.allowed_hosts" in r["errorMsg"]
    finally:
        server.stop()
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "main.py"), "-c", PIPELINE, "-o", "Global.mode=serve",
                          "-o", "Serve.host=0.0.0.0", "-o", f"Serve.port={free_port()}",
                          "-o", f"SubModules.Recognition.model_dir={model_dir}", "-o", f"Global.output={tmp_path / 'o2'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "set Serve.api_key_file" in out.stderr
    keys.chmod(0o644)
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "main.py"), "-c", PIPELINE, "-o", "Global.mode=serve",
                          "-o", f"Serve.port={free_port()}", "-o", f"Serve.api_key_file={keys}",
                          "-o", f"SubModules.Recognition.model_dir={model_dir}", "-o", f"Global.output={tmp_path / 'o3'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "chmod 600" in out.stderr
