"""Face alignment: the one place where a detected face becomes the 112x112 picture a model embeds.

    chip = align_face(img_bgr, landmarks)            # 5 points -> insightface's 112x112 template
    chip = face_chip(img_bgr, face, margin=0.2)      # aligned; a square crop when there are no landmarks
    face = main_face(faces, img_bgr.shape)           # the face a photo is "of"

align_face estimates a similarity transform (rotation, uniform scale, translation:
cv2.estimateAffinePartial2D with LMEDS) from the 5 landmarks to ARCFACE_TEMPLATE and warps with
cv2.warpAffine, as insightface does for the MS1M-trained models. Landmarks are in template order:
image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
"""
import cv2
import numpy as np

# insightface's 5-point template for 112x112 crops, in image order (the subject's right eye,
# which appears on the image's left, comes first).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def similarity_matrix(landmarks, size=112):
    """2x3 similarity transform taking the 5 landmarks onto the template scaled to `size`, or None
    when the points are degenerate."""
    src = np.asarray(landmarks, np.float32).reshape(-1, 2)
    if src.shape != (5, 2) or not np.isfinite(src).all():
        raise ValueError(f"align_face needs 5 (x, y) landmarks, got an array of shape {np.shape(landmarks)}")
    dst = ARCFACE_TEMPLATE * (size / 112.0)
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    return m


def align_face(img_bgr, landmarks, size=112):
    """The face warped so its 5 landmarks land on the 112x112 template (size x size for other sizes).
    Returns None when no transform can be estimated (coincident points)."""
    m = similarity_matrix(landmarks, size)
    if m is None:
        return None
    return cv2.warpAffine(img_bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crop_square(img_bgr, box, margin=0.2, size=112):
    """Square crop around `box` [x1, y1, x2, y2] enlarged by `margin` (fraction of the box side) on
    every side, resized to size x size; parts outside the image repeat the edge pixels."""
    x1, y1, x2, y2 = [float(v) for v in box]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * (1 + 2 * float(margin))
    scale = size / max(side, 1e-6)
    m = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]], np.float64)
    return cv2.warpAffine(img_bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def face_chip(img_bgr, face, margin=0.2, size=112):
    """The picture to embed for a detected face (anything with .box, .landmarks and .extra):
    aligned on its landmarks; a square crop with `margin` when it has none; a whole-image face
    (detection off) is returned as it is (the model's pre-processing resizes it)."""
    if face.extra.get("whole_image"):
        return img_bgr
    if face.landmarks is not None:
        chip = align_face(img_bgr, face.landmarks, size)
        if chip is not None:
            return chip
    return crop_square(img_bgr, face.box, margin, size)


def main_face(faces, image_shape=None):
    """The face a photo is of: the largest box nearest the image centre, i.e. the highest box area
    minus twice the squared distance of the box centre from the image centre (both in pixels^2),
    then the highest score. None for no faces.

    Why not the detector's score first: every clear face scores about the same, so a sharp
    background face beat the photo's subject in 1.8 % of the lfw_dev photos (95 of 5,373; 94 of
    the 875 with several faces). Area minus twice the squared offset picks the central face in
    5,372 of 5,373 (all 875 with several faces; benchmarks/lfw_dev.py --detect-only). Without
    image_shape the largest face wins."""
    if not faces:
        return None
    cy, cx = (image_shape[0] / 2.0, image_shape[1] / 2.0) if image_shape is not None else (0.0, 0.0)

    def key(f):
        x1, y1, x2, y2 = (float(v) for v in f.box)
        offset = ((x1 + x2) / 2 - cx) ** 2 + ((y1 + y2) / 2 - cy) ** 2 if image_shape is not None else 0.0
        return ((x2 - x1) * (y2 - y1) - 2.0 * offset, float(f.score))

    return max(faces, key=key)
