"""The HTTP service of the face recognition pipeline: PaddleX's serving API on FastAPI, and the web
page at / (engine/serving/web/index.html). The envelope and limits are engine.serving.envelope, the
endpoints engine.serving.endpoints, the request bodies engine.serving.schemas."""
import ipaddress
import os

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from engine.gallery.backend import GallerySettings
from engine.recognition.pipeline import FaceRecognitionPipeline
from engine.recognition.video import VideoSettings
from engine.serving import envelope
from engine.serving.endpoints import FaceRecognitionEndpoints
from engine.serving.envelope import BodyLimit, Guard, ServiceError, ServiceLimits, read_api_keys
from engine.serving.video import VideoEndpoints, VideoLimits
from foundation.errors import UserError
from foundation.logger import get_logger

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def is_loopback(host):
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def allowed_hosts(host, configured):
    """The Host header names the service answers to: Serve.allowed_hosts, else the loopback names
    for a loopback service (what a DNS-rebinding page cannot send), else any."""
    if configured is not None:
        return list(configured)
    return list(LOOPBACK_NAMES) if is_loopback(host) else None


def app_from_config(cfg):
    """(app, pipeline, store) of a pipeline config (Global.mode=serve). The configured `index`, when
    it exists, is what /face-recognition-infer searches without an indexKey, as in PaddleX."""
    api_keys = read_api_keys(cfg.Serve.api_key_file) if cfg.Serve.api_key_file else []
    if not api_keys and not is_loopback(cfg.Serve.host):
        raise UserError(f"Serve.host {cfg.Serve.host} takes connections from other machines: set Serve.api_key_file "
                        "(a file of keys, one a line, chmod 600) so that only clients with a key can change or "
                        "search the galleries")
    gallery = GallerySettings.from_config(cfg.Index)
    store = gallery.store(cfg.Serve.index_root)  # milvus: collections on Index.uri
    problem = store.check()  # an unreachable Milvus fails here, in seconds, before the model loads
    if problem:
        raise UserError(problem)
    pipeline = FaceRecognitionPipeline.from_config(cfg)
    if cfg.index and gallery.exists(cfg.index):
        pipeline.resolve_index()  # loaded now: a broken index or one of another model fails at start
    serve = cfg.Serve
    limits = ServiceLimits(max_request_bytes=int(serve.max_request_mb * 2**20),
                           max_images_per_request=serve.max_images_per_request,
                           url_images=serve.url_images, url_timeout=serve.url_timeout,
                           url_allow_private=serve.url_allow_private,
                           max_image_pixels=cfg.Global.max_image_pixels,
                           max_request_pixels=serve.max_request_pixels)
    video_limits = VideoLimits(max_video_seconds=serve.max_video_seconds, video_timeout=serve.video_timeout,
                               max_live_sessions=serve.max_live_sessions, live_idle_seconds=serve.live_idle_seconds)
    app = create_app(pipeline, store, limits, visualize=cfg.Serving.visualize,
                     video=(VideoSettings.from_config(cfg.Video), video_limits))
    return Guard(app, api_keys, allowed_hosts(serve.host, serve.allowed_hosts)), pipeline, store


def create_app(pipeline, store, limits=None, visualize=True, video=None):
    """The ASGI app serving `pipeline` (engine.recognition.pipeline.FaceRecognitionPipeline) with the
    indexes of `store` (engine.gallery.store), every request body bounded by `limits`. A request
    without an indexKey searches the pipeline's loaded index (`pipeline.index`), if any; `visualize`
    is whether infer returns the drawn image when the request does not say; `video` the (VideoSettings,
    VideoLimits) of the video endpoints (default: the config's defaults)."""
    limits = limits or ServiceLimits()
    app = FastAPI(title="facefeat face recognition", docs_url="/docs", redoc_url=None)
    envelope.install(app, get_logger())
    endpoints = FaceRecognitionEndpoints(pipeline, store, limits, visualize)
    endpoints.register(app)
    VideoEndpoints(endpoints, *(video or (VideoSettings(), VideoLimits()))).register(app)

    @app.get("/", include_in_schema=False)
    async def page():
        path = os.path.join(WEB_DIR, "index.html")
        if not os.path.isfile(path):
            raise ServiceError(404, "the web page is not installed (engine/serving/web/index.html)")
        return FileResponse(path, media_type="text/html")

    if os.path.isdir(WEB_DIR):
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.state.model_thread = endpoints.model_thread
    return BodyLimit(app, limits.max_request_bytes)
