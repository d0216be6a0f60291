"""The pipeline's work on one image — read, detect, align, embed — as plain functions of a detector
and a model. The pipeline runs them in its own process, and each worker process
(engine.recognition.workers) runs the same functions with its own detector and model, so both give
the same faces and the same features.
"""
import cv2
import numpy as np

from datasets.transforms import ImageReadError, read_image, to_bgr
from engine.evaluation.metrics import l2_normalize
from engine.inference.inputs import InputItem, load_item
from foundation.errors import UserError
from models.alignment import face_chip, main_face


def faces_in(detector, img_bgr, threshold, margin):
    """[(Face, aligned 112x112 crop)] of every face scoring at least `threshold`, best first."""
    return [(f, face_chip(img_bgr, f, margin)) for f in detector.detect(img_bgr) if f.score >= threshold]


def read_gallery_image(source, max_pixels):
    """The BGR image of a gallery source: a path, a numpy image or a function returning one.
    ImageReadError or ValueError when it cannot be read."""
    if callable(source):
        return source()
    if isinstance(source, np.ndarray):
        return to_bgr(source)
    return read_image(source, max_pixels)


def gallery_crop(detector, img_bgr, threshold, margin, input_size):
    """(crop, whole) of a gallery image: its main face aligned (models.alignment.main_face), or with
    no face found the whole image resized to the model's `input_size` (whole True)."""
    found = faces_in(detector, img_bgr, threshold, margin)
    if found:
        face = main_face([f for f, _ in found], img_bgr.shape)
        return next(c for f, c in found if f is face), False
    # a face crop already, most likely: at the model's input size now, as its pre-processing would
    # resize it, so a batch in waiting holds small crops, never whole photos
    return cv2.resize(to_bgr(img_bgr), input_size, interpolation=cv2.INTER_LINEAR), True


def embed_crops(model, crops, batch_size):
    """L2-normalised features [N, D] of BGR face crops, forwarded `batch_size` at a time."""
    out = np.zeros((len(crops), model.embedding_size), dtype=np.float32)
    for s in range(0, len(crops), batch_size):
        batch = np.stack([model.preprocess(c) for c in crops[s:s + batch_size]])
        out[s:s + len(batch)] = l2_normalize(model.predict(batch))
    return out


class Refused:
    """An input that could not be read: the pipeline skips it, or raises when it was named directly."""

    def __init__(self, message):
        self.message = message


class FaceStages:
    """One detector and one model with the settings the stages need: what the pipeline runs in its
    own process, and what each worker process runs, with the same methods and answers.
    Every answer is a plain value (picklable), or Refused for an input that cannot be read."""

    def __init__(self, detector, model, margin, max_image_pixels):
        self.detector, self.model = detector, model
        self.margin, self.max_image_pixels = float(margin), int(max_image_pixels)

    def faces(self, input_path, array, threshold, keep_image=True):
        """(the image, or None without keep_image; [(Face, crop)]) of one recognition input."""
        try:
            img = load_item(InputItem(input_path, "", array), self.max_image_pixels)
        except UserError as e:
            return Refused(str(e))
        return (img if keep_image else None), faces_in(self.detector, img, threshold, self.margin)

    def gallery_face(self, source, threshold):
        """(crop, whole) of one gallery image (see gallery_crop)."""
        try:
            img = read_gallery_image(source, self.max_image_pixels)
        except (ImageReadError, ValueError) as e:
            return Refused(str(e))
        return gallery_crop(self.detector, img, threshold, self.margin, self.model.preprocess.size)

    def embed(self, crops, batch_size):
        return embed_crops(self.model, crops, batch_size)

    def faces_embedded(self, inputs, threshold, batch_size, keep_images=True, keep_crops=True):
        """A block of recognition inputs [(input_path, array)] read, detected, aligned and embedded
        in one go: ([faces()'s answer per input], the features of all their faces in order). Without
        keep_crops the crops are None: a worker then sends back boxes, not pictures."""
        outcomes = [self.faces(path, array, threshold, keep_images) for path, array in inputs]
        crops = [c for o in outcomes if not isinstance(o, Refused) for _, c in o[1]]
        feats = self.embed(crops, batch_size)
        if not keep_crops:
            outcomes = [o if isinstance(o, Refused) else (o[0], [(f, None) for f, _ in o[1]]) for o in outcomes]
        return outcomes, feats

    def gallery_faces_embedded(self, sources, threshold, batch_size):
        """A block of gallery sources: ([Refused, or whole (bool) per source], the features of those read)."""
        outcomes = [self.gallery_face(source, threshold) for source in sources]
        feats = self.embed([o[0] for o in outcomes if not isinstance(o, Refused)], batch_size)
        return [o if isinstance(o, Refused) else o[1] for o in outcomes], feats
