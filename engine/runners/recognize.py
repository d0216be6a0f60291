"""Global.mode=recognize: who is in each photo, printed and saved per image.

    python main.py -c configs/face_recognition/pipeline.yaml -o Global.mode=recognize -o Predict.input=IMG_OR_DIR

Writes <Global.output>/<name>_res.json (PaddleX's {"res": {"input_path", "boxes": [...]}}) and
<name>_res.jpg with boxes, labels and scores when Predict.save_to_img, per image, and
recognize.log. A thin wrapper over FaceRecognitionPipeline.predict (engine.recognition.pipeline).
"""
import os

from engine.gallery.backend import GallerySettings
from engine.gallery.faiss_index import UNKNOWN_LABEL
from engine.inference.inputs import configured_inputs
from engine.recognition.pipeline import FaceRecognitionPipeline
from foundation.errors import UserError
from foundation.logger import log_to_file
from foundation.progress import Progress


def run(cfg):
    items = configured_inputs(cfg.Predict.input)  # a missing path fails before the model loads
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
    n_images = n_faces = n_known = 0
    with Progress(len(items), desc="recognize", unit="img") as bar:
        for res in pipe.predict(items, index=index):
            res.print(json_format=False)
            res.save_to_json(output)
            if cfg.Predict.save_to_img:
                res.save_to_img(output, draw_landmarks=cfg.Predict.draw_landmarks)
            n_images += 1
            n_faces += len(res["boxes"])
            n_known += sum(b["label"] != UNKNOWN_LABEL for b in res["boxes"])
            bar.update(1)
    print(f"Recognize done: {n_images} image(s), {n_faces} face(s), {n_known} recognised, "
          f"{n_faces - n_known} unknown; results in {output}")
    if pipe.failures:
        shown = "; ".join(f"{p}: {m}" for p, m in pipe.failures[:3])
        raise UserError(f"{len(pipe.failures)} image(s) could not be read and were skipped ({shown}); "
                        f"the other {n_images} results are in {output}")
    return 0
