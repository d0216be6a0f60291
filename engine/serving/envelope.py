"""PaddleX's answer envelope and what every endpoint shares: the limits of a request, the error
every failure becomes, the body-size guard and the request log.

    200: {"logId", "errorCode": 0, "errorMsg": "Success", "result"}
    else: {"logId", "errorCode": <HTTP status>, "errorMsg": <what and how to fix>}
"""
import hmac
import json
import os
import re
import time
import uuid
from dataclasses import dataclass

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from datasets.transforms import DEFAULT_MAX_PIXELS
from engine.gallery.faiss_index import IndexMismatchError
from engine.gallery.milvus_index import MilvusUnavailableError
from engine.gallery.store import UnknownIndexError
from foundation.errors import UserError


@dataclass
class ServiceLimits:
    """What one request may spend (the Serve section, and Global.max_image_pixels per image)."""
    max_request_bytes: int = 32 * 2**20
    max_images_per_request: int = 64
    url_images: bool = True
    url_timeout: float = 10.0
    url_allow_private: bool = False
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = 400_000_000
    url_workers: int = 4  # URLs fetched at once, whatever the number of requests
    max_pending_urls: int = 32  # URLs waiting for a fetcher before more are refused (503)
    decode_workers: int = 2  # images decoded at once outside the model thread


class ServiceError(Exception):
    """An answer other than 200: its HTTP status and a message for the client."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def ok(result):
    return JSONResponse({"logId": str(uuid.uuid4()), "errorCode": 0, "errorMsg": "Success", "result": result})


# what a client is never told: the server's own file paths, and the command-line fixes meant for
# whoever runs the server (errors raised deep in the pipeline are written for the command line)
_SERVER_PATH = re.compile(r"(?<![\w:/.~,=+-])/(?:[^\s/'\"():,;]+/)+[^\s/'\"():,;]*")
_COMMAND_LINE = re.compile(r"\s*\(?(?:-o [\w.]+=\S*|Global\.mode=\w+)\)?")


def client_text(message):
    """`message` as a client may read it: server paths and command-line fixes taken out."""
    return _SERVER_PATH.sub("<server path>", _COMMAND_LINE.sub("", str(message)))


def fail(status, message):
    return JSONResponse({"logId": str(uuid.uuid4()), "errorCode": status, "errorMsg": client_text(message)},
                        status_code=status)


# the status each error type answers with (the first that matches, in this order)
ERROR_STATUS = ((UnknownIndexError, 404), (MilvusUnavailableError, 503), (IndexMismatchError, 409), (UserError, 422))


def install(app, log):
    """Every failure of `app` as an envelope, and a log line per API request."""
    @app.exception_handler(ServiceError)
    async def _service_error(request, exc):
        log.info(f"{request.url.path} -> {exc.status}: {exc.message}")
        return fail(exc.status, exc.message)

    for error_type, status in ERROR_STATUS:
        async def _known(request, exc, status=status):
            if status >= 500:
                log.warning(f"{request.url.path} -> {status}: {exc}")
            return fail(status, str(exc))
        app.add_exception_handler(error_type, _known)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg')}")
        return fail(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return fail(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):
        log.exception(f"{request.url.path}: unexpected error")
        return fail(500, f"internal server error ({type(exc).__name__}); the server log has the details")

    @app.middleware("http")
    async def _log_requests(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        if request.url.path.startswith("/face-recognition"):
            log.info(f"{request.method} {request.url.path} {response.status_code} "
                     f"{(time.perf_counter() - start) * 1000:.0f} ms")
        return response


class Guard:
    """ASGI middleware run before anything else: the Host header must be one the service answers to
    (a web page on another origin cannot reach a loopback service through DNS rebinding), and every
    API call (/face-recognition-*) must carry one of the API keys, as `Authorization: Bearer <key>`
    or `X-API-Key: <key>`. The page itself and /health need no key (probes and the page's own
    start). Keys are compared in constant time."""

    def __init__(self, app, api_keys=(), allowed_hosts=None):
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.hosts is not None:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.hosts:
                return await _envelope_error(send, 400, f"Host '{host[:100]}' is not one this service answers to "
                                                        "(Serve.allowed_hosts)")
        if self.keys and scope.get("path", "").startswith("/face-recognition"):
            given = headers.get(b"x-api-key", b"")
            auth = headers.get(b"authorization", b"")
            if auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            if not any(hmac.compare_digest(given, key) for key in self.keys):
                return await _envelope_error(send, 401, "missing or wrong API key: send it as 'Authorization: Bearer "
                                                        "<key>' or 'X-API-Key: <key>'")
        return await self.app(scope, receive, send)


def read_api_keys(path):
    """The keys of an API key file: one a line, blank lines and # comments skipped; UserError when
    the file cannot be used (a key file anyone may read is refused: it would not keep anyone out)."""
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as f:
            keys = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    except OSError as e:
        raise UserError(f"Serve.api_key_file {path}: {e.strerror}") from None
    if mode & 0o004:
        raise UserError(f"Serve.api_key_file {path} is readable by every user of this machine: chmod 600 it")
    short = [k for k in keys if len(k) < 16]
    if not keys or short:
        raise UserError(f"Serve.api_key_file {path} holds {'no key' if not keys else f'{len(short)} key(s) shorter than 16 characters'}: "
                        "put one key a line, each at least 16 characters (e.g. python -c 'import secrets; "
                        "print(secrets.token_urlsafe(32))')")
    return keys


class BodyLimit:
    """ASGI middleware: refuse a request body above the limit (413) before the app reads it all."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _envelope_error(send, 413, self._message(int(declared)))
        if declared is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            return await self._chunked(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _envelope_error(send, 413, self._message(received))

    async def _chunked(self, scope, receive, send):
        """A body without Content-Length (chunked): read here, up to the limit, then handed on whole,
        so one over the limit is a 413 like any other and never reaches the body parser."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await _envelope_error(send, 413, self._message(size, "at least "))
            if not message.get("more_body", False):
                break
        body, handed = b"".join(chunks), False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _message(self, size, qualifier=""):
        return (f"request body of {qualifier}{size / 2**20:.1f} MB is above the limit of {self.max_bytes / 2**20:g} MB "
                "(Serve.max_request_mb): send fewer or smaller images per request")


class _TooLarge(Exception):
    pass


async def _envelope_error(send, status, message):
    body = json.dumps({"logId": str(uuid.uuid4()), "errorCode": status, "errorMsg": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
