"""PaddleX's answer envelope and what every endpoint shares: the limits of a request, the error
every failure becomes, the body-size guard and the request log.

    200: {"logId", "errorCode": 0, "errorMsg": "Success", "result"}
    else: {"logId", "errorCode": <HTTP status>, "errorMsg": <what and how to fix>}
"""
import json
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
    max_image_pixels: int = DEFAULT_MAX_PIXELS


class ServiceError(Exception):
    """An answer other than 200: its HTTP status and a message for the client."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def ok(result):
    return JSONResponse({"logId": str(uuid.uuid4()), "errorCode": 0, "errorMsg": "Success", "result": result})


def fail(status, message):
    return JSONResponse({"logId": str(uuid.uuid4()), "errorCode": status, "errorMsg": message}, status_code=status)


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

    def _message(self, size):
        return (f"request body of {size / 2**20:.1f} MB is above the limit of {self.max_bytes / 2**20:g} MB "
                "(Serve.max_request_mb): send fewer or smaller images per request")


class _TooLarge(Exception):
    pass


async def _envelope_error(send, status, message):
    body = json.dumps({"logId": str(uuid.uuid4()), "errorCode": status, "errorMsg": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
