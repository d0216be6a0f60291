"""Test and benchmark clips built from face pictures: people who appear in turn, move, zoom, leave.

    script = [Appearance("alice", 0.0, 3.0, (40, 80, 180), (300, 60, 240)), ...]
    make_clip("clip.mp4", script, {"alice": face_bgr, ...}, size=(640, 360), fps=25)

An Appearance puts a person's face picture on the frame from `start` to `end` seconds, its
top-left corner and side (x, y, side) moving linearly from `first` to `last`; the ground truth
of a clip is its script. Faces drawn later cover earlier ones, so a script whose faces overlap
has occlusions. The background is a fixed noise texture (a blank frame is too easy for a detector).
"""
import os
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Appearance:
    person: str
    start: float
    end: float
    first: tuple  # (x, y, side) at `start`
    last: tuple  # (x, y, side) at `end`

    def place(self, t):
        """(x, y, side) at time t, or None when the face is not on screen."""
        if not self.start <= t < self.end:
            return None
        u = (t - self.start) / max(self.end - self.start, 1e-9)
        return tuple(int(round(a + u * (b - a))) for a, b in zip(self.first, self.last))


def background(size, seed=0):
    w, h = size
    rng = np.random.default_rng(seed)
    noise = cv2.resize(rng.integers(60, 200, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(noise, (0, 0), 3)


def render(script, faces, t, size, bg):
    frame = bg.copy()
    w, h = size
    for a in script:
        place = a.place(t)
        if place is None:
            continue
        x, y, side = place
        x, y = max(0, min(x, w - side)), max(0, min(y, h - side))
        frame[y:y + side, x:x + side] = cv2.resize(faces[a.person], (side, side), interpolation=cv2.INTER_AREA)
    return frame


def make_clip(path, script, faces, size=(640, 360), fps=25.0, seconds=None, fourcc="mp4v", seed=0):
    """Write the clip; returns its frame count. `seconds` defaults to the script's last end."""
    seconds = seconds if seconds is not None else max(a.end for a in script)
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), tuple(size))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with {fourcc}")
    bg = background(size, seed)
    frames = int(round(seconds * fps))
    try:
        for f in range(frames):
            writer.write(render(script, faces, f / fps, size, bg))
    finally:
        writer.release()
    return frames


def tinted(img, gains):
    """A face picture with its B, G, R channels scaled: a distinct 'person' from one demo face."""
    return np.clip(img.astype(np.float32) * np.asarray(gains, np.float32), 0, 255).astype(np.uint8)


def demo_people(demo_dir):
    """{name: BGR face}: three demo faces YuNet finds well at 170-230 px (score 0.72+) that even an
    untrained network tells apart (cosine 0.78 at most between them, 0.95+ for one face re-scaled);
    one is tinted, which moves a random network's features most."""
    from datasets.demo import ensure_demo

    ensure_demo(demo_dir)
    chosen = (("alice", "p00020/02", (1.0, 1.0, 1.0)), ("bob", "p00030/00", (1.3, 0.8, 0.7)),
              ("carol", "p00037/00", (1.0, 1.0, 1.0)))
    out = {}
    for name, rel, gains in chosen:
        img = cv2.imread(os.path.join(demo_dir, "val", "images", rel + ".jpg"))
        if img is None:
            raise FileNotFoundError(f"demo face {rel} missing under {demo_dir}")
        out[name] = tinted(img, gains)
    return out


# people in turn, moving and zooming, with gaps; no two faces overlap (640x360 frames)
DEMO_SCRIPT = (
    Appearance("alice", 0.0, 3.0, (30, 70, 180), (150, 50, 230)),
    Appearance("bob", 1.0, 5.0, (420, 100, 180), (400, 120, 200)),
    Appearance("alice", 5.5, 8.0, (40, 90, 170), (120, 80, 220)),
    Appearance("carol", 6.0, 9.0, (400, 60, 210), (420, 80, 180)),
)


def write_y4m(path, script, faces, size=(640, 360), fps=10, seconds=None, seed=0):
    """The clip as a YUV4MPEG2 file (uncompressed I420): what Chromium's fake camera plays
    (--use-file-for-fake-video-capture). Returns its frame count."""
    seconds = seconds if seconds is not None else max(a.end for a in script)
    w, h = size
    bg = background(size, seed)
    frames = int(round(seconds * fps))
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{int(fps)}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(render(script, faces, i / fps, size, bg), cv2.COLOR_BGR2YUV_I420).tobytes())
    return frames
