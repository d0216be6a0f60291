"""A request's images: base64 file content (a data: URL prefix accepted) or an http(s) URL the
server fetches, taken in within the service's bounds.

ImageIntake holds what every request shares: a small pool that fetches URLs (with a cap on the
URLs waiting, so slow ones cannot take the threads /health and infer need) and a small pool that
decodes. A request's images are first only bytes (at most Serve.max_request_mb in all) whose
headers are checked (each at most Global.max_image_pixels, all together at most
Serve.max_request_pixels) before anything is decoded; an enrolment then decodes them one at a
time, keeping only each face crop, so a request's memory is one decoded image, not all of them."""
import asyncio
import base64
import binascii
import http.client
import io
import ipaddress
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from datasets.image_headers import HeaderError, stream_header
from datasets.transforms import ImageReadError, decode_image_bytes
from engine.serving.envelope import ServiceError
from foundation.logger import get_logger


def base64_bytes(text, where):
    """The file bytes of a request's image sent inline: base64, optionally as a data: URL."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(422, f"{where} is neither base64 file content nor an http(s) URL") from None


# Where an image URL may lead: public unicast addresses only, unless Serve.url_allow_private. Loopback,
# private, link-local (the cloud metadata service at 169.254.169.254), multicast and reserved
# addresses are refused, for every address a name resolves to and after every redirect.
MAX_REDIRECTS = 3


class _Refused(Exception):
    """A fetch that must not or could not happen; the client only hears the generic message."""


def _checked_address(host, port, allow_private):
    """A resolved address of `host` to connect to, once every address it resolves to is allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise _Refused(f"{host} does not resolve") from None
    addresses = [info[4][0] for info in infos]
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%")[0])
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped
        if not allow_private and not ip.is_global or ip.is_multicast or ip.is_unspecified:
            raise _Refused(f"{host} resolves to {ip}, not a public address")
    return addresses[0]


def _get(url, limits, deadline):
    """(status, headers, body) of one GET, connected to the address that was checked (no second
    lookup a rebinding DNS server could answer differently)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Refused(f"{url} is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _checked_address(parts.hostname, port, limits.url_allow_private)
    timeout = max(0.1, deadline - time.monotonic())
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, port, timeout=timeout)
    conn._create_connection = lambda _addr, t, src: socket.create_connection((address, port), t, src)
    try:
        conn.request("GET", urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
                     headers={"User-Agent": "facefeat-service", "Accept": "image/*"})
        response = conn.getresponse()
        body = response.read(limits.max_request_bytes + 1)
        return response.status, response.headers, body
    except (OSError, http.client.HTTPException) as e:
        raise _Refused(f"{type(e).__name__}: {e}") from None
    finally:
        conn.close()


def fetch_url(url, where, limits):
    """The bytes an image URL serves, following at most MAX_REDIRECTS redirects, all within
    Serve.url_timeout. Every failure is the same one line for the client (what happened is in the
    server log), so the service cannot be used to map which addresses and ports answer."""
    deadline = time.monotonic() + limits.url_timeout
    try:
        for _ in range(MAX_REDIRECTS + 1):
            if time.monotonic() > deadline:
                raise _Refused(f"no answer within Serve.url_timeout ({limits.url_timeout:g} s)")
            status, headers, body = _get(url, limits, deadline)
            if status in (301, 302, 303, 307, 308) and headers.get("Location"):
                url = urllib.parse.urljoin(url, headers["Location"])
                continue
            if status != 200:
                raise _Refused(f"HTTP {status}")
            if len(body) > limits.max_request_bytes:
                raise ServiceError(413, f"{where}: the image at that URL is larger than "
                                        f"{limits.max_request_bytes // 2**20} MB (Serve.max_request_mb)")
            return body
        raise _Refused(f"more than {MAX_REDIRECTS} redirects")
    except _Refused as e:
        get_logger().info(f"{where}: image URL {url} not fetched: {e}")
        raise ServiceError(422, f"{where}: could not fetch an image from that URL (only public http(s) "
                                "addresses are fetched; send the file content as base64 instead)") from None


def header_pixels(data):
    """width x height from an image's header, 0 when the header does not say (decoding decides)."""
    try:
        _, width, height, _ = stream_header(io.BytesIO(data))
    except HeaderError:
        return 0
    return (width or 0) * (height or 0)


class ImageIntake:
    """The service's bounded way in for images; see the module docstring."""

    def __init__(self, limits):
        self.limits = limits
        self.fetchers = ThreadPoolExecutor(max_workers=limits.url_workers, thread_name_prefix="url")
        self.decoders = ThreadPoolExecutor(max_workers=limits.decode_workers, thread_name_prefix="decode")
        self.fetching = 0  # URLs queued or being fetched; changed on the event loop only

    async def _bytes(self, text, where):
        text = text.strip()
        if not text.lower().startswith(("http://", "https://")):
            return await asyncio.get_running_loop().run_in_executor(self.decoders, base64_bytes, text, where)
        if not self.limits.url_images:
            raise ServiceError(422, f"{where}: image URLs are turned off on this server (Serve.url_images); "
                                    "send the file content as base64")
        if self.fetching >= self.limits.max_pending_urls:
            raise ServiceError(503, f"{where}: the server is fetching as many image URLs as it takes at once; "
                                    "try again shortly, or send the file content as base64")
        self.fetching += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.fetchers, fetch_url, text, where, self.limits)
        finally:
            self.fetching -= 1

    async def raw_bytes(self, text, where):
        """The bytes of one file sent inline (base64) or as a URL, not checked as an image (a video)."""
        return await self._bytes(text, where)

    async def take(self, texts, wheres):
        """The file bytes of a request's images, checked before any is decoded: every problem of the
        request in one ServiceError (the largest status), nothing decoded when there is one."""
        found, problems, total_bytes, total_pixels = [], [], 0, 0
        for text, where in zip(texts, wheres):
            try:
                data = await self._bytes(text, where)
            except ServiceError as e:
                problems.append((e.status, e.message))
                continue
            total_bytes += len(data)
            pixels = header_pixels(data)
            if pixels > self.limits.max_image_pixels:
                problems.append((413, f"{where} is {pixels / 1e6:.1f} megapixels, above the limit of "
                                      f"{self.limits.max_image_pixels / 1e6:g} (Global.max_image_pixels)"))
                continue
            total_pixels += pixels
            found.append(data)
        if total_bytes > self.limits.max_request_bytes:
            problems.append((413, f"the request's images are {total_bytes / 2**20:.1f} MB, above the limit of "
                                  f"{self.limits.max_request_bytes / 2**20:g} MB (Serve.max_request_mb)"))
        if total_pixels > self.limits.max_request_pixels:
            problems.append((413, f"the request's images hold {total_pixels / 1e6:.0f} megapixels, above the limit "
                                  f"of {self.limits.max_request_pixels / 1e6:g} (Serve.max_request_pixels): send "
                                  "fewer or smaller images per request"))
        if problems:
            status = max(s for s, _ in problems)
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ServiceError(status, "; ".join(m for _, m in problems[:3]) + more)
        return found

    def decoder(self, data, where):
        """A function decoding `data` when called (an enrolment calls it on its own thread)."""
        def decode():
            return decode_image_bytes(data, where, self.limits.max_image_pixels)
        return decode

    async def decode(self, data, where):
        """One image decoded on the decoding pool; ServiceError when it is not an image."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.decoders, self.decoder(data, where))
        except ImageReadError as e:
            raise ServiceError(422, str(e)) from None
