"""Global.mode=export: a training checkpoint (Export.weight_path) -> a static inference folder.

The folder's layout and how it is written live in engine/inference_folder.py. Export.formats
adds inference.onnx (paddle2onnx, checked against Paddle at export; engine/onnx_convert.py):
null writes it where paddle2onnx is installed (the `hpi` extra) and says so where it is not.
"""
import importlib.util

from engine.config_schema import EXPORT_FORMATS
from engine.inference_backends import HPI_INSTALL
from engine.inference_folder import CONFIG_FILE_NAME, PARAMS_FILE_NAME, export_checkpoint
from foundation.errors import ConfigError
from foundation.logger import get_logger
from foundation.runtime import setup_paddle


def wants_onnx(formats):
    """Whether Export.formats asks for inference.onnx (None: where paddle2onnx is installed)."""
    if formats is None:
        if importlib.util.find_spec("paddle2onnx") is None:
            get_logger().info(f"no inference.onnx: paddle2onnx is not installed ({HPI_INSTALL}); "
                              "OpenVINO / ONNX Runtime convert the model on first use instead")
            return False
        return True
    formats = [str(f) for f in formats]
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad:
        raise ConfigError(f"Export.formats {formats}: {', '.join(bad)} is not one of {', '.join(EXPORT_FORMATS)}")
    if "paddle" not in formats:
        raise ConfigError(f"Export.formats {formats} must include paddle: the ONNX model is converted from the "
                          "Paddle files, which evaluate and predict also run (e.g. -o Export.formats=[paddle,onnx])")
    return "onnx" in formats


def run(cfg):
    """Export.weight_path (.pdparams) -> Export.save_dir (default <weights dir>/inference)."""
    logger = get_logger()
    onnx = wants_onnx(cfg.Export.formats)  # a bad value fails before Paddle does anything
    setup_paddle(cfg.Global.device, cfg.Global.num_threads, cfg.Global.seed)
    weight_path = cfg.Export.weight_path
    model_name = cfg.Global.model
    paths = export_checkpoint(weight_path, model_name, cfg.Arch.backbone, cfg.Arch.embedding_size, cfg.Arch.image_size,
                              save_dir=cfg.Export.save_dir,  # None: <weights folder>/inference
                              onnx=onnx, onnx_tolerance=cfg.Export.onnx_tolerance)
    logger.info(f"loaded {paths['loaded_tensors']} tensors from {weight_path}")
    logger.info(f"exported {model_name} inference model to {paths['dir']} "
                f"({', '.join(paths['formats'] + [PARAMS_FILE_NAME, CONFIG_FILE_NAME])})")
    print(f"Export done: {paths['dir']}")
    return 0
