"""Video inputs read frame by frame (never whole in memory): files, cameras and streams.

    source = open_video("talk.mp4")          # or 0 (a camera), "rtsp://...", "https://.../clip.mp4"
    for frame_index, seconds, frame in source.frames():
        ...
    source.ended_early                       # None, or why the video stopped before its end

OpenCV's FFmpeg backend decodes; what it cannot open or decode is a one-line UserError naming
the input and what to do. A file that stops before the frame count its header gives (truncated)
is read up to there and says so. A camera or stream that stops delivering frames is reopened a
bounded number of times, with a growing pause, then ends with the reason.
"""
import math
import os
import time

import cv2

from datasets.transforms import DEFAULT_MAX_PIXELS
from foundation.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://")
DEFAULT_FPS = 25.0  # when the container gives none (some streams and cameras)
RECONNECT_PAUSES = (0.5, 1.0, 2.0, 4.0)  # seconds before each reopening of a stopped stream or camera


def is_video_path(path):
    return isinstance(path, (str, os.PathLike)) and str(path).lower().endswith(VIDEO_EXTENSIONS)


def camera_index(value):
    """The camera index an input names (0, "0", "camera:1"), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    text = str(value).strip().lower()
    text = text[len("camera:"):] if text.startswith("camera:") else text
    return int(text) if text.isdigit() and len(text) <= 3 else None


def is_stream_url(value):
    """rtsp:// and rtmp:// always; http(s):// when its path names a video file or a stream playlist."""
    text = str(value).strip().lower()
    if text.startswith(("rtsp://", "rtmp://")):
        return True
    path = text.split("?", 1)[0]
    return text.startswith(("http://", "https://")) and path.endswith(VIDEO_EXTENSIONS + (".m3u8", ".mjpg", ".mjpeg"))


def is_video_input(value):
    return is_video_path(value) or camera_index(value) is not None or is_stream_url(value)


class VideoSource:
    """One opened video. `kind` is file, camera or stream; `fps`, `frame_count` (0 when unknown),
    `width`, `height` come from the container; frames() yields (index, seconds, BGR frame)."""

    def __init__(self, source, kind, capture, name, max_pixels=DEFAULT_MAX_PIXELS, reconnects=len(RECONNECT_PAUSES)):
        self.source, self.kind, self.name = source, kind, name
        self._capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps_known = bool(fps and math.isfinite(fps) and 1.0 <= fps <= 240.0)
        self.fps = float(fps) if self.fps_known else DEFAULT_FPS
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if kind == "file" and count and math.isfinite(count) and count > 0 else 0
        self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self.max_pixels = int(max_pixels)
        self.reconnects = int(reconnects)
        self.frames_read = 0
        self.ended_early = None  # why reading stopped before the video's end, or None
        self.reconnects_used = 0
        if self.width * self.height > self.max_pixels:
            self.close()
            raise UserError(f"{name}: frames of {self.width}x{self.height} exceed the {self.max_pixels:,}-pixel "
                            "limit (Global.max_image_pixels); scale the video down or raise the limit")

    def _reopen(self):
        self._capture.release()
        self._capture = cv2.VideoCapture(self.source)
        return self._capture.isOpened()

    def frames(self, stop=None, wanted=None):
        """Yield (frame index, seconds from the start, BGR frame) until the end, or until `stop()`
        returns True (checked before each frame). With `wanted(index)` False a frame is only
        grabbed, not converted to BGR (cheaper), and yielded as None."""
        while stop is None or not stop():
            index = self.frames_read
            if wanted is not None and not wanted(index):
                ok, frame = self._capture.grab(), None
            else:
                ok, frame = self._capture.read()
                ok = ok and frame is not None
            if not ok:
                if self.kind == "file":
                    if self.frames_read == 0:
                        raise UserError(f"{self.name}: no frame could be decoded (an empty, truncated or corrupt "
                                        "file, or a codec OpenCV's FFmpeg lacks); re-encode it, e.g. ffmpeg -i "
                                        "IN -c:v libx264 OUT.mp4")
                    if self.frame_count and self.frames_read < self.frame_count - 1:
                        self.ended_early = (f"the file ended at frame {self.frames_read} of the "
                                            f"{self.frame_count} its header gives (truncated or corrupt)")
                    return
                if self.reconnects_used >= self.reconnects:
                    self.ended_early = (f"the {self.kind} stopped sending frames after {self.frames_read} frames "
                                        f"and {self.reconnects_used} reconnection attempts")
                    return
                time.sleep(RECONNECT_PAUSES[min(self.reconnects_used, len(RECONNECT_PAUSES) - 1)])
                self.reconnects_used += 1
                self._reopen()
                continue
            if frame is not None and frame.shape[0] * frame.shape[1] > self.max_pixels:
                raise UserError(f"{self.name}: a frame of {frame.shape[1]}x{frame.shape[0]} exceeds the "
                                f"{self.max_pixels:,}-pixel limit (Global.max_image_pixels)")
            self.frames_read += 1
            yield index, index / self.fps, frame

    def close(self):
        self._capture.release()


def open_video(source, max_pixels=DEFAULT_MAX_PIXELS, reconnects=len(RECONNECT_PAUSES)):
    """A VideoSource for a video file path, a camera index or a stream URL; UserError when it
    cannot be opened."""
    camera = camera_index(source)
    if camera is not None:
        capture, kind, name = cv2.VideoCapture(camera), "camera", f"camera {camera}"
        if not capture.isOpened():
            raise UserError(f"camera {camera} cannot be opened (no such device, or it is in use); "
                            "list cameras with `ls /dev/video*`")
        return VideoSource(camera, kind, capture, name, max_pixels, reconnects)
    text = str(source)
    if is_stream_url(text):
        capture = cv2.VideoCapture(text)
        if not capture.isOpened():
            raise UserError(f"the stream {_without_credentials(text)} cannot be opened (unreachable, refused, or "
                            "not a video stream OpenCV's FFmpeg can read)")
        return VideoSource(text, "stream", capture, _without_credentials(text), max_pixels, reconnects)
    if not os.path.isfile(text):
        raise UserError(f"video {text} does not exist" if not os.path.exists(text) else f"video {text} is not a file")
    capture = cv2.VideoCapture(text)
    if not capture.isOpened():
        raise UserError(f"{text}: not a video OpenCV's FFmpeg can open (unsupported container or codec, or a "
                        "damaged file); re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")
    return VideoSource(text, "file", capture, text, max_pixels, 0)


def _without_credentials(url):
    """A stream URL for logs and messages, without a user:password@ part."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rsplit('@', 1)[-1]}{slash}{path}"
