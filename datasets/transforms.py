"""Image reading and the model's pre-processing, shared by train, evaluate and predict.

Pre-processing follows the reference: bilinear resize to 112x112 (aspect not kept), BGR -> RGB,
(x / 255 - 0.5) / 0.5, HWC -> CHW, float32.
"""
import io
import os

import cv2
import numpy as np

from datasets.image_headers import HeaderError, image_header, jpeg_orientation, stream_header

IMAGE_SIZE = 112
# Largest image decoded by default, in pixels (Global.max_image_pixels). Decoding needs ~3 bytes a
# pixel: a 1 MB PNG of 20000 x 20000 would take 1.2 GB; a face photo is far below 50 MP (an
# 8000 x 6000 camera frame is 48 MP).
DEFAULT_MAX_PIXELS = 50_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm")


class ImageReadError(Exception):
    """An image file that is missing or does not decode."""


def list_images(folder, extensions=IMAGE_EXTENSIONS):
    """Image files (or files of other `extensions`) under `folder`, recursively, sorted by path;
    hidden files and folders skipped.

    The one folder walk behind predict inputs, gallery folders and the folder importer.
    """
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in files
                     if f.lower().endswith(extensions) and not f.startswith("."))
    return sorted(found)


def to_bgr(img):
    """Any decoded image (grey, BGR, BGRA; uint8 or uint16) as 3-channel uint8 BGR."""
    if img is None:
        raise ImageReadError("no image data")
    if img.dtype != np.uint8:
        # 16-bit PNG/PGM: scale down instead of wrapping around
        img = (img.astype(np.float32) * (255.0 / max(1.0, float(np.iinfo(img.dtype).max)))).astype(np.uint8) \
            if np.issubdtype(img.dtype, np.integer) else np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise ImageReadError(f"unsupported image shape {img.shape}")


def check_pixel_limit(path, width, height, limit=DEFAULT_MAX_PIXELS):
    """ImageReadError when an image is larger than the pixel limit (read from its header)."""
    if width * height > limit:
        raise ImageReadError(f"{path} is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
                             f"{limit / 1e6:g} (Global.max_image_pixels): it would take about "
                             f"{width * height * 3 / 2**30:.1f} GB to decode. Resize it, or raise the limit")


def upright(img, orientation):
    """A decoded image turned the way its EXIF Orientation (1-8) says it is seen: OpenCV's
    IMREAD_UNCHANGED, which keeps 16-bit and alpha, leaves the stored pixels as they are."""
    if orientation in (5, 6, 7, 8):  # the stored image is lying on its side
        img = np.ascontiguousarray(np.swapaxes(img, 0, 1))
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]  # what remains after the transpose
    if orientation == 2:
        return np.ascontiguousarray(img[:, ::-1])
    if orientation == 3:
        return np.ascontiguousarray(img[::-1, ::-1])
    if orientation == 4:
        return np.ascontiguousarray(img[::-1])
    return img


def read_image(path, max_pixels=DEFAULT_MAX_PIXELS):
    """Decode `path` as 3-channel BGR uint8; raises ImageReadError naming the path. The header is
    read first: an image above `max_pixels` is refused without decoding it."""
    if not os.path.isfile(path):
        raise ImageReadError(f"image file not found: {path}")
    try:
        _, width, height, _ = image_header(path)
    except HeaderError:
        width = height = 0  # not parsed here, or damaged: imdecode below has the last word
    if width and height:
        check_pixel_limit(path, width, height, max_pixels)
    data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode also handles non-ASCII paths
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ImageReadError(f"cannot decode image: {path} (not an image, or a truncated/corrupt file)")
    return to_bgr(upright(img, jpeg_orientation(data[:65536].tobytes())))


def decode_image_bytes(data, name="image", max_pixels=DEFAULT_MAX_PIXELS):
    """Decode an image held in memory (an upload) as BGR uint8, with read_image's checks: the
    header first (pixel limit, truncation), then cv2.imdecode. ImageReadError names `name`."""
    if not data:
        raise ImageReadError(f"{name} is empty (0 bytes)")
    try:
        _, width, height, _ = stream_header(io.BytesIO(data))
    except HeaderError as e:
        if "truncated" in str(e):
            raise ImageReadError(f"{name}: {e}") from None
        width = height = 0
    if width and height:
        check_pixel_limit(name, width, height, max_pixels)
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"{name} is not an image (cv2 cannot decode it: not JPEG/PNG/BMP/..., or corrupt)")
    return to_bgr(upright(img, jpeg_orientation(data[:65536])))


def preprocess(img_bgr, size=IMAGE_SIZE):
    """BGR uint8 HWC -> normalised RGB float32 CHW, ready for the model."""
    img = to_bgr(img_bgr)
    if img.shape[0] != size or img.shape[1] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    img = img[:, :, ::-1].astype(np.float32)
    img = (img / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def hflip_chw(batch):
    """Horizontal flip of a CHW image or an NCHW batch (the last axis is width)."""
    return np.ascontiguousarray(batch[..., ::-1])
