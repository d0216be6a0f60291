"""Export a backbone as a static inference model (`Global.mode=export`, and the end of training).

The folder holds what paddle.jit.save writes (Paddle 3.x: inference.json + inference.pdiparams;
older Paddle or FLAGS_enable_pir_api=0: inference.pdmodel + inference.pdiparams; by default
both, sharing the one parameter file, see export_inference) and inference.yml, which says how to pre-process images and post-process features, as PaddleX does.
The input is [None, 3, H, W] float32 named `x`; the output is the raw feature (no margin head).
"""
import os

import yaml

from engine.config import get
from foundation.errors import ConfigError, UserError
from foundation.atomic_io import atomic_replace_dir, file_digest
from foundation.logger import get_logger

MODEL_FILE_NAMES = ("inference.json", "inference.pdmodel")
PARAMS_FILE_NAME = "inference.pdiparams"
CONFIG_FILE_NAME = "inference.yml"


def inference_config(model_name, embedding_size, image_size=112):
    """The inference.yml content: PaddleX layout (Global / PreProcess / PostProcess)."""
    return {
        "Global": {
            "model_name": model_name,
            "embedding_size": int(embedding_size),
            "input_shape": [3, int(image_size), int(image_size)],
            "input_name": "x",
        },
        "PreProcess": {
            "transform_ops": [
                {"ResizeImage": {"size": [int(image_size), int(image_size)], "interpolation": "bilinear",
                                 "backend": "cv2", "keep_ratio": False}},
                {"NormalizeImage": {"scale": 1.0 / 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                    "order": "hwc", "channel_order": "rgb"}},
                {"ToCHWImage": None},
            ]
        },
        "PostProcess": {"NormalizeFeatures": None},
    }


# Runs in a fresh interpreter: Paddle 3.x picks the program format when it starts
# (FLAGS_enable_pir_api), so the old ProgramDesc can only be written by another process.
_PROGRAM_EXPORT_SCRIPT = """
import sys
repo, name, size, image_size, weights, out = sys.argv[1:7]
sys.path.insert(0, repo)
import numpy as np
import paddle
from models import build_backbone
with paddle.utils.unique_name.guard():
    backbone = build_backbone(name, embedding_size=int(size))
state = dict(np.load(weights))
backbone.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
backbone.eval()
spec = [paddle.static.InputSpec(shape=[None, 3, int(image_size), int(image_size)], dtype="float32", name="x")]
paddle.jit.save(backbone, out, input_spec=spec)
"""


def _add_program_format(backbone_name, embedding_size, image_size, state, tmp_dir):
    """Also write inference.pdmodel (old ProgramDesc) next to inference.json, sharing
    inference.pdiparams. Returns None on success, else why it was left out (export still succeeds).

    Why both: on this CPU the old executor runs MobileFaceNet about 1.8x faster than the PIR
    executor (batch 64, 2 threads), and only it can keep PReLU out of oneDNN bf16 (see
    engine/inference.py). The parameter files of both formats are byte-identical when the
    parameter names are (fresh unique-name scope on both sides); that is checked, not assumed.
    """
    import subprocess
    import sys
    import tempfile

    import numpy as np

    from engine.config import REPO_ROOT

    with tempfile.TemporaryDirectory(dir=tmp_dir) as work:
        weights = os.path.join(work, "weights.npz")
        np.savez(weights, **state)
        out = os.path.join(work, "inference")
        env = dict(os.environ, FLAGS_enable_pir_api="0")
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _PROGRAM_EXPORT_SCRIPT, REPO_ROOT, backbone_name, str(embedding_size),
                 str(image_size), weights, out],
                env=env, capture_output=True, text=True, timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"old-format export did not run: {e}"
        if proc.returncode != 0 or not os.path.isfile(out + ".pdmodel"):
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            return f"old-format export failed: {tail[0]}"
        if file_digest(out + ".pdiparams") != file_digest(os.path.join(tmp_dir, PARAMS_FILE_NAME)):
            return "old-format parameters differ from the PIR ones"
        os.replace(out + ".pdmodel", os.path.join(tmp_dir, "inference.pdmodel"))
    return None


def export_inference(backbone, save_dir, model_name, image_size=112, program_format=True):
    """Write backbone's static inference model and inference.yml to `save_dir`, atomically.

    Paddle 3.x writes inference.json (PIR). With program_format=True (and a backbone made by
    models.build_backbone) the folder also gets inference.pdmodel, the older format of the same
    graph over the same inference.pdiparams, which engine.inference prefers for speed; older
    tools read it too. Returns the paths written: {"dir", "model", "params", "config", "formats"}.
    """
    import paddle

    from foundation.logger import get_logger

    embedding_size = int(getattr(backbone, "embedding_size", 0) or 0)
    backbone_name = getattr(backbone, "model_name", None)
    was_training = backbone.training
    backbone.eval()  # BatchNorm must use its running statistics in the exported graph
    notes = []

    def build(tmp_dir):
        spec = [paddle.static.InputSpec(shape=[None, 3, image_size, image_size], dtype="float32", name="x")]
        state = {k: v.numpy() for k, v in backbone.state_dict().items()}
        target = backbone
        if program_format and backbone_name and embedding_size:
            # A copy with parameter names from a fresh scope, so the separately written old
            # format names (and therefore stores) its parameters identically.
            from models import build_backbone

            with paddle.utils.unique_name.guard():
                target = build_backbone(backbone_name, embedding_size=embedding_size)
            target.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
            target.eval()
        paddle.jit.save(target, os.path.join(tmp_dir, "inference"), input_spec=spec)
        size = embedding_size
        if not size:  # a backbone without the attribute: ask the model
            with paddle.no_grad():
                size = int(backbone(paddle.zeros([1, 3, image_size, image_size], dtype="float32")).shape[-1])
        with open(os.path.join(tmp_dir, CONFIG_FILE_NAME), "w", encoding="utf-8") as f:
            yaml.safe_dump(inference_config(model_name, size, image_size), f, sort_keys=False)
        if not any(os.path.isfile(os.path.join(tmp_dir, n)) for n in MODEL_FILE_NAMES):
            raise RuntimeError(f"paddle.jit.save wrote none of {MODEL_FILE_NAMES} (wrote {sorted(os.listdir(tmp_dir))})")
        if program_format and target is not backbone and os.path.isfile(os.path.join(tmp_dir, "inference.json")):
            why = _add_program_format(backbone_name, embedding_size, image_size, state, tmp_dir)
            if why:
                notes.append(why)

    try:
        atomic_replace_dir(build, save_dir)
    finally:
        if was_training:
            backbone.train()
    for note in notes:
        get_logger().warning(f"{save_dir}: only inference.json written ({note})")
    formats = [n for n in MODEL_FILE_NAMES if os.path.isfile(os.path.join(save_dir, n))]
    return {
        "dir": save_dir,
        "model": os.path.join(save_dir, formats[0]),
        "params": os.path.join(save_dir, PARAMS_FILE_NAME),
        "config": os.path.join(save_dir, CONFIG_FILE_NAME),
        "formats": formats,
    }


def export_checkpoint(cfg, weight_path, save_dir=None):
    """Build the config's backbone, load `weight_path` strictly, export. Returns export_inference's paths."""
    from models import build_backbone, load_backbone_weights

    model_name = get(cfg, "Global.model") or get(cfg, "Arch.backbone")
    backbone_name = get(cfg, "Arch.backbone", model_name)
    if not weight_path:
        raise ConfigError("Export.weight_path is empty: give the training checkpoint to export, "
                          "e.g. -o Export.weight_path=output/best_model/best_model.pdparams")
    weight_path = str(weight_path)
    if not os.path.isfile(weight_path):
        hint = ""
        if os.path.isdir(weight_path):
            found = sorted(f for f in os.listdir(weight_path) if f.endswith(".pdparams"))
            hint = f" (it is a directory; the .pdparams inside: {', '.join(found) or 'none'})"
        raise UserError(f"Export.weight_path {weight_path} does not exist{hint}. Train first or point it at a "
                        ".pdparams checkpoint, e.g. output/best_model/best_model.pdparams")
    backbone = build_backbone(backbone_name, embedding_size=get(cfg, "Arch.embedding_size"))
    report = load_backbone_weights(backbone, weight_path, strict=True)
    image_size = int(get(cfg, "Arch.image_size", 112))
    if save_dir is None:
        save_dir = os.path.join(os.path.dirname(os.path.abspath(weight_path)), "inference")
    paths = export_inference(backbone, save_dir, model_name, image_size=image_size)
    paths["loaded_tensors"] = len(report["loaded"])
    return paths


def run(cfg):
    """Global.mode=export: Export.weight_path (.pdparams) -> Export.save_dir (default <weights dir>/inference)."""
    from foundation.runtime import setup_paddle

    logger = get_logger()
    setup_paddle(get(cfg, "Global.device", "cpu"), get(cfg, "Global.num_threads", 0), get(cfg, "Global.seed", 42))
    weight_path = get(cfg, "Export.weight_path")
    save_dir = get(cfg, "Export.save_dir")
    paths = export_checkpoint(cfg, weight_path, save_dir)
    logger.info(f"loaded {paths['loaded_tensors']} tensors from {weight_path}")
    logger.info(f"exported {get(cfg, 'Global.model')} inference model to {paths['dir']} "
                f"({', '.join(paths['formats'] + [PARAMS_FILE_NAME, CONFIG_FILE_NAME])})")
    print(f"Export done: {paths['dir']}")
    return 0
