"""The runners: one module per mode, each with `run(cfg) -> int` (the process exit code). A runner
only runs: it takes the checked config, builds what its mode needs from the wings and writes the
mode's output files. No runner imports another, and no wing imports a runner.

A runner's module is imported only when its mode runs, so `check_dataset` never pays for Paddle.
"""
import importlib

from engine.config.loader import nearest
from engine.config.schema import MODEL_MODES, PIPELINE_MODES
from foundation.errors import ConfigError

MODES = MODEL_MODES + PIPELINE_MODES
# module of engine.runners per mode: its own name, except the three index modes, which share one
MODULES = {mode: mode for mode in MODES} | {m: "index" for m in ("build_index", "append_index", "remove_index")}


def runner_for(mode):
    """The `run` function of a mode's module; raises ConfigError for unknown modes."""
    if mode not in MODULES:
        close = nearest(str(mode), list(MODES))
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown mode '{mode}'. Modes: {', '.join(MODES)}.{hint}")
    name = f"{__name__}.{MODULES[mode]}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            raise NotImplementedError(f"mode '{mode}' is not implemented yet") from None
        raise
    return module.run
