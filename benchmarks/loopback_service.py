"""The face recognition service on loopback, the demo photos it is sent, a random-init model, the
BatchNorm calibration of a random-init backbone and a Milvus server on loopback: one copy for the
benchmarks and the tests.

The benchmarks and the tests (tests/test_serve.py, test_web_page.py, test_hpi.py, _milvus.py and
_tiny_face_model.py) import it as `benchmarks.loopback_service` (the repository root is on their
path). A benchmark cannot import tests, and nothing under foundation/, models/, datasets/ or
engine/ imports this module, so the layers of setup.cfg's import-linter contracts are untouched.
"""
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import cv2
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(REPO_ROOT, "configs", "face_recognition", "pipeline.yaml")
DEMO_DIR = os.path.join(REPO_ROOT, "dataset", "face_demo")


# --------------------------------------------------------------------------- a model
def export_random_model(folder, seed=0):
    """An exported random-init MobileFaceNet (paddle.seed(seed)) in <folder>/inference; returns that path.
    Speed and plumbing do not depend on the weights."""
    import paddle

    from engine.inference.folder import export_inference
    from models import build_backbone

    paddle.seed(seed)
    out = os.path.join(str(folder), "inference")
    export_inference(build_backbone("MobileFaceNet"), out, "MobileFaceNet")
    return out


def calibrate_batchnorm(model, x):
    """Set every BatchNorm2D's running statistics to those of the batch `x` (a paddle tensor), so a
    random-init network's features have a realistic scale; returns the model in eval mode."""
    import paddle

    norms = [m for m in model.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)]
    saved = [m._momentum for m in norms]
    for m in norms:
        m._momentum = 0.0  # running statistics := this batch's
    model.train()
    with paddle.no_grad():
        model(x)
    for m, momentum in zip(norms, saved):
        m._momentum = momentum
    model.eval()
    return model


# --------------------------------------------------------------------------- photos
def demo_face_photo(name):
    """The demo face `name` ("p00000/00") enlarged to 200x200 on a plain 320x320 canvas (value 200):
    a photo YuNet detects for some demo faces (p00000/00, /03, /05, p00001/00)."""
    from datasets.demo import ensure_demo

    ensure_demo(DEMO_DIR)
    face = cv2.imread(os.path.join(DEMO_DIR, "val", "images", name if name.endswith(".jpg") else name + ".jpg"))
    assert face is not None, f"demo image {name} missing under {DEMO_DIR}"
    canvas = np.full((320, 320, 3), 200, np.uint8)
    canvas[60:260, 60:260] = cv2.resize(face, (200, 200), interpolation=cv2.INTER_LINEAR)
    return canvas


def jpeg(img):
    return cv2.imencode(".jpg", img)[1].tobytes()


def detected_demo_photos(limit=24, det_threshold=0.5):
    """[(person, JPEG bytes)]: demo_face_photo of every demo face YuNet detects at det_threshold, in
    name order, at most `limit`."""
    from datasets.demo import ensure_demo
    from models.face_detector import YuNetDetector

    ensure_demo(DEMO_DIR)
    root = os.path.join(DEMO_DIR, "val", "images")
    detector = YuNetDetector(threshold=det_threshold)
    photos = []
    for person in sorted(os.listdir(root)):
        for name in sorted(os.listdir(os.path.join(root, person))):
            canvas = demo_face_photo(f"{person}/{name}")
            if detector.detect(canvas):
                photos.append((person, jpeg(canvas)))
            if len(photos) >= limit:
                return photos
    return photos


def b64(data):
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- the service
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`main.py -c pipeline.yaml -o Global.mode=serve` in a subprocess on a free 127.0.0.1 port, with
    the model folder, index root and output folder given, plus `extra` -o overrides; the constructor
    returns once /health answers ok (RuntimeError, with the service's output, when it exits or does
    not answer within start_timeout seconds)."""

    def __init__(self, model_dir, index_root, log_dir, *extra, start_timeout=120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, os.path.join(REPO_ROOT, "main.py"), "-c", PIPELINE, "-o", "Global.mode=serve",
               "-o", f"Serve.port={self.port}", "-o", f"Serve.index_root={index_root}",
               "-o", f"SubModules.Recognition.model_dir={model_dir}", "-o", "det_threshold=0.5",
               "-o", f"Global.output={log_dir}",
               # the default index of /face-recognition-infer without an indexKey: none unless `extra` names one
               "-o", "index=no_default_index", *[x for e in extra for x in ("-o", e)]]
        # its output goes to a file, never a pipe nobody reads (a full pipe would block the service)
        self.output = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=self.output, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.time() + start_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited {self.proc.returncode}: {self.output_text()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if json.loads(r.read())["status"] == "ok":
                        return
            except OSError:
                time.sleep(0.3)
        said = self.output_text()
        self.stop()
        raise RuntimeError(f"the service did not answer /health within {start_timeout} s: {said}")

    def output_text(self, tail=4000):
        """The last `tail` characters the service printed (until stop())."""
        if self.output.closed:
            return ""
        self.output.seek(0)
        return self.output.read().decode("utf-8", "replace")[-tail:]

    def post(self, path, body=None, raw=None, timeout=120):
        """(HTTP status, decoded JSON answer) of a POST of `body` as JSON (or the bytes `raw`)."""
        data = raw if raw is not None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def stop(self, sig=signal.SIGTERM):
        """Send `sig` (when it still runs), wait for the exit (SIGKILL after 60 s) and drop its output;
        its return code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output.close()
        return self.proc.returncode


def port_open(port, host="127.0.0.1"):
    """Whether something accepts connections on host:port."""
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
