"""Global.mode=recognize: who is in each photo and video, printed and saved per input.

    python main.py -c configs/face_recognition/pipeline.yaml -o Global.mode=recognize -o Predict.input=IMG_DIR_OR_VIDEO

Per image: <Global.output>/<name>_res.json (PaddleX's {"res": {"input_path", "boxes": [...]}}) and
<name>_res.jpg with boxes, labels and scores when Predict.save_to_img. Per video, camera or stream:
<name>_res.json (tracks and the per-person timeline) and <name>_res.webm (boxes, names, track ids)
when Video.save_video, and a line per person on the console. recognize.log beside them. Ctrl-C or
SIGTERM during a video writes what was processed, marked partial, and exits 130. A thin wrapper
over FaceRecognitionPipeline.predict and engine.recognition.video.recognize_video.
"""
import os
import signal

from engine.gallery.backend import GallerySettings
from engine.gallery.faiss_index import UNKNOWN_LABEL
from engine.inference.inputs import configured_inputs, segments
from engine.recognition.pipeline import FaceRecognitionPipeline
from engine.recognition.video import VideoSettings, recognize_video
from foundation.errors import UserError
from foundation.logger import log_to_file
from foundation.progress import Progress


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # a video in progress is then written as far as it got, marked partial


def run(cfg):
    items = configured_inputs(cfg.Predict.input, videos=True)  # a missing path fails before the model loads
    video_settings = VideoSettings.from_config(cfg.Video)
    index_dir = cfg.index
    if not index_dir:
        raise UserError("`index` is empty: set -o index=<gallery index folder> (build one with Global.mode=build_index)")
    index = GallerySettings.from_config(cfg.Index).open(index_dir)  # ... and a missing, broken or unreachable index
    output = cfg.Global.output
    os.makedirs(output, exist_ok=True)
    log = log_to_file(os.path.join(output, "recognize.log"))
    pipe = FaceRecognitionPipeline.from_config(cfg)
    index = pipe.resolve_index(index)  # refuses an index another model built
    log.info(f"index {index_dir}: {len(index)} faces of {len(index.labels)} people "
             f"({index.index_type}, {index.metric_type}); model {pipe.model.model_name}; rec_threshold "
             f"{pipe.rec_threshold:.3f} ({pipe.rec_threshold_source})")
    n_images = n_faces = n_known = n_videos = 0
    failures, interrupted, video_failed = [], False, False
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        for segment in segments(items):
            if isinstance(segment, list):
                with Progress(len(segment), desc="recognize", unit="img") as bar:
                    for res in pipe.predict(segment, index=index):
                        res.print(json_format=False)
                        res.save_to_json(output)
                        if cfg.Predict.save_to_img:
                            res.save_to_img(output, draw_landmarks=cfg.Predict.draw_landmarks)
                        n_images += 1
                        n_faces += len(res["boxes"])
                        n_known += sum(b["label"] != UNKNOWN_LABEL for b in res["boxes"])
                        bar.update(1)
                failures.extend(pipe.failures)
                continue
            try:
                result = recognize_video(pipe, segment.input_path, index, video_settings, name=segment.name,
                                         save_dir=output, save_video=cfg.Video.save_video)
            except UserError as e:
                if segment.explicit:
                    raise
                failures.append((segment.input_path, str(e)))  # one bad video in a folder: skip it
                video_failed = True
                log.warning(f"skipped {segment.input_path}: {e}")
                continue
            result.save_to_json(output)
            print(result)
            if result["ended_early"]:
                log.warning(f"{result['input_path']}: {result['ended_early']}")
            n_videos += 1
            if result["interrupted"]:
                interrupted = True
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
    what = f"{n_images} image(s), {n_faces} face(s), {n_known} recognised, {n_faces - n_known} unknown"
    if n_videos:
        what += f"; {n_videos} video(s)"
    if interrupted:
        print(f"Interrupted: {what}; the last video's results (marked partial) and everything before it are in "
              f"{output}")
        return 130
    print(f"Recognize done: {what}; results in {output}")
    if failures:
        shown = "; ".join(f"{p}: {m}" for p, m in failures[:3])
        kind = "input" if video_failed else "image"
        raise UserError(f"{len(failures)} {kind}(s) could not be read and were skipped ({shown}); "
                        f"the other results are in {output}")
    return 0
