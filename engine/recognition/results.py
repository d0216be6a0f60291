"""The face recognition pipeline's result object: what it holds, how it prints, saves and draws, with
PaddleX's interface (engine.inference.results.PaddleXResult, plus `img` and `save_to_img`).
"""
import os

import cv2

from engine.gallery.faiss_index import UNKNOWN_LABEL
from engine.inference.results import PaddleXResult
from foundation.atomic_io import atomic_write_bytes
from foundation.errors import UserError

# dot colours (BGR) of the 5 landmarks: image-left eye, image-right eye, nose, mouth corners
LANDMARK_COLORS = ((255, 255, 0), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 0, 255))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class FaceRecognitionResult(PaddleXResult):
    """One image's face recognition result, PaddleX's fields: {"input_path", "boxes": [{"labels",
    "rec_scores", "det_score", "coordinate", "label", "score", "ids", "landmarks"?}]}
    (see engine.recognition.pipeline for what each holds)."""

    def __init__(self, input_path, boxes, name, image=None):
        super().__init__({"input_path": input_path, "boxes": boxes}, name)
        self._image = image  # BGR image kept for save_to_img / img

    @property
    def img(self):
        """PaddleX's res.img: {"res": PIL image (RGB) with boxes, labels and scores drawn}."""
        from PIL import Image

        return {"res": Image.fromarray(self.draw()[:, :, ::-1])}

    def __str__(self):
        faces = ", ".join(f"{b['label']} ({b['score']:.3f})" if b["score"] is not None else b["label"]
                          for b in self["boxes"]) or "no face"
        return f"{self['input_path'] or self.name}: {faces}"

    def draw(self, draw_landmarks=False):
        """The image with each face box, its top-1 label and score (and its 5 landmarks with
        draw_landmarks). A face that is the whole image (detection off) gets no box, only its label
        at the top-left."""
        if self._image is None:
            raise UserError(f"{self.name}: the image is no longer held; predict(..., keep_images=True)")
        img = self._image.copy()
        h, w = img.shape[:2]
        thick = max(1, int(round(max(h, w) / 300)))
        for f in self["boxes"]:
            x1, y1, x2, y2 = [int(round(v)) for v in f["coordinate"]]
            whole = x1 <= 0 and y1 <= 0 and x2 >= w and y2 >= h
            known = f["label"] != UNKNOWN_LABEL
            color = (40, 200, 40) if known else (40, 40, 230)
            if not whole:
                cv2.rectangle(img, (x1, y1), (x2, y2), color, thick)
            text = f["label"] if f["score"] is None else f"{f['label']} {f['score']:.2f}"
            scale = max(0.35, min(1.2, (x2 - x1) / 160))
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            if tw + 4 > w:  # a small image: shrink the text to its width
                scale *= (w - 4) / float(tw + 4)
                (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            tx = min(max(0, x1), max(0, w - tw - 4))
            if whole or (y1 - th - 6 < 0 and y2 + th + base + 4 > h):
                ty = max(0, y1) + th + 3  # inside the box, at its top
            elif y1 - th - 6 >= 0:
                ty = y1 - 4
            else:
                ty = y2 + th + 4
            cv2.rectangle(img, (tx, ty - th - 3), (tx + tw + 4, ty + base - 1), color, -1)
            cv2.putText(img, text, (tx + 2, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
            if draw_landmarks and f.get("landmarks"):
                radius = max(1, int(round((x2 - x1) / 60)))
                for (px, py), dot in zip(f["landmarks"], LANDMARK_COLORS):
                    cv2.circle(img, (int(round(px)), int(round(py))), radius, dot, -1, cv2.LINE_AA)
        return img

    def save_to_img(self, save_path, draw_landmarks=False):
        """A path ending in an image suffix is written as is; any other is a folder that gets
        <name>_res<suffix of the input image, else .png>, as PaddleX names it. Atomic; returns the path."""
        save_path = os.fspath(save_path)
        if save_path.lower().endswith(IMAGE_SUFFIXES) and not os.path.isdir(save_path):
            path = save_path
        else:
            suffix = os.path.splitext(self["input_path"] or "")[1].lower()
            path = os.path.join(save_path, f"{self.name}_res{suffix if suffix in IMAGE_SUFFIXES else '.png'}")
        ok, data = cv2.imencode(os.path.splitext(path)[1], self.draw(draw_landmarks))
        if not ok:
            raise UserError(f"cannot encode the annotated image for {path}")
        atomic_write_bytes(path, data.tobytes())
        return path
