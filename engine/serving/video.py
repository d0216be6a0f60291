"""The service's video endpoints (ours; PaddleX's serving has none):

    POST /face-recognition-video  {"video": base64 | http(s) URL, "indexKey"?, "recThreshold"?}
                                  -> {"fps", "frames", "duration", "partial", "endedEarly",
                                      "tracks": [{"trackId", "label", "score", "startTime", "endTime"}],
                                      "timeline": {label: [[start, end], ...]}}
    POST /face-recognition-live   {"image": base64 JPEG of one camera frame, "session"?, "indexKey"?, "end"?}
                                  -> {"session", "frame", "faces": [{"trackId", "bbox", "label", "score"}]}
                                     (with "end": true, also "tracks" and "timeline", and the session ends)

A clip is bounded like any request body (Serve.max_request_mb), by its length
(Serve.max_video_seconds: refused up front when its header says longer, cut there otherwise) and
by the time it may take (Serve.video_timeout: the answer is then marked partial). It runs on the
model thread, so other requests wait for it: keep clips short. Live mode keeps a tracker per
session (the web page's camera streams one frame per request, the next sent when the answer
comes); at most Serve.max_live_sessions at once, each dropped after Serve.live_idle_seconds
without a frame.
"""
import asyncio
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from pydantic import BaseModel

from datasets.video import open_video
from engine.recognition.video import VideoRecognizer, timeline
from engine.serving.envelope import ServiceError, client_text, ok
from foundation.errors import UserError

LIVE_FPS = 10.0  # what a live session's tracker assumes between frames (the page sends about that many)


@dataclass
class VideoLimits:
    max_video_seconds: float = 120.0
    video_timeout: float = 120.0
    max_live_sessions: int = 8
    live_idle_seconds: float = 30.0


class VideoRequest(BaseModel):
    video: str
    indexKey: Optional[str] = None
    recThreshold: Optional[float] = None


class LiveRequest(BaseModel):
    image: str
    session: Optional[str] = None
    indexKey: Optional[str] = None
    end: bool = False


def _tracks(tracks):
    return [{"trackId": t["track_id"], "label": t["label"], "score": t["score"], "startTime": t["start_time"],
             "endTime": t["end_time"], "embeddings": t["embeddings"]} for t in tracks]


class _LiveSession:
    def __init__(self, session, index):
        self.session, self.index = session, index
        self.started = self.last_seen = time.monotonic()
        self.frames = 0
        self.busy = False  # a frame of this session is being processed: the next one waits its turn


class VideoEndpoints:
    """The video endpoints over the face endpoints' pipeline, model thread and intake."""

    def __init__(self, faces, settings, limits=None):
        self.faces = faces  # engine.serving.endpoints.FaceRecognitionEndpoints
        self.settings = settings  # engine.recognition.video.VideoSettings (the config's Video section)
        self.limits = limits or VideoLimits()
        self.live_sessions = {}

    def register(self, app):
        app.post("/face-recognition-video")(self.video)
        app.post("/face-recognition-live")(self.live)

    async def _index(self, key):
        if key is None:
            return self.faces.default_index
        return await asyncio.get_running_loop().run_in_executor(None, self.faces.store.get, key)

    def _recognizer(self, rec_threshold):
        if rec_threshold is not None and not -1.0 <= rec_threshold <= 1.0:
            raise ServiceError(422, f"recThreshold {rec_threshold} is outside -1 to 1")
        return VideoRecognizer(self.faces.pipeline, self.settings, rec_threshold=rec_threshold)

    # ------------------------------------------------------------------ a clip
    async def video(self, request: VideoRequest):
        index = await self._index(request.indexKey)
        recognizer = self._recognizer(request.recThreshold)
        data = await self.faces.intake.raw_bytes(request.video, "video")
        limit = self.faces.limits.max_request_bytes
        if len(data) > limit:
            raise ServiceError(413, f"the video is {len(data) / 2**20:.1f} MB, above the limit of "
                                    f"{limit / 2**20:g} MB (Serve.max_request_mb)")
        with tempfile.TemporaryDirectory(prefix="facefeat_video_") as work:
            path = os.path.join(work, "clip")
            with open(path, "wb") as f:
                f.write(data)
            del data
            result = await self.faces.on_model(self._run_clip, recognizer, path, index)
        return ok({"fps": result["fps"], "frames": result["frames"], "duration": result["duration"],
                   "partial": result["partial"],
                   "endedEarly": client_text(result["ended_early"]) if result["ended_early"] else None,
                   "tracks": _tracks(result["tracks"]), "timeline": result["timeline"]})

    def _run_clip(self, recognizer, path, index):
        try:
            source = open_video(path, self.faces.limits.max_image_pixels, reconnects=0)
        except UserError as e:
            raise ServiceError(422, str(e).replace(path, "the video")) from None
        try:
            max_frames = int(self.limits.max_video_seconds * source.fps)
            if source.frame_count > max_frames:
                raise ServiceError(413, f"the video is {source.frame_count / source.fps:.0f} s long, above the "
                                        f"limit of {self.limits.max_video_seconds:g} s (Serve.max_video_seconds)")
            deadline = time.monotonic() + self.limits.video_timeout
            result = recognizer.run(source, index, stop=lambda: source.frames_read >= max_frames
                                    or time.monotonic() > deadline)
        except UserError as e:
            raise ServiceError(422, str(e).replace(path, "the video")) from None
        finally:
            source.close()
        return result

    # ------------------------------------------------------------------ live frames
    def _drop_idle(self):
        now = time.monotonic()
        for key in [k for k, s in self.live_sessions.items()
                    if now - s.last_seen > self.limits.live_idle_seconds and not s.busy]:
            del self.live_sessions[key]

    async def _session(self, request):
        self._drop_idle()
        if request.session is None:
            if len(self.live_sessions) >= self.limits.max_live_sessions:
                raise ServiceError(429, f"{len(self.live_sessions)} live sessions are open, the most this server "
                                        "takes (Serve.max_live_sessions); try again when one ends")
            index = await self._index(request.indexKey)
            key = secrets.token_urlsafe(12)
            recognizer = self._recognizer(None)
            self.live_sessions[key] = _LiveSession(recognizer.session(index, LIVE_FPS, detect_every=1), index)
            return key, self.live_sessions[key]
        live = self.live_sessions.get(request.session)
        if live is None:
            raise ServiceError(404, "no such live session (it ended, or was idle too long): start a new one "
                                    "without `session`")
        return request.session, live

    async def live(self, request: LiveRequest):
        key, live = await self._session(request)
        if live.busy:
            raise ServiceError(409, "this session's previous frame is still being processed: send the next frame "
                                    "when its answer comes")
        live.busy = True
        try:
            (data,) = await self.faces.intake.take([request.image], ["image"])
            img = await self.faces.intake.decode(data, "image")
            seconds = time.monotonic() - live.started
            frame = live.frames
            live.frames += 1
            seen = await self.faces.on_model(live.session.see, frame, seconds, img)
        finally:
            live.busy = False
            live.last_seen = time.monotonic()
        out = {"session": key, "frame": frame,
               "faces": [{"trackId": t.track_id, "bbox": [round(float(v), 1) for v in t.box], "label": ev.label,
                          "score": None if ev.score is None else round(ev.score, 4)} for t, ev in seen]}
        if request.end:
            tracks = live.session.finish()
            del self.live_sessions[key]
            out.update({"tracks": _tracks(tracks), "timeline": timeline(tracks, self.settings.merge_gap_seconds)})
        return ok(out)
