"""The face recognition endpoints, PaddleX's serving API:

    POST /face-recognition-index-build   {"imageLabelPairs": [{"image", "label"}]}
                                         -> {"indexKey", "imageCount", "idMap"}
    POST /face-recognition-index-add     {"imageLabelPairs": [...], "indexKey"} -> {"imageCount", "idMap"}
    POST /face-recognition-index-remove  {"ids": [int], "indexKey"} -> {"imageCount", "idMap", "missingIds"}
    POST /face-recognition-index-info    {"indexKey"} -> {"imageCount", "idMap", "labels", ...} (ours, read-only)
    POST /face-recognition-infer         {"image", "indexKey"?, "detThreshold"?, "recThreshold"?,
                                          "hammingRadius"?, "topk"?, "visualize"?}
                                         -> {"faces": [{"bbox", "recResults": [{"label", "score"}],
                                             "score", "label", "labelScore"}], "image": JPEG base64 | null}
    GET  /health                         -> {"status": "ok", "model", "embeddingSize", "index", "indexes",
                                             "defaultIndex": {"name", "faces"} | null};
                                            503 {"status": "error", "errorMsg"} when Milvus does not answer

Both result forms of PaddleX's versions are given: imageCount (3.0) and idMap (3.0 beta).
`recResults` holds the matches at or above the threshold (empty: unknown); `label` and
`labelScore` are ours (the top-1 decision, the nearest cosine).

Every model call runs on one worker thread (the predictor is not thread-safe, and two threads
would only share the same cores); decoding, URL fetches and index writes run beside it.
"""
import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor

import cv2
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from engine.serving.envelope import ServiceError, ok
from engine.serving.images import ImageIntake
from engine.serving.schemas import (
    AddImagesToIndexRequest,
    BuildIndexRequest,
    IndexInfoRequest,
    InferRequest,
    RemoveImagesFromIndexRequest,
)


def id_map(index):
    return {str(i): lbl for i, lbl in index.id_map.items()}


class FaceRecognitionEndpoints:
    """The endpoints over one pipeline (engine.recognition.pipeline.FaceRecognitionPipeline) and one
    store of indexes per indexKey (engine.gallery.store)."""

    def __init__(self, pipeline, store, limits, visualize=True):
        self.pipeline, self.store, self.limits = pipeline, store, limits
        self.visualize = bool(visualize)  # PaddleX's Serving.visualize: infer's default
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.health_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")  # never queued behind requests
        self.intake = ImageIntake(limits)
        # searched without an indexKey: the pipeline's configured index when it was loaded, else nothing
        self.default_index = pipeline.index or pipeline.new_index(in_memory=True)

    def register(self, app):
        app.post("/face-recognition-index-build")(self.build_index)
        app.post("/face-recognition-index-add")(self.add_to_index)
        app.post("/face-recognition-index-remove")(self.remove_from_index)
        app.post("/face-recognition-index-info")(self.index_info)
        app.post("/face-recognition-infer")(self.infer)
        app.get("/health")(self.health)

    async def on_model(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, lambda: fn(*args, **kwargs))

    # ------------------------------------------------------------------ enrolment
    def _pairs(self, request_pairs):
        if not request_pairs:
            raise ServiceError(422, "imageLabelPairs is empty: give at least one {\"image\", \"label\"}")
        if len(request_pairs) > self.limits.max_images_per_request:
            raise ServiceError(413, f"{len(request_pairs)} images in one request, above the limit of "
                                    f"{self.limits.max_images_per_request} (Serve.max_images_per_request): split it")
        for i, pair in enumerate(request_pairs):
            if not pair.label.strip():
                raise ServiceError(422, f"imageLabelPairs[{i}].label is empty")
        return request_pairs

    async def _enrol(self, request_pairs):
        """The Enrolment of a request's image-label pairs (an image with no face found is embedded
        whole, as PaddleX's service does, and logged)."""
        pairs = self._pairs(request_pairs)
        wheres = [f"imageLabelPairs[{i}].image" for i in range(len(pairs))]
        found = await self.intake.take([p.image for p in pairs], wheres)
        # decoded one at a time on the model thread, each dropped once its face is cropped
        items = [(self.intake.decoder(data, where), p.label.strip()) for data, where, p in zip(found, wheres, pairs)]
        enrolment = await self.on_model(self.pipeline.enroll, items, progress=False)
        if enrolment.skipped:
            raise ServiceError(422, "; ".join(why for _, why in enrolment.skipped[:3]) + "; nothing was added")
        return enrolment

    # ------------------------------------------------------------------ endpoints
    async def build_index(self, request: BuildIndexRequest):
        enrolment = await self._enrol(request.imageLabelPairs)
        index = self.pipeline.new_index("Flat", "IP", in_memory=True)  # what PaddleX's service builds
        index.add(enrolment.features, enrolment.labels)
        key = await run_in_threadpool(self.store.create, index)
        stored = await run_in_threadpool(self.store.get, key)  # a Milvus store gives its own ids
        return ok({"indexKey": key, "imageCount": len(stored), "idMap": id_map(stored)})

    async def add_to_index(self, request: AddImagesToIndexRequest):
        await run_in_threadpool(self.store.get, request.indexKey)  # an unknown key before any model work
        enrolment = await self._enrol(request.imageLabelPairs)
        model = self.pipeline.model

        def change(index):
            index.check_model(model.model_name, model.embedding_size, self.pipeline.fingerprint,
                              what="service model's")
            index.add(enrolment.features, enrolment.labels)

        index, _ = await run_in_threadpool(self.store.update, request.indexKey, change)
        return ok({"imageCount": len(index), "idMap": id_map(index)})

    async def remove_from_index(self, request: RemoveImagesFromIndexRequest):
        current = await run_in_threadpool(self.store.get, request.indexKey)
        if not set(request.ids) & set(current.entries):  # nothing to remove: no new version is written
            return ok({"imageCount": len(current), "idMap": id_map(current), "missingIds": sorted(set(request.ids))})

        def change(index):
            missing = sorted(set(request.ids) - set(index.entries))
            index.remove_ids(request.ids)
            return missing

        index, missing = await run_in_threadpool(self.store.update, request.indexKey, change)
        return ok({"imageCount": len(index), "idMap": id_map(index), "missingIds": missing})

    async def index_info(self, request: IndexInfoRequest):  # ours: read an index without changing it
        index = await run_in_threadpool(self.store.get, request.indexKey)
        return ok({"imageCount": len(index), "idMap": id_map(index), "labels": index.labels,
                   "indexType": index.index_type, "metricType": index.metric_type})

    async def infer(self, request: InferRequest):
        if request.indexKey is None:
            index = self.default_index
        else:
            index = await run_in_threadpool(self.store.get, request.indexKey)
        for name, value, low, high in (("detThreshold", request.detThreshold, 0.0, 1.0),
                                       ("recThreshold", request.recThreshold, -1.0, 1.0)):
            if value is not None and not low <= value <= high:
                raise ServiceError(422, f"{name} {value} is outside {low:g} to {high:g}")
        if request.topk is not None and request.topk < 1:
            raise ServiceError(422, f"topk must be at least 1, got {request.topk}")
        (data,) = await self.intake.take([request.image], ["image"])
        img = await self.intake.decode(data, "image")
        res = await self.on_model(self.pipeline.recognize_image, img, index=index, det_threshold=request.detThreshold,
                                  rec_threshold=request.recThreshold, rec_topk=request.topk)
        faces = [{"bbox": box["coordinate"],
                  "recResults": [{"label": lbl, "score": s}
                                 for lbl, s in zip(box["labels"] or [], box["rec_scores"] or [])],
                  "score": box["det_score"], "label": box["label"], "labelScore": box["score"]}
                 for box in res["boxes"]]
        drawn = None
        if request.visualize if request.visualize is not None else self.visualize:
            jpeg = await run_in_threadpool(lambda: cv2.imencode(".jpg", res.draw())[1].tobytes())
            drawn = base64.b64encode(jpeg).decode("ascii")
        return ok({"faces": faces, "image": drawn})

    async def health(self):  # plain JSON, as load balancers and probes expect
        # a Milvus server that does not answer: 503; on a thread of its own, so busy requests never delay it
        problem = await asyncio.get_running_loop().run_in_executor(self.health_thread, self.store.check)
        model = self.pipeline.model
        if problem:
            return JSONResponse({"status": "error", "model": model.model_name, "index": self.store.root,
                                 "errorMsg": problem}, status_code=503)
        default = None
        if self.pipeline.index is not None:  # what infer searches without an indexKey
            default = {"name": self.pipeline.index_name, "faces": len(self.pipeline.index)}
        return JSONResponse({"status": "ok", "model": model.model_name, "embeddingSize": model.embedding_size,
                             "index": self.store.root, "indexes": len(self.store.keys()), "defaultIndex": default})
