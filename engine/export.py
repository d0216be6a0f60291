"""Global.mode=export: a training checkpoint (Export.weight_path) -> a static inference folder.

The folder's layout and how it is written live in engine/inference_folder.py.
"""
from engine.config import get
from engine.inference_folder import CONFIG_FILE_NAME, PARAMS_FILE_NAME, export_checkpoint
from foundation.logger import get_logger
from foundation.runtime import setup_paddle


def run(cfg):
    """Export.weight_path (.pdparams) -> Export.save_dir (default <weights dir>/inference)."""
    logger = get_logger()
    setup_paddle(get(cfg, "Global.device", "cpu"), get(cfg, "Global.num_threads", 0), get(cfg, "Global.seed", 42))
    weight_path = get(cfg, "Export.weight_path")
    model_name = get(cfg, "Global.model") or get(cfg, "Arch.backbone")
    paths = export_checkpoint(weight_path, model_name, get(cfg, "Arch.backbone", model_name),
                              get(cfg, "Arch.embedding_size"), int(get(cfg, "Arch.image_size", 112)),
                              save_dir=get(cfg, "Export.save_dir"))
    logger.info(f"loaded {paths['loaded_tensors']} tensors from {weight_path}")
    logger.info(f"exported {model_name} inference model to {paths['dir']} "
                f"({', '.join(paths['formats'] + [PARAMS_FILE_NAME, CONFIG_FILE_NAME])})")
    print(f"Export done: {paths['dir']}")
    return 0
