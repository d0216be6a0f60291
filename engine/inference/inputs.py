"""Model inputs: what a user may pass as images, expanded once into items, and how each is loaded.

An input is an image path, a folder (searched recursively, sorted), an http(s) URL, a numpy BGR
array, or a list of these. Shared by predict, the recognition pipeline and the Python API. With
videos=True (the pipeline) a video file, a camera index or a stream URL is an input too, and the
videos in a folder are taken with its images (datasets.video reads them).
"""
import os
import tempfile
from collections import Counter

import numpy as np

from datasets.demo import ensure_demo
from datasets.transforms import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageReadError, list_images, read_image, to_bgr
from datasets.video import VIDEO_EXTENSIONS, camera_index, is_stream_url, is_video_path
from foundation.atomic_io import download_file, unique_name
from foundation.errors import UserError

ARRAY_PREFIX = "array_"


class InputItem:
    """One image to process: where it came from, the name its result files take, how to load it."""

    __slots__ = ("input_path", "name", "array", "explicit", "video")

    def __init__(self, input_path, name, array=None, explicit=True, video=False):
        self.input_path = input_path  # a camera's index for a camera
        self.name = name
        self.array = array
        self.explicit = explicit  # named by the user (errors stop the run) vs found in a folder (skipped)
        self.video = video  # a video file, camera or stream: datasets.video.open_video(input_path)


def is_expanded(inputs):
    """Whether `inputs` is already the [InputItem] that expand_inputs returns."""
    return isinstance(inputs, list) and bool(inputs) and all(isinstance(i, InputItem) for i in inputs)


def unique_names(items):
    """Give repeated result names a suffix (a/00.jpg and b/00.jpg -> 00, 00_2), in input order,
    so results saved into one folder never overwrite each other."""
    taken = set()
    for item in items:
        item.name = unique_name(item.name, taken)
    return items


def is_url(text):
    return str(text).lower().startswith(("http://", "https://"))


def download(url, timeout=30):
    """Fetch `url` into a temporary file; UserError (one line) when it cannot be reached."""
    suffix = os.path.splitext(url.split("?", 1)[0])[1][:5] or ".jpg"
    fd, tmp = tempfile.mkstemp(prefix="facefeat_url_", suffix=suffix)
    os.close(fd)
    try:
        download_file(url, tmp, timeout=timeout)
    except (OSError, ValueError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot download {url}: {reason} (no network? download the image and pass its path)") from None
    return tmp


def _video_item(value):
    """The InputItem of a camera index or a stream URL, or None."""
    camera = camera_index(value)
    if camera is not None and not (isinstance(value, str) and os.path.exists(value)):
        return InputItem(camera, f"camera_{camera}", video=True)
    if isinstance(value, str) and is_stream_url(value):
        return InputItem(value, os.path.splitext(os.path.basename(value.split("?", 1)[0]))[0] or "stream", video=True)
    return None


def expand_inputs(inputs, videos=False):
    """[InputItem] for a path, folder, URL, numpy array or a list of these, each with a result
    name of its own (with videos=True also video files, camera indexes and stream URLs). UserError
    on a missing path, an empty folder or an unsupported value, before any image is processed."""
    if isinstance(inputs, (str, os.PathLike, np.ndarray)) or (videos and isinstance(inputs, int)):
        inputs = [inputs]
    elif not isinstance(inputs, (list, tuple)):
        raise UserError(f"unsupported input type {type(inputs).__name__}: give an image path, a folder, a URL, "
                        "a numpy BGR image or a list of these")
    if len(inputs) == 0:
        raise UserError("no input given: pass an image path, a folder, a URL or a numpy image")
    items, array_count = [], 0
    inside = {}  # item position -> its name by the path inside its folder (sub/x.jpg -> sub_x)
    for value in inputs:
        if isinstance(value, np.ndarray):
            if value.ndim not in (2, 3) or value.size == 0:
                raise UserError(f"numpy input #{array_count} has shape {value.shape}: expected an HxW or HxWxC image")
            items.append(InputItem(None, f"{ARRAY_PREFIX}{array_count}", array=value))
            array_count += 1
            continue
        video = _video_item(value) if videos else None
        if video is not None:
            items.append(video)
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise UserError(f"unsupported input {type(value).__name__}: give image paths, folders, URLs or numpy images"
                            + (", video files, camera indexes or stream URLs" if videos else ""))
        text = os.fspath(value)
        if is_url(text):
            items.append(InputItem(text, os.path.splitext(os.path.basename(text.split("?", 1)[0]))[0] or "url"))
            continue
        if os.path.isdir(text):
            files = list_images(text, IMAGE_EXTENSIONS + (VIDEO_EXTENSIONS if videos else ()))
            if not files:
                raise UserError(f"input folder {text} holds no images ({', '.join(IMAGE_EXTENSIONS)}"
                                + (f") or videos ({', '.join(VIDEO_EXTENSIONS)}" if videos else "")
                                + ", searched recursively)")
            for f in files:
                items.append(InputItem(f, os.path.splitext(os.path.basename(f))[0], explicit=False,
                                       video=is_video_path(f)))
                inside[len(items) - 1] = os.path.splitext(os.path.relpath(f, text))[0].replace(os.sep, "_")
        elif os.path.isfile(text):
            items.append(InputItem(text, os.path.splitext(os.path.basename(text))[0], video=videos and is_video_path(text)))
        else:
            raise UserError(f"input {text} does not exist (give an image file, a folder of images or a URL)")
    # A result is named after its input's stem, as PaddleX names it; stems that repeat in one run
    # (a folder per person of 00.jpg, 01.jpg ...) take the path inside their folder instead.
    counts = Counter(item.name for item in items)
    for position, long_name in inside.items():
        if counts[items[position].name] > 1:
            items[position].name = long_name
    return unique_names(items)


def segments(items):
    """Consecutive image items as one list, each video item alone, in input order."""
    run = []
    for item in items:
        if item.video:
            if run:
                yield run
                run = []
            yield item
        else:
            run.append(item)
    if run:
        yield run


def configured_inputs(value, key="Predict.input", videos=False):
    """The InputItems of a config's input setting (a path, folder, URL or a list of them; with
    videos=True also video files, a camera index, stream URLs), for the predict and recognize
    runners. A path inside the built-in demo dataset generates it first, so the default configs run
    out of the box."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{key} is empty: pass -o {key}=<image, folder or URL>")
    values = [value] if isinstance(value, (str, int)) else list(value)
    values = [v if isinstance(v, int) and not isinstance(v, bool) else str(v) for v in values]
    for text in values:
        if isinstance(text, str):
            ensure_demo(text)
    return expand_inputs(values, videos=videos)


def load_item(item, max_pixels=DEFAULT_MAX_PIXELS):
    """The BGR uint8 image of an InputItem; UserError (one line) when it cannot be read or is larger
    than `max_pixels` (Global.max_image_pixels)."""
    if item.video or is_video_path(item.input_path or ""):
        raise UserError(f"{item.input_path} is a video: the face recognition pipeline reads videos (Global.mode="
                        "recognize with configs/face_recognition/pipeline.yaml, or pipeline.predict)")
    try:
        if item.array is not None:
            return to_bgr(item.array)
        if is_url(item.input_path):
            tmp = download(item.input_path)
            try:
                return read_image(tmp, max_pixels)
            except ImageReadError:
                raise ImageReadError(f"{item.input_path} did not download an image") from None
            finally:
                os.remove(tmp)
        return read_image(item.input_path, max_pixels)
    except ImageReadError as e:
        raise UserError(str(e)) from None
