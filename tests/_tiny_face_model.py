"""Shared by the tests: an untrained model and tiny data.

A random-init MobileFaceNet (fixed paddle.seed) is enough to check plumbing and numbers that
must agree between code paths; nothing here trains.
"""
import atexit
import contextlib
import functools
import http.server
import os
import shutil
import tarfile
import tempfile
import threading

import cv2
import numpy as np

from benchmarks import loopback_service
from benchmarks.loopback_service import demo_face_photo  # noqa: F401 - the tests' demo-face canvas

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "face_recognition", "MobileFaceNet.yaml")


def save_random_checkpoint(path, num_classes=5, seed=0):
    """paddle.save of a FaceRecModel(MobileFaceNet, ArcMargin) state dict; returns path."""
    import paddle

    from models import ArcMargin, FaceRecModel, build_backbone

    paddle.seed(seed)
    backbone = build_backbone("MobileFaceNet")
    model = FaceRecModel(backbone, ArcMargin(backbone.embedding_size, num_classes))
    model.eval()
    paddle.save(model.state_dict(), path)
    return path


def make_face_images(n_people=4, per_person=3, seed=0, size=112):
    """{(person, k): BGR uint8}: per person a random base picture plus small noise per photo."""
    rng = np.random.default_rng(seed)
    images = {}
    for p in range(n_people):
        base = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (7, 7), 0)
        for k in range(per_person):
            noise = rng.integers(-25, 26, (size, size, 3))
            images[(p, k)] = np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)
    return images


def make_pair_dataset(root, n_people=4, per_person=3, seed=0):
    """<root>/val/images/*.png and val/pair_label.txt with every same pair and as many different pairs.

    Returns (pairs as (rel_a, rel_b, label), {rel_path: image}).
    """
    images = make_face_images(n_people, per_person, seed)
    os.makedirs(os.path.join(root, "val", "images"), exist_ok=True)
    rel = {}
    for (p, k), img in images.items():
        r = f"images/p{p}_{k}.png"
        cv2.imwrite(os.path.join(root, "val", r), img)
        rel[(p, k)] = r
    same = [(rel[(p, a)], rel[(p, b)], 1) for p in range(n_people) for a in range(per_person) for b in range(a + 1, per_person)]
    diff = []
    for i in range(len(same)):
        p, q = i % n_people, (i + 1 + i // n_people) % n_people
        if p == q:
            q = (q + 1) % n_people
        diff.append((rel[(p, i % per_person)], rel[(q, (i + 1) % per_person)], 0))
    pairs = [x for pair in zip(same, diff) for x in pair]  # interleave so every fold has both labels
    with open(os.path.join(root, "val", "pair_label.txt"), "w") as f:
        f.write("# a b label\n" + "".join(f"{a} {b} {y}\n" for a, b, y in pairs))
    return pairs, {rel[k]: img for k, img in images.items()}


def config(**overrides):
    """The MobileFaceNet config with -o style overrides given as keyword 'A__b' -> 'A.b'."""
    from engine.config.loader import load_config

    return load_config(CONFIG, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])


def export_random_model(folder, seed=0):
    """An exported random-init MobileFaceNet (paddle.seed(seed)) in <folder>/inference; returns that path.
    Exported once per test session and seed (benchmarks.loopback_service.export_random_model: two
    jit.saves and a Paddle subprocess), then copied, so no test sees another's changes."""
    if seed not in _EXPORTED:
        work = tempfile.mkdtemp(prefix="facefeat_random_model_")
        atexit.register(shutil.rmtree, work, True)
        _EXPORTED[seed] = loopback_service.export_random_model(work, seed)
    out = os.path.join(str(folder), "inference")
    shutil.copytree(_EXPORTED[seed], out)
    return out


_EXPORTED = {}  # seed -> the session's export


@contextlib.contextmanager
def official_model_mirror(model_dir, root, monkeypatch):
    """`model_dir` served on loopback as PaddleX's official MobileFaceNet (its URL layout and tar),
    with FACEFEAT_OFFICIAL_MODELS_URL pointing at it and an empty cache under `root`: what
    create_model("MobileFaceNet") and a pipeline without model_dir download, with no network."""
    www = os.path.join(str(root), "www", "official_inference_model", "paddle3.0.0")
    os.makedirs(www)
    with tarfile.open(os.path.join(www, "MobileFaceNet_infer.tar"), "w") as tar:
        tar.add(model_dir, arcname="MobileFaceNet_infer")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=os.path.join(str(root), "www"))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("FACEFEAT_OFFICIAL_MODELS_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("XDG_CACHE_HOME", os.path.join(str(root), "cache"))
    try:
        yield httpd
    finally:
        httpd.shutdown()
