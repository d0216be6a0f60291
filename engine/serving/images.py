"""A request's images: base64 file content (a data: URL prefix accepted) or an http(s) URL the
server fetches, decoded within the limits (bytes, pixels)."""
import base64
import binascii
import urllib.request

from datasets.transforms import ImageReadError, decode_image_bytes
from engine.serving.envelope import ServiceError


def image_bytes(text, where, limits):
    """The file bytes of a request's image: base64 (optionally a data: URL) or an http(s) URL."""
    text = text.strip()
    if text.lower().startswith(("http://", "https://")):
        if not limits.url_images:
            raise ServiceError(422, f"{where}: image URLs are turned off on this server (Serve.url_images); "
                                    "send the file content as base64")
        return fetch_url(text, where, limits)
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(422, f"{where} is neither base64 file content nor an http(s) URL") from None


def fetch_url(url, where, limits):
    try:
        with urllib.request.urlopen(url, timeout=limits.url_timeout) as response:
            data = response.read(limits.max_request_bytes + 1)
    except Exception as e:  # URLError, HTTPError, timeouts, bad URLs: one line for the client
        raise ServiceError(422, f"{where}: cannot fetch {url} ({getattr(e, 'reason', e)})") from None
    if len(data) > limits.max_request_bytes:
        raise ServiceError(413, f"{where}: {url} is larger than {limits.max_request_bytes // 2**20} MB")
    return data


def decode_images(texts, wheres, limits):
    """BGR images of a request; ServiceError naming every image that is not one."""
    images, problems = [], []
    for text, where in zip(texts, wheres):
        try:
            images.append(decode_image_bytes(image_bytes(text, where, limits), where, limits.max_image_pixels))
        except ImageReadError as e:
            problems.append((422, str(e)))
        except ServiceError as e:
            problems.append((e.status, e.message))
    if problems:
        status = max(s for s, _ in problems)
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ServiceError(status, "; ".join(m for _, m in problems[:3]) + more)
    return images
