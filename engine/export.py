"""Global.mode=export: a training checkpoint (Export.weight_path) -> a static inference folder.

The folder's layout and how it is written live in engine/inference_folder.py.
"""
from engine.inference_folder import CONFIG_FILE_NAME, PARAMS_FILE_NAME, export_checkpoint
from foundation.logger import get_logger
from foundation.runtime import setup_paddle


def run(cfg):
    """Export.weight_path (.pdparams) -> Export.save_dir (default <weights dir>/inference)."""
    logger = get_logger()
    setup_paddle(cfg.Global.device, cfg.Global.num_threads, cfg.Global.seed)
    weight_path = cfg.Export.weight_path
    model_name = cfg.Global.model
    paths = export_checkpoint(weight_path, model_name, cfg.Arch.backbone, cfg.Arch.embedding_size, cfg.Arch.image_size,
                              save_dir=cfg.Export.save_dir)  # None: <weights folder>/inference
    logger.info(f"loaded {paths['loaded_tensors']} tensors from {weight_path}")
    logger.info(f"exported {model_name} inference model to {paths['dir']} "
                f"({', '.join(paths['formats'] + [PARAMS_FILE_NAME, CONFIG_FILE_NAME])})")
    print(f"Export done: {paths['dir']}")
    return 0
