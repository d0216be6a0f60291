"""The built-in demo dataset: synthetic faces drawn with OpenCV, so every mode runs with no download.

Who a face is lives in fixed per-identity parameters (face shape, skin tone, eyes, brows, nose,
mouth, ears, hair, glasses, facial hair, a mole); each image of that identity redraws them under
nuisance factors that change from photo to photo (rotation, scale, shift, a small head turn,
expression, lighting strength/colour/direction, blur, noise, cluttered background). Skin tone
and hair colour come from a few shared palettes and lighting rescales every image, so mean colour
alone does not tell people apart: a model has to learn the geometry, and validation identities
are never seen in training.

Every image depends only on (seed, split, identity, image index), so the output is byte-for-byte
the same for the same arguments whatever the number of worker processes.

    python -m datasets.demo OUT_DIR [--train-identities 200 --images-per-identity 8
                                     --val-identities 50 --val-pairs 600 --seed 0]
"""
import argparse
import json
import math
import multiprocessing
import os
import shutil
import sys
import time

import cv2
import numpy as np

from foundation.atomic_io import make_temp_dir, move_dir_into_place
from foundation.errors import DatasetError
from foundation.logger import get_logger
from foundation.progress import Progress

# The configs' default Global.dataset_dir: relative to the current folder (the repository root
# when run as the README says), generated there on first use.
DEMO_DIR = os.path.join("dataset", "face_demo")

DEFAULTS = dict(train_identities=200, images_per_identity=8, val_identities=50, val_pairs=600, seed=0)
IMAGE_SIZE = 112
TRAIN, VAL, PAIRS = 0, 1, 2  # seed-stream tags: train and val identities never share parameters

# Palettes are BGR. Identities share them, so colour is a weak cue and lighting blurs it further.
SKIN = np.array([[189, 211, 240], [160, 190, 228], [130, 170, 215], [100, 140, 190],
                 [75, 110, 160], [55, 80, 120], [40, 60, 95]], np.float32)
HAIR = np.array([[20, 20, 25], [30, 45, 70], [40, 70, 110], [90, 160, 210], [40, 60, 150],
                 [150, 150, 155], [215, 215, 220]], np.float32)
IRIS = np.array([[40, 50, 70], [90, 110, 60], [140, 110, 60], [60, 80, 110], [30, 30, 40]], np.float32)


# --------------------------------------------------------------------------- identity and nuisance
def identity_params(seed, split, index):
    """The fixed appearance of one person."""
    r = np.random.default_rng([seed, split, index])
    p = {
        "face_w": r.uniform(28, 38), "face_h": r.uniform(36, 46),
        "jaw_w": r.uniform(0.65, 1.0), "jaw_drop": r.uniform(4, 14),
        "skin": SKIN[r.integers(len(SKIN))] + r.uniform(-12, 12, 3),
        "hair": HAIR[r.integers(len(HAIR))] + r.uniform(-10, 10, 3),
        "hair_style": int(r.integers(5)), "hair_volume": r.uniform(2, 10), "fringe": r.uniform(-0.6, 0.6),
        "part": r.uniform(-0.5, 0.5),
        "eye_y": r.uniform(-8, 2), "eye_dx": r.uniform(10, 17), "eye_w": r.uniform(4, 7.5),
        "eye_h": r.uniform(1.8, 3.8), "eye_tilt": r.uniform(-12, 12),
        "iris": IRIS[r.integers(len(IRIS))] + r.uniform(-10, 10, 3), "iris_r": r.uniform(1.6, 2.8),
        "brow_gap": r.uniform(5, 10), "brow_len": r.uniform(6, 11), "brow_thick": int(r.integers(1, 4)),
        "brow_tilt": r.uniform(-4, 4), "brow_arch": r.uniform(-2.5, 2.5),
        "nose_len": r.uniform(8, 17), "nose_w": r.uniform(3, 8), "nose_style": int(r.integers(3)),
        "mouth_y": r.uniform(14, 24), "mouth_w": r.uniform(7, 15), "lip": r.uniform(1, 3.5),
        "lip_col": r.uniform(0.55, 0.85), "ear": r.uniform(4, 8), "ear_y": r.uniform(-6, 4),
        "glasses": int(r.integers(3)) if r.random() < 0.35 else -1,
        "glasses_col": r.uniform(0, 200, 3),
        "beard": int(r.integers(1, 4)) if r.random() < 0.3 else 0,
        "mole": (r.uniform(-0.7, 0.7), r.uniform(-0.3, 0.8)) if r.random() < 0.5 else None,
        "cheeks": r.uniform(0, 0.25),
    }
    return p


def nuisance_params(seed, split, index, image):
    """What changes from one photo of a person to the next."""
    r = np.random.default_rng([seed, split, index, image + 1])
    return {
        "angle": r.uniform(-14, 14), "scale": r.uniform(0.88, 1.1), "shift": r.uniform(-5, 5, 2),
        "turn": r.uniform(-4, 4), "nod": r.uniform(-2.5, 2.5),
        "smile": r.uniform(-1, 1), "open": r.uniform(0, 1) if r.random() < 0.3 else 0.0,
        "eye_open": 0.15 if r.random() < 0.08 else r.uniform(0.65, 1.15), "brow_raise": r.uniform(-2, 2),
        "gain": r.uniform(0.6, 1.3), "cast": r.uniform(0.85, 1.15, 3), "light_angle": r.uniform(0, 2 * math.pi),
        "light_strength": r.uniform(0, 0.45), "blur": r.uniform(0.3, 1.4) if r.random() < 0.5 else 0.0,
        "noise": r.uniform(0, 8), "bg_a": r.uniform(20, 235, 3), "bg_b": r.uniform(20, 235, 3),
        "bg_angle": r.uniform(0, 2 * math.pi), "clutter": int(r.integers(0, 6)),
        "clutter_rng": int(r.integers(2**31)),
    }


# --------------------------------------------------------------------------- drawing
def _ell(img, c, axes, angle, color, thick=-1, a0=0, a1=360):
    cv2.ellipse(img, (int(round(c[0] * 4)), int(round(c[1] * 4))), (max(1, int(round(axes[0] * 4))), max(1, int(round(axes[1] * 4)))),
                angle, a0, a1, color, thick if thick < 0 else max(1, int(round(thick))), cv2.LINE_AA, 2)


def _poly(img, pts, color, closed=False, thick=1.0, fill=False):
    arr = (np.asarray(pts, np.float32) * 4).round().astype(np.int32).reshape(-1, 1, 2)
    if fill:
        cv2.fillPoly(img, [arr], color, cv2.LINE_AA, 2)
    else:
        cv2.polylines(img, [arr], closed, color, max(1, int(round(thick))), cv2.LINE_AA, 2)


def _col(c):
    return tuple(float(v) for v in np.clip(c, 0, 255))


def _draw_face(p, n):
    """Face layer (BGR float) and its coverage mask, in the canonical frame before the pose warp."""
    s = IMAGE_SIZE
    face = np.zeros((s, s, 3), np.uint8)
    mask = np.zeros((s, s), np.uint8)
    cx, cy = s / 2, s / 2 + 4
    turn, nod = n["turn"], n["nod"]
    skin, hair = _col(p["skin"]), _col(p["hair"])
    fw, fh = p["face_w"], p["face_h"]

    # hair behind the head (long styles), ears, neck
    if p["hair_style"] in (2, 3):
        length = 18 + 3 * p["hair_volume"] if p["hair_style"] == 3 else 8 + p["hair_volume"]
        for img, col in ((face, hair), (mask, 255)):
            _poly(img, [(cx - fw - p["hair_volume"], cy - 10), (cx + fw + p["hair_volume"], cy - 10),
                        (cx + fw + p["hair_volume"] * 0.8, cy + length), (cx - fw - p["hair_volume"] * 0.8, cy + length)],
                  col, fill=True)
    for img, col in ((face, skin), (mask, 255)):
        _poly(img, [(cx - fw * 0.45, cy + fh * 0.6), (cx + fw * 0.45, cy + fh * 0.6),
                    (cx + fw * 0.55, s + 4), (cx - fw * 0.55, s + 4)], col, fill=True)
        for side in (-1, 1):
            _ell(img, (cx + side * (fw - 1) - turn * 0.5, cy + p["ear_y"]), (p["ear"] * 0.6, p["ear"]), 0, col)
    # head: an ellipse plus a jaw ellipse whose width and drop give the face shape
    for img, col in ((face, skin), (mask, 255)):
        _ell(img, (cx, cy), (fw, fh), 0, col)
        _ell(img, (cx, cy + p["jaw_drop"]), (fw * p["jaw_w"], fh - p["jaw_drop"] * 0.4), 0, col)
    if p["cheeks"] > 0.1:
        for side in (-1, 1):
            _ell(face, (cx + side * fw * 0.55 + turn, cy + 8), (5, 3), 0, _col(p["skin"] * (1 - p["cheeks"] * 0.5) + np.array([0, 0, 40]) * p["cheeks"]))

    fx, fy = cx + turn, cy + nod  # features shift with a small head turn / nod
    # hair on top
    top = cy - fh
    vol = p["hair_volume"]
    if p["hair_style"] != 4:  # 4 = bald
        for img, col in ((face, hair), (mask, 255)):
            _ell(img, (cx, cy - fh * 0.35), (fw + vol * 0.5, fh * 0.7 + vol * 0.4), 0, col, -1, 180, 360)
            fringe_y = top + fh * 0.45 + p["fringe"] * 8
            _poly(img, [(cx - fw - vol * 0.5, cy - fh * 0.35), (cx - fw * 0.5, fringe_y + 4 * p["part"]),
                        (cx + fw * p["part"], fringe_y - 6), (cx + fw * 0.5, fringe_y - 4 * p["part"]),
                        (cx + fw + vol * 0.5, cy - fh * 0.35), (cx, top - vol)], col, fill=True)
    else:
        _ell(face, (cx, top + 6), (fw * 0.6, 3), 0, _col(p["skin"] * 1.08))

    # brows
    brow_col = _col(p["hair"] * 0.7)
    ey = fy + p["eye_y"]
    for side in (-1, 1):
        bx = fx + side * p["eye_dx"]
        by = ey - p["brow_gap"] - n["brow_raise"]
        half = p["brow_len"] / 2
        # inner end (towards the nose) and outer end, mirrored between the two sides
        pts = [(bx - side * half, by + p["brow_tilt"] * 0.5), (bx, by - p["brow_arch"]),
               (bx + side * half, by - p["brow_tilt"] * 0.5)]
        _poly(face, pts, brow_col, thick=p["brow_thick"] * 0.8)

    # eyes: white, iris, lid line; openness is the expression/blink nuisance
    for side in (-1, 1):
        ex = fx + side * p["eye_dx"]
        eh = max(0.5, p["eye_h"] * n["eye_open"])
        ang = side * p["eye_tilt"]
        _ell(face, (ex, ey), (p["eye_w"], eh), ang, (235, 235, 235))
        if n["eye_open"] > 0.3:
            _ell(face, (ex + turn * 0.3, ey), (p["iris_r"], min(p["iris_r"], eh)), 0, _col(p["iris"]))
            _ell(face, (ex + turn * 0.3, ey), (0.8, 0.8), 0, (10, 10, 10))
        _ell(face, (ex, ey), (p["eye_w"], eh), ang, _col(p["skin"] * 0.45), 0.6, 180, 360)

    # nose
    nx, ny = fx + turn * 0.6, ey + 3
    ncol = _col(p["skin"] * 0.6)
    if p["nose_style"] == 0:
        _poly(face, [(nx, ny), (nx - p["nose_w"] * 0.3, ny + p["nose_len"]), (nx + p["nose_w"] * 0.5, ny + p["nose_len"])], ncol, thick=0.8)
    elif p["nose_style"] == 1:
        _poly(face, [(nx - p["nose_w"] * 0.6, ny + p["nose_len"] - 2), (nx, ny + p["nose_len"] + 1), (nx + p["nose_w"] * 0.6, ny + p["nose_len"] - 2)], ncol, thick=0.8)
        _poly(face, [(nx - 1, ny), (nx - 1.5, ny + p["nose_len"] * 0.7)], ncol, thick=0.6)
    else:
        for side in (-1, 1):
            _ell(face, (nx + side * p["nose_w"] * 0.4, ny + p["nose_len"]), (1.3, 0.9), 0, ncol)
        _ell(face, (nx, ny + p["nose_len"] - 1), (p["nose_w"] * 0.6, 2.5), 0, ncol, 0.6, 0, 180)

    # facial hair
    my = ey + p["mouth_y"]
    if p["beard"] in (1, 3):
        _ell(face, (fx, my - 3), (p["mouth_w"] + 2, 2.2), 0, _col(p["hair"]), -1, 180, 360)
    if p["beard"] in (2, 3):
        _ell(face, (cx + turn * 0.5, cy + p["jaw_drop"] + 4), (fw * p["jaw_w"] * 0.85, fh * 0.45), 0, _col(p["hair"]), -1, 0, 180)

    # mouth: width and lips are identity; smile and opening are expression
    mw = p["mouth_w"] * (1 + 0.12 * n["smile"])
    curve = 3.5 * n["smile"]
    lip = _col(p["skin"] * p["lip_col"] + np.array([0, 0, 35]))
    if n["open"] > 0.2:
        _ell(face, (fx, my + 1), (mw * 0.8, 1 + 3 * n["open"]), 0, (40, 30, 60))
    pts = [(fx - mw, my - curve * 0.4), (fx - mw * 0.5, my + curve * 0.5), (fx, my + curve * 0.7),
           (fx + mw * 0.5, my + curve * 0.5), (fx + mw, my - curve * 0.4)]
    _poly(face, pts, lip, thick=p["lip"])

    # mole
    if p["mole"] is not None:
        _ell(face, (fx + p["mole"][0] * fw * 0.8, cy + p["mole"][1] * fh * 0.7), (1.2, 1.2), 0, _col(p["skin"] * 0.35))

    # glasses
    if p["glasses"] >= 0:
        gcol = _col(p["glasses_col"])
        gw = p["eye_w"] + 3
        for side in (-1, 1):
            gx = fx + side * p["eye_dx"]
            if p["glasses"] == 0:
                _ell(face, (gx, ey), (gw, gw * 0.8), 0, gcol, 1.0)
            elif p["glasses"] == 1:
                _poly(face, [(gx - gw, ey - 4), (gx + gw, ey - 4), (gx + gw, ey + 4), (gx - gw, ey + 4)], gcol, closed=True, thick=1.0)
            else:
                _poly(face, [(gx - gw, ey - 3), (gx + gw, ey - 3), (gx + gw * 0.8, ey + 5), (gx - gw * 0.8, ey + 5)], gcol, closed=True, thick=1.6)
        _poly(face, [(fx - p["eye_dx"] + gw, ey - 1), (fx + p["eye_dx"] - gw, ey - 1)], gcol, thick=1.0)
    return face, mask


# pixel coordinates in [0, 1), shared by the background gradient and the lighting ramp
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE


def _background(n):
    """Float32 BGR background: a two-colour gradient plus a few random lines and discs."""
    s = IMAGE_SIZE
    t = np.clip(np.float32(math.cos(n["bg_angle"])) * (_XX - 0.5) + np.float32(math.sin(n["bg_angle"])) * (_YY - 0.5)
                + np.float32(0.5), 0, 1)
    a, b = n["bg_a"].astype(np.float32), n["bg_b"].astype(np.float32)
    bg = (a + t[..., None] * (b - a)).astype(np.uint8)
    r = np.random.default_rng(n["clutter_rng"])
    for _ in range(n["clutter"]):
        col = tuple(int(v) for v in r.integers(0, 256, 3))
        if r.random() < 0.5:
            cv2.line(bg, tuple(int(v) for v in r.integers(0, s, 2)), tuple(int(v) for v in r.integers(0, s, 2)), col,
                     int(r.integers(1, 5)), cv2.LINE_AA)
        else:
            cv2.circle(bg, tuple(int(v) for v in r.integers(0, s, 2)), int(r.integers(4, 25)), col, -1, cv2.LINE_AA)
    return bg.astype(np.float32)


def render(p, n):
    """One 112x112 BGR uint8 photo of identity `p` under nuisance `n`."""
    s = IMAGE_SIZE
    face, mask = _draw_face(p, n)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), n["angle"], n["scale"])
    m[:, 2] += n["shift"]
    face = cv2.warpAffine(face, m, (s, s), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)).astype(np.float32)
    alpha = cv2.warpAffine(mask, m, (s, s), flags=cv2.INTER_LINEAR, borderValue=0).astype(np.float32)[..., None]
    bg = _background(n)
    img = bg + (face - bg) * (alpha * np.float32(1 / 255.0))
    # lighting: overall strength, a colour cast and a directional ramp (all float32: this is the hot loop)
    k = np.float32(2 * n["light_strength"])
    ramp = 1 + k * (np.float32(math.cos(n["light_angle"])) * (_XX - 0.5) + np.float32(math.sin(n["light_angle"])) * (_YY - 0.5))
    img *= ramp[..., None] * (n["gain"] * n["cast"]).astype(np.float32)
    if n["blur"] > 0:
        img = cv2.GaussianBlur(img, (0, 0), n["blur"])
    if n["noise"] > 0:
        img += np.random.default_rng(n["clutter_rng"] + 1).standard_normal(img.shape, dtype=np.float32) * np.float32(n["noise"])
    img += np.float32(0.5)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def encode(img, image_format):
    if image_format == "png":
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_OPTIMIZE, 0,
                                             cv2.IMWRITE_JPEG_PROGRESSIVE, 0])
    if not ok:
        raise RuntimeError("OpenCV could not encode an image")
    return buf.tobytes()


# --------------------------------------------------------------------------- dataset layout
def _identity_folder(split, index):
    return f"{index:05d}" if split == TRAIN else f"p{index:05d}"


def _render_identities(task):
    """Worker: draw and write every image of a range of identities; returns the image count."""
    seed, split, start, stop, per_identity, images_dir, image_format = task
    cv2.setNumThreads(1)
    count = 0
    for index in range(start, stop):
        p = identity_params(seed, split, index)
        folder = os.path.join(images_dir, _identity_folder(split, index))
        os.makedirs(folder, exist_ok=True)
        for k in range(per_identity):
            data = encode(render(p, nuisance_params(seed, split, index, k)), image_format)
            with open(os.path.join(folder, f"{k:02d}.{image_format}"), "wb") as f:
                f.write(data)
            count += 1
    return count


def make_pairs(num_identities, per_identity, num_pairs, seed):
    """Balanced verification pairs [(identity a, image a, identity b, image b, label)], no repeats.

    Same and different pairs alternate, so every block of the file (each of the 10 folds of the
    verification protocol, which splits in file order) holds both kinds in equal numbers.
    """
    if num_pairs % 2:
        raise DatasetError(f"--val-pairs {num_pairs} must be even (half same-person, half different-person pairs)")
    half = num_pairs // 2
    max_same = num_identities * per_identity * (per_identity - 1) // 2
    max_diff = num_identities * (num_identities - 1) // 2 * per_identity * per_identity
    if half > max_same or half > max_diff:
        raise DatasetError(
            f"{num_pairs} balanced pairs need {half} same-person and {half} different-person pairs, but "
            f"{num_identities} val identities x {per_identity} images allow only {max_same} same and {max_diff} "
            "different pairs: lower --val-pairs or raise --val-identities / --images-per-identity")
    r = np.random.default_rng([seed, PAIRS])
    same, diff, seen = [], [], set()
    while len(same) < half:
        i = int(r.integers(num_identities))
        a, b = sorted(int(v) for v in r.choice(per_identity, 2, replace=False))
        if (i, a, i, b) not in seen:
            seen.add((i, a, i, b))
            same.append((i, a, i, b, 1))
    while len(diff) < half:
        i, j = sorted(int(v) for v in r.choice(num_identities, 2, replace=False))
        a, b = int(r.integers(per_identity)), int(r.integers(per_identity))
        if (i, a, j, b) not in seen:
            seen.add((i, a, j, b))
            diff.append((i, a, j, b, 0))
    return [pair for two in zip(same, diff) for pair in two]


def _build(out_dir, train_identities, images_per_identity, val_identities, val_pairs, seed, workers, image_format, log):
    tasks = []
    chunk = 25
    for split, count in ((TRAIN, train_identities), (VAL, val_identities)):
        images_dir = os.path.join(out_dir, "train" if split == TRAIN else "val", "images")
        for start in range(0, count, chunk):
            tasks.append((seed, split, start, min(count, start + chunk), images_per_identity, images_dir, image_format))
    total = (train_identities + val_identities) * images_per_identity
    pairs = make_pairs(val_identities, images_per_identity, val_pairs, seed) if val_pairs else []
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    progress = Progress(total, desc="demo faces", unit="img", every_seconds=10.0) if total > 5000 else None
    if workers == 1:
        results = map(_render_identities, tasks)
        pool = None
    else:
        # spawn, not fork: a process that has run OpenCV or Paddle holds thread pools that do
        # not survive fork, and a forked worker touching them hangs (seen inside the recognize
        # runner). A fresh interpreter per worker costs well under a second.
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(workers)
        results = pool.imap_unordered(_render_identities, tasks)
    try:
        for n in results:
            if progress:
                progress.update(n)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if progress:
        progress.close()

    lines = ["# <image path relative to train/> <identity id>   (synthetic demo faces, datasets/demo.py)"]
    for index in range(train_identities):
        for k in range(images_per_identity):
            lines.append(f"images/{_identity_folder(TRAIN, index)}/{k:02d}.{image_format} {index}")
    with open(os.path.join(out_dir, "train", "label.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.makedirs(os.path.join(out_dir, "val"), exist_ok=True)
    lines = ["# <image a> <image b> <1 same person | 0 different>   (synthetic demo faces, datasets/demo.py)"]
    for i, a, j, b, label in pairs:
        lines.append(f"images/{_identity_folder(VAL, i)}/{a:02d}.{image_format} "
                     f"images/{_identity_folder(VAL, j)}/{b:02d}.{image_format} {label}")
    with open(os.path.join(out_dir, "val", "pair_label.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    info = dict(generator="datasets/demo.py", seed=seed, train_identities=train_identities,
                images_per_identity=images_per_identity, val_identities=val_identities, val_pairs=len(pairs),
                image_size=IMAGE_SIZE, image_format=image_format)
    with open(os.path.join(out_dir, "demo_info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return info


def generate_demo(out_dir, train_identities=200, images_per_identity=8, val_identities=50, val_pairs=600, seed=0,
                  workers=None, image_format="jpg", overwrite=False, log=None):
    """Write a synthetic face dataset to `out_dir` (train/label.txt, val/pair_label.txt, images).

    Built in a temporary folder next to `out_dir` and renamed into place, so an interrupted run
    leaves nothing half-written. Returns the summary also saved as demo_info.json.
    """
    if image_format not in ("jpg", "png"):
        raise DatasetError(f"image format '{image_format}' is not jpg or png")
    for name, value, low in (("train identities", train_identities, 1), ("images per identity", images_per_identity, 2),
                             ("val identities", val_identities, 0), ("val pairs", val_pairs, 0)):
        if int(value) < low:
            raise DatasetError(f"{name} must be at least {low}, got {value}")
    if val_pairs and val_identities < 2:
        raise DatasetError("validation pairs need at least 2 val identities (--val-identities)")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise DatasetError(f"'{out_dir}' already exists and is not empty: choose a new folder or pass --overwrite")
    tmp = make_temp_dir(out_dir)
    start = time.perf_counter()
    try:
        info = _build(tmp, int(train_identities), int(images_per_identity), int(val_identities), int(val_pairs),
                      int(seed), workers, image_format, log)
        complete = os.path.join(out_dir, "train", "label.txt")
        if os.path.exists(out_dir) and not overwrite and os.path.isfile(complete):
            # another process finished the same dataset while this one was drawing: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            try:
                move_dir_into_place(tmp, out_dir)
            except OSError:
                # another process finished the same dataset first: keep theirs
                if os.path.isfile(os.path.join(out_dir, "train", "label.txt")):
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info["seconds"] = round(time.perf_counter() - start, 2)
    return info


def _real(path):
    return os.path.normcase(os.path.realpath(os.path.abspath(os.path.expanduser(str(path)))))


def is_demo_path(path):
    """Whether `path` is the built-in demo dataset's folder (./dataset/face_demo) or inside it."""
    if path is None or str(path).strip() == "":
        return False
    real, root = _real(path), _real(DEMO_DIR)
    return real == root or real.startswith(root + os.sep)


def ensure_demo(path):
    """Generate the demo dataset when `path` lies inside it and it is not there yet (so the default
    config runs out of the box); any other path is left for the caller to check and report."""
    if is_demo_path(path) and not os.path.isfile(os.path.join(os.path.abspath(DEMO_DIR), "train", "label.txt")):
        resolve_dataset_dir(os.path.abspath(DEMO_DIR))


def resolve_dataset_dir(path):
    """Absolute dataset folder for `path`; generates the built-in demo on first use.

    Only the demo location (./dataset/face_demo) is generated; any other missing folder is
    an error, so a typo in Global.dataset_dir never silently trains on synthetic faces.
    """
    if path is None or str(path).strip() == "":
        raise DatasetError("Global.dataset_dir is empty: pass -o Global.dataset_dir=DIR (a folder with train/ and val/)")
    abs_path = os.path.abspath(os.path.expanduser(str(path)))
    if _real(abs_path) == _real(DEMO_DIR) and not os.path.isfile(os.path.join(abs_path, "train", "label.txt")):
        log = get_logger()
        d = DEFAULTS
        log.info(f"Demo dataset not found: generating synthetic faces in {abs_path} "
                 f"({d['train_identities']} train identities x {d['images_per_identity']} images, "
                 f"{d['val_identities']} val identities, {d['val_pairs']} pairs; datasets/demo.py) ...")
        # an incomplete leftover (no label file) is replaced; a dataset another process
        # finishes meanwhile is kept
        info = generate_demo(abs_path, overwrite=os.path.exists(abs_path), **d)
        log.info(f"Demo dataset ready in {info['seconds']:.1f} s.")
        return abs_path
    if not os.path.isdir(abs_path):
        raise DatasetError(f"dataset folder '{path}' does not exist ({abs_path}): pass -o Global.dataset_dir=DIR "
                           "pointing at a folder with train/label.txt and val/pair_label.txt, or leave the default "
                           "./dataset/face_demo (run from the repo root) to use the built-in demo")
    return abs_path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m datasets.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to create (train/ and val/ inside)")
    parser.add_argument("--train-identities", type=int, default=DEFAULTS["train_identities"])
    parser.add_argument("--images-per-identity", type=int, default=DEFAULTS["images_per_identity"])
    parser.add_argument("--val-identities", type=int, default=DEFAULTS["val_identities"])
    parser.add_argument("--val-pairs", type=int, default=DEFAULTS["val_pairs"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image files (default jpg, quality 95)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    args = parser.parse_args(argv)
    try:
        info = generate_demo(args.out_dir, args.train_identities, args.images_per_identity, args.val_identities,
                             args.val_pairs, args.seed, args.workers, args.format, args.overwrite)
    except DatasetError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    n = (info["train_identities"] + info["val_identities"]) * info["images_per_identity"]
    print(f"Wrote {n} images ({info['train_identities']} train identities x {info['images_per_identity']}, "
          f"{info['val_identities']} val identities, {info['val_pairs']} pairs) to {os.path.abspath(args.out_dir)} "
          f"in {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
