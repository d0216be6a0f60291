"""insightface verification `.bin` files (lfw.bin, cfp_fp.bin, agedb_30.bin, ...).

Format: a pickle of `(bins, issame)`: `bins` a list of encoded images (JPEG/PNG bytes),
`issame` one boolean per pair; pair i is images 2i and 2i+1. The files were written by
Python 2 (so they are read with `encoding="bytes"`, as insightface does) and some tools store
`issame` as a numpy bool array.

A pickle can name any importable callable, so loading an untrusted file with `pickle.load`
can run code: these files are read with foundation.safe_pickle, which admits only what such a
file needs (numpy arrays of non-object dtypes, latin-1 `_codecs.encode` that Python 3 uses for
bytes in old protocols); anything else stops the load before it is called.
"""
import os
import pickle

import cv2
import numpy as np

from datasets.transforms import ImageReadError, to_bgr
from foundation.atomic_io import atomic_write_bytes
from foundation.errors import DatasetError
from foundation.safe_pickle import RefusedGlobal, safe_loads


class UnsafePickleError(DatasetError):
    """A .bin file that asks the unpickler for something a verification file never holds."""


def read_bin(path):
    """(images: list of encoded image bytes, issame: bool array) of an insightface .bin file.

    Raises DatasetError naming the file when it is missing, not such a pickle, or unsafe.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"verification .bin file not found: {path} (check Evaluate.bin_paths)")
    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = safe_loads(data, encoding="bytes")  # written by Python 2, read as insightface does
    except RefusedGlobal as e:
        what = f"{e} is not allowed in a verification .bin file" if str(e).startswith("'") else str(e)
        raise UnsafePickleError(
            f"{path}: refused to load: {what}. insightface .bin files hold only image bytes and "
            "booleans; this file may have been crafted to run code. Use a .bin from a trusted source."
        ) from None
    except pickle.UnpicklingError as e:
        raise DatasetError(f"{path}: not a readable pickle ({e}); expected an insightface verification .bin") from None
    except Exception as e:  # noqa: BLE001 - a malformed pickle can fail in many ways
        raise DatasetError(f"{path}: not a readable pickle ({type(e).__name__}: {e}); "
                           "expected an insightface verification .bin (truncated download?)") from None
    return _validate(obj, path)


def _validate(obj, path):
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DatasetError(f"{path}: expected a pickled pair (images, issame), got {type(obj).__name__}")
    bins, issame = obj
    if isinstance(bins, np.ndarray):
        bins = list(bins)
    if not isinstance(bins, (list, tuple)):
        raise DatasetError(f"{path}: the image list is a {type(bins).__name__}, expected a list of encoded images")
    images = []
    for i, b in enumerate(bins):
        if isinstance(b, np.ndarray) and b.dtype == np.uint8 and b.ndim == 1:
            b = b.tobytes()
        if isinstance(b, bytearray):
            b = bytes(b)
        if not isinstance(b, bytes):
            raise DatasetError(f"{path}: image #{i} is a {type(b).__name__}, expected encoded image bytes")
        images.append(b)
    try:
        same = np.asarray(issame)
    except Exception:  # noqa: BLE001 - anything odd is reported the same way
        same = None
    if same is None or same.ndim != 1 or not (same.dtype == bool or np.isin(same, (0, 1)).all()):
        raise DatasetError(f"{path}: the same/different list must be one boolean per pair")
    same = same.astype(bool)
    if len(images) < 2 * len(same):
        raise DatasetError(f"{path}: {len(same)} pairs need {2 * len(same)} images, the file has {len(images)}")
    if len(same) == 0:
        raise DatasetError(f"{path}: the file holds no pairs")
    return images[: 2 * len(same)], same


def decode_image(data, where):
    """Encoded bytes -> BGR uint8 image; DatasetError naming `where` if it does not decode."""
    arr = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED) if arr.size else None
    if img is None:
        raise DatasetError(f"{where}: the encoded image does not decode (corrupt .bin file?)")
    try:
        return to_bgr(img)
    except ImageReadError as e:
        raise DatasetError(f"{where}: {e}") from None


def write_bin(path, images, issame, ext=".jpg"):
    """Write an insightface-style .bin: `images` are encoded bytes or BGR uint8 arrays, pairs interleaved."""
    issame = [bool(s) for s in issame]
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(issame)} pairs need {2 * len(issame)} images, got {len(images)}")
    bins = []
    for i, img in enumerate(images):
        if isinstance(img, (bytes, bytearray)):
            bins.append(bytes(img))
            continue
        ok, buf = cv2.imencode(ext, img)
        if not ok:
            raise ValueError(f"image #{i} could not be encoded as {ext}")
        bins.append(buf.tobytes())
    atomic_write_bytes(path, pickle.dumps((bins, issame), protocol=pickle.HIGHEST_PROTOCOL))
    return path
