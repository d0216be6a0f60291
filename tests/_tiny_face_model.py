"""Shared by tests/test_evaluate.py and tests/test_predict.py: an untrained model and tiny data.

A random-init MobileFaceNet (fixed paddle.seed) is enough to check plumbing and numbers that
must agree between code paths; nothing here trains.
"""
import os

import cv2
import numpy as np

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
    from engine.config import load_config

    return load_config(CONFIG, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])


def export_random_model(folder, seed=0):
    """An exported random-init MobileFaceNet (paddle.seed(seed)) in <folder>/inference; returns that path."""
    import paddle

    from engine.inference_folder import export_inference
    from models import build_backbone

    paddle.seed(seed)
    out = os.path.join(str(folder), "inference")
    export_inference(build_backbone("MobileFaceNet"), out, "MobileFaceNet")
    return out


def demo_face_photo(name):
    """The demo face `name` ("p00000/00") enlarged to 200x200 on a plain 320x320 canvas (value 200):
    a photo YuNet detects for some demo faces (p00000/00, /03, /05, p00001/00)."""
    from datasets.demo import ensure_demo

    demo = os.path.join(REPO_ROOT, "dataset", "face_demo")
    ensure_demo(demo)
    face = cv2.imread(os.path.join(demo, "val", "images", name if name.endswith(".jpg") else name + ".jpg"))
    assert face is not None, f"demo image {name} missing under {demo}"
    canvas = np.full((320, 320, 3), 200, np.uint8)
    canvas[60:260, 60:260] = cv2.resize(face, (200, 200), interpolation=cv2.INTER_LINEAR)
    return canvas
