"""Runners (one module per mode, each with `run(cfg) -> int`, the process exit code) and the
modules they share: config and its schema, builders, the inference folder and predictor, model
inputs, results, verification, checkpoints, the recognition pipeline (see README "Where things live").

A runner's module is imported only when its mode runs, so `check_dataset` never pays for Paddle.
"""
import importlib

from engine.config import nearest
from foundation.errors import ConfigError

MODES = {
    "check_dataset": "engine.check_dataset",
    "train": "engine.train",
    "evaluate": "engine.evaluate",
    "predict": "engine.predict",
    "export": "engine.export",
    "build_index": "engine.build_index",
    "append_index": "engine.build_index",
    "remove_index": "engine.build_index",
    "recognize": "engine.recognize",
    "serve": "engine.serve",
}


def runner_for(mode):
    """The `run` function of a mode's module; raises ConfigError for unknown modes."""
    if mode not in MODES:
        close = nearest(str(mode), list(MODES))
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown mode '{mode}'. Modes: {', '.join(MODES)}.{hint}")
    try:
        module = importlib.import_module(MODES[mode])
    except ModuleNotFoundError as e:
        if e.name == MODES[mode]:
            raise NotImplementedError(f"mode '{mode}' is not implemented yet") from None
        raise
    return module.run


def create_model(model_name=None, model_dir=None, **kwargs):
    """Python API: a face feature predictor (see engine.predict.create_model)."""
    # imported here, not at the top: the package stays free of Paddle so that main.py can
    # reject a bad config before Paddle loads
    from engine.predictor import create_model as _create_model

    return _create_model(model_name, model_dir=model_dir, **kwargs)


def create_pipeline(pipeline="face_recognition", device=None, config=None, use_hpip=None, hpi_config=None):
    """Python API, PaddleX's: the face recognition pipeline (see engine.recognition.create_pipeline)."""
    from engine.recognition import create_pipeline as _create_pipeline  # Paddle loads here, as above

    return _create_pipeline(pipeline, device=device, config=config, use_hpip=use_hpip, hpi_config=hpi_config)
