"""The HTTP service of the face recognition pipeline: PaddleX's serving API on FastAPI.

    POST /face-recognition-index-build   {"imageLabelPairs": [{"image", "label"}]}
                                         -> {"indexKey", "imageCount", "idMap"}
    POST /face-recognition-index-add     {"imageLabelPairs": [...], "indexKey"} -> {"imageCount", "idMap"}
    POST /face-recognition-index-remove  {"ids": [int], "indexKey"} -> {"imageCount", "idMap", "missingIds"}
    POST /face-recognition-index-info    {"indexKey"} -> {"imageCount", "idMap", "labels", ...} (ours, read-only)
    POST /face-recognition-infer         {"image", "indexKey"?, "detThreshold"?, "recThreshold"?,
                                          "hammingRadius"?, "topk"?, "visualize"?}
                                         -> {"faces": [{"bbox", "recResults": [{"label", "score"}],
                                             "score", "label", "labelScore"}], "image": JPEG base64 | null}
    GET  /health                         -> {"status": "ok", "model", "embeddingSize", "index", "indexes"};
                                            503 {"status": "error", "errorMsg"} when Milvus does not answer
    GET  /                               the web page (engine/serving/web/index.html)

Every answer is PaddleX's envelope: {"logId", "errorCode": 0, "errorMsg": "Success", "result"} on
200, {"logId", "errorCode": <HTTP status>, "errorMsg": <what and how to fix>} otherwise. Images
are base64 file content (a data: URL prefix is accepted) or an http(s) URL the server fetches.
Both result forms of PaddleX's versions are given: imageCount (3.0) and idMap (3.0 beta).
`recResults` holds the matches at or above the threshold (empty: unknown); `label` and
`labelScore` are ours (the top-1 decision, the nearest cosine).

Every model call runs on one worker thread (the predictor is not thread-safe, and two threads
would only share the same cores); decoding, URL fetches and index writes run beside it.
"""
import asyncio
import base64
import binascii
import json
import os
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional

import cv2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from datasets.transforms import ImageReadError, decode_image_bytes
from engine.gallery.faiss_index import IndexMismatchError
from engine.gallery.milvus_index import MilvusUnavailableError
from engine.gallery.store import UnknownIndexError
from foundation.errors import UserError
from foundation.logger import get_logger

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")


@dataclass
class ServiceLimits:
    max_request_bytes: int = 32 * 2**20
    max_images_per_request: int = 64
    url_images: bool = True
    url_timeout: float = 10.0


class ServiceError(Exception):
    """An answer other than 200: its HTTP status and a message for the client."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


# --------------------------------------------------------------------------- request bodies
class ImageLabelPair(BaseModel):
    image: str
    label: str


class BuildIndexRequest(BaseModel):
    imageLabelPairs: List[ImageLabelPair]


class AddImagesToIndexRequest(BaseModel):
    imageLabelPairs: List[ImageLabelPair]
    indexKey: str


class RemoveImagesFromIndexRequest(BaseModel):
    ids: List[int]
    indexKey: str


class IndexInfoRequest(BaseModel):
    indexKey: str


class InferRequest(BaseModel):
    image: str
    indexKey: Optional[str] = None
    detThreshold: Optional[float] = None
    recThreshold: Optional[float] = None
    hammingRadius: Optional[float] = None
    topk: Optional[int] = None
    visualize: Optional[bool] = True


# --------------------------------------------------------------------------- images
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
            images.append(decode_image_bytes(image_bytes(text, where, limits), where))
        except ImageReadError as e:
            problems.append((422, str(e)))
        except ServiceError as e:
            problems.append((e.status, e.message))
    if problems:
        status = max(s for s, _ in problems)
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ServiceError(status, "; ".join(m for _, m in problems[:3]) + more)
    return images


# --------------------------------------------------------------------------- the app
class _BodyLimit:
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


def create_app(pipeline, store, limits=None):
    """The FastAPI app serving `pipeline` (engine.recognition.pipeline.FaceRecognitionPipeline) with the
    indexes of `store` (engine.gallery.store.IndexStore)."""
    limits = limits or ServiceLimits()
    log = get_logger()
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    empty_index = pipeline.new_index(backend="faiss")  # searched without an indexKey: nothing to find
    app = FastAPI(title="facefeat face recognition", docs_url="/docs", redoc_url=None)

    async def on_model(fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(model_thread, lambda: fn(*args, **kwargs))

    def ok(result):
        return JSONResponse({"logId": str(uuid.uuid4()), "errorCode": 0, "errorMsg": "Success", "result": result})

    def fail(status, message):
        return JSONResponse({"logId": str(uuid.uuid4()), "errorCode": status, "errorMsg": message},
                            status_code=status)

    @app.exception_handler(ServiceError)
    async def _service_error(request, exc):
        log.info(f"{request.url.path} -> {exc.status}: {exc.message}")
        return fail(exc.status, exc.message)

    @app.exception_handler(UnknownIndexError)
    async def _unknown_index(request, exc):
        return fail(404, str(exc))

    @app.exception_handler(MilvusUnavailableError)
    async def _backend_down(request, exc):
        log.warning(f"{request.url.path} -> 503: {exc}")
        return fail(503, str(exc))

    @app.exception_handler(IndexMismatchError)
    async def _mismatch(request, exc):
        return fail(409, str(exc))

    @app.exception_handler(UserError)
    async def _user_error(request, exc):
        return fail(422, str(exc))

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

    def pairs_of(request_pairs):
        if not request_pairs:
            raise ServiceError(422, "imageLabelPairs is empty: give at least one {\"image\", \"label\"}")
        if len(request_pairs) > limits.max_images_per_request:
            raise ServiceError(413, f"{len(request_pairs)} images in one request, above the limit of "
                                    f"{limits.max_images_per_request} (Serve.max_images_per_request): split it")
        for i, pair in enumerate(request_pairs):
            if not pair.label.strip():
                raise ServiceError(422, f"imageLabelPairs[{i}].label is empty")
        return request_pairs

    async def enrol(request_pairs):
        """(features, labels) of a request's image-label pairs; every image must hold a face."""
        pairs = pairs_of(request_pairs)
        wheres = [f"imageLabelPairs[{i}].image" for i in range(len(pairs))]
        images = await run_in_threadpool(decode_images, [p.image for p in pairs], wheres, limits)
        enrolment = await on_model(pipeline.enroll, [(img, p.label.strip()) for img, p in zip(images, pairs)],
                                   progress=False)
        if enrolment.skipped:
            faceless = [int(name.split("#")[1]) for name, _ in enrolment.skipped if "#" in name]
            named = ", ".join(f"imageLabelPairs[{i}] (label '{pairs[i].label}')" for i in faceless[:5])
            raise ServiceError(422, f"no face found in {named}; nothing was added. Send photos with a visible face")
        return enrolment

    def id_map(index):
        return {str(i): lbl for i, lbl in index.id_map.items()}

    @app.post("/face-recognition-index-build")
    async def build_index(request: BuildIndexRequest):
        enrolment = await enrol(request.imageLabelPairs)
        index = pipeline.new_index("Flat", "IP", backend="faiss")  # what PaddleX's service builds
        index.add(enrolment.features, enrolment.labels)
        key = await run_in_threadpool(store.create, index)
        stored = await run_in_threadpool(store.get, key)  # a Milvus store gives its own ids
        return ok({"indexKey": key, "imageCount": len(stored), "idMap": id_map(stored)})

    @app.post("/face-recognition-index-add")
    async def add_to_index(request: AddImagesToIndexRequest):
        await run_in_threadpool(store.get, request.indexKey)  # an unknown key before any model work
        enrolment = await enrol(request.imageLabelPairs)

        def change(index):
            index.check_model(pipeline.model.model_name, pipeline.model.embedding_size, pipeline.fingerprint,
                              what="service model's")
            index.add(enrolment.features, enrolment.labels)

        index, _ = await run_in_threadpool(store.update, request.indexKey, change)
        return ok({"imageCount": len(index), "idMap": id_map(index)})

    @app.post("/face-recognition-index-remove")
    async def remove_from_index(request: RemoveImagesFromIndexRequest):
        current = await run_in_threadpool(store.get, request.indexKey)
        if not set(request.ids) & set(current.entries):  # nothing to remove: no new version is written
            return ok({"imageCount": len(current), "idMap": id_map(current), "missingIds": sorted(set(request.ids))})

        def change(index):
            missing = sorted(set(request.ids) - set(index.entries))
            index.remove_ids(request.ids)
            return missing

        index, missing = await run_in_threadpool(store.update, request.indexKey, change)
        return ok({"imageCount": len(index), "idMap": id_map(index), "missingIds": missing})

    @app.post("/face-recognition-index-info")
    async def index_info(request: IndexInfoRequest):  # ours: read an index without changing it
        index = await run_in_threadpool(store.get, request.indexKey)
        return ok({"imageCount": len(index), "idMap": id_map(index), "labels": index.labels,
                   "indexType": index.index_type, "metricType": index.metric_type})

    @app.post("/face-recognition-infer")
    async def infer(request: InferRequest):
        index = empty_index if request.indexKey is None else await run_in_threadpool(store.get, request.indexKey)
        for name, value, low, high in (("detThreshold", request.detThreshold, 0.0, 1.0),
                                       ("recThreshold", request.recThreshold, -1.0, 1.0)):
            if value is not None and not low <= value <= high:
                raise ServiceError(422, f"{name} {value} is outside {low:g} to {high:g}")
        if request.topk is not None and request.topk < 1:
            raise ServiceError(422, f"topk must be at least 1, got {request.topk}")
        (img,) = await run_in_threadpool(decode_images, [request.image], ["image"], limits)
        res = await on_model(pipeline.recognize_image, img, index=index, det_threshold=request.detThreshold,
                             rec_threshold=request.recThreshold, topk=request.topk)
        faces = [{"bbox": box["coordinate"],
                  "recResults": [{"label": lbl, "score": s} for lbl, s in zip(box["labels"], box["rec_scores"])],
                  "score": box["det_score"], "label": box["label"], "labelScore": box["score"]}
                 for box in res["boxes"]]
        drawn = None
        if request.visualize is not False:
            jpeg = await run_in_threadpool(lambda: cv2.imencode(".jpg", res.draw())[1].tobytes())
            drawn = base64.b64encode(jpeg).decode("ascii")
        return ok({"faces": faces, "image": drawn})

    @app.get("/health")
    async def health():  # plain JSON, as load balancers and probes expect
        problem = await run_in_threadpool(store.check)  # a Milvus server that does not answer: 503
        if problem:
            return JSONResponse({"status": "error", "model": pipeline.model.model_name, "index": store.root,
                                 "errorMsg": problem}, status_code=503)
        return JSONResponse({"status": "ok", "model": pipeline.model.model_name,
                             "embeddingSize": pipeline.model.embedding_size, "index": store.root,
                             "indexes": len(store.keys())})

    @app.get("/", include_in_schema=False)
    async def page():
        path = os.path.join(WEB_DIR, "index.html")
        if not os.path.isfile(path):
            raise ServiceError(404, "the web page is not installed (engine/serving/web/index.html)")
        return FileResponse(path, media_type="text/html")

    if os.path.isdir(WEB_DIR):
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.state.model_thread = model_thread
    return _BodyLimit(app, limits.max_request_bytes)
