"""Global.mode=predict: the feature of every input image, printed and saved as JSON.

    python main.py -c configs/face_recognition/MobileFaceNet.yaml -o Global.mode=predict \\
        -o Predict.model_dir=output/best_model/inference -o Predict.input=face.jpg

Writes <Global.output>/predict/<name>_res.json per image (input_path and the L2-normalised
feature) and <Global.output>/predict/predict.log. The predictor itself is engine.inference.predictor.
"""
import os

from engine.inference.backends import hpi_settings
from engine.inference.inputs import configured_inputs
from engine.inference.official_models import feature_model_dir
from engine.inference.predictor import FaceFeaturePredictor
from foundation.errors import UserError
from foundation.logger import log_to_file

RESULT_FOLDER = "predict"


def run(cfg):
    items = configured_inputs(cfg.Predict.input)  # a missing path or empty folder fails before the model loads
    model_dir = feature_model_dir(cfg.Predict.model_dir, cfg.Global.model, "Predict.model_dir")
    output = os.path.join(cfg.Global.output, RESULT_FOLDER)
    os.makedirs(output, exist_ok=True)
    logger = log_to_file(os.path.join(output, "predict.log"))
    use_hpip, hpi_config = hpi_settings(cfg.Predict)
    predictor = FaceFeaturePredictor(
        model_dir, device=cfg.Global.device, num_threads=cfg.Global.num_threads,
        run_mode=cfg.Predict.kernel_option.run_mode, detect=cfg.Predict.detect, use_hpip=use_hpip,
        hpi_config=hpi_config, max_image_pixels=cfg.Global.max_image_pixels)
    batch_size = cfg.Predict.batch_size
    logger.info(f"{predictor}: batch {batch_size}, {predictor.model.describe()}"
                + (", detect + align the main face of each photo" if cfg.Predict.detect else ""))
    written = 0
    for res in predictor.predict(items, batch_size=batch_size):
        res.print(json_format=False)
        res.save_to_json(output)
        written += 1
    logger.info(f"saved {written} result(s) as {output}/<name>_res.json")
    if predictor.failures:
        shown = "; ".join(f"{p}: {m}" for p, m in predictor.failures[:3])
        more = f" (and {len(predictor.failures) - 3} more)" if len(predictor.failures) > 3 else ""
        raise UserError(f"{len(predictor.failures)} of {written + len(predictor.failures)} images failed and were "
                        f"skipped ({shown}{more}); the other {written} results are in {output}")
    print(f"Predict done: {written} result(s) in {output}")
    return 0
