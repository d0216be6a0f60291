"""Global.mode=export: a training checkpoint (Export.weight_path) -> a static inference folder.

The folder's layout and how it is written live in engine/inference/folder.py. Export.formats
adds inference.onnx (paddle2onnx, checked against Paddle at export; engine/inference/onnx_convert.py):
null writes it where paddle2onnx is installed (the `hpi` extra) and says so where it is not.

Export.int8 also writes inference_int8.onnx (NNCF post-training int8, calibrated on
Export.int8_calibration training faces of Global.dataset_dir) only when its val-pair verification
accuracy is at most Export.int8_max_loss points below fp32's (engine/inference/int8_gate.py); both accuracies
go into inference.yml's `Int8` section either way, and a refusal is one line saying why. Never on
by default, and nothing chooses int8 automatically afterwards (hpi_config.precision=int8 runs it).
"""
import functools
import importlib.util

from datasets.demo import resolve_dataset_dir
from engine.config.schema import EXPORT_FORMATS
from engine.inference.backends import HPI_INSTALL, INT8_INSTALL, require
from engine.inference.folder import CONFIG_FILE_NAME, PARAMS_FILE_NAME, export_checkpoint, read_inference_yml
from engine.inference.int8_gate import quantize_with_gate
from foundation.errors import ConfigError
from foundation.logger import get_logger
from foundation.runtime import num_threads_from, setup_paddle


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


def int8_gate(cfg, onnx):
    """None without Export.int8, else the gate export_inference calls on its build folder."""
    if not cfg.Export.int8:
        return None
    if not onnx:
        raise ConfigError("Export.int8 quantizes inference.onnx: keep the ONNX format (Export.formats null or "
                          f"[paddle, onnx], with paddle2onnx installed: {HPI_INSTALL})")
    for package in ("nncf", "openvino"):
        require(package, f"Export.int8 ({INT8_INSTALL})")
    if str(cfg.Global.device).startswith("gpu"):
        raise ConfigError("Export.int8 measures the int8 model on the CPU (OpenVINO): use Global.device=cpu")
    return functools.partial(quantize_with_gate, dataset_dir=resolve_dataset_dir(cfg.Global.dataset_dir),
                             calibration=cfg.Export.int8_calibration, max_loss=cfg.Export.int8_max_loss,
                             flip=cfg.Evaluate.flip, folds=cfg.Evaluate.folds, batch_size=cfg.Evaluate.batch_size,
                             num_threads=num_threads_from(cfg.Global.num_threads),
                             max_pixels=cfg.Global.max_image_pixels)


def run(cfg):
    """Export.weight_path (.pdparams) -> Export.save_dir (default <weights dir>/inference)."""
    logger = get_logger()
    onnx = wants_onnx(cfg.Export.formats)  # a bad value fails before Paddle does anything
    int8 = int8_gate(cfg, onnx)
    setup_paddle(cfg.Global.device, cfg.Global.num_threads, cfg.Global.seed)
    weight_path = cfg.Export.weight_path
    model_name = cfg.Global.model
    paths = export_checkpoint(weight_path, model_name, cfg.Arch.backbone, cfg.Arch.embedding_size, cfg.Arch.image_size,
                              save_dir=cfg.Export.save_dir,  # None: <weights folder>/inference
                              onnx=onnx, onnx_tolerance=cfg.Export.onnx_tolerance, int8=int8)
    logger.info(f"loaded {paths['loaded_tensors']} tensors from {weight_path}")
    logger.info(f"exported {model_name} inference model to {paths['dir']} "
                f"({', '.join(paths['formats'] + [PARAMS_FILE_NAME, CONFIG_FILE_NAME])})")
    if int8 is not None:
        print(f"Export.int8: {read_inference_yml(paths['dir'])['Int8']['reason']}")
    print(f"Export done: {paths['dir']}")
    return 0
