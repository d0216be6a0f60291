"""An exported inference folder: its file names, which format runs, inference.yml, and writing one.

A folder holds what paddle.jit.save writes (Paddle 3.x: inference.json + inference.pdiparams;
older Paddle or FLAGS_enable_pir_api=0: inference.pdmodel + inference.pdiparams; export writes
both, sharing the one parameter file) and inference.yml, which says how to pre-process images
and post-process features, as PaddleX does. The input is [None, 3, H, W] float32 named `x`; the
output is the raw feature (no margin head).

Every other module asks this one what the files are called and which format to run; opening a
folder for inference is engine.inference.model.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import paddle
import yaml
from paddle.base.proto import framework_pb2

from datasets.transforms import to_bgr
from engine.inference.onnx_convert import DEFAULT_TOLERANCE, INT8_FILE_NAME, ONNX_FILE_NAME, convert_checked, log_check
from foundation.atomic_io import atomic_replace_dir, file_digest
from foundation.errors import ConfigError, UserError
from foundation.logger import get_logger
from foundation.runtime import PACKAGES_ROOT
from models import build_backbone, load_backbone_weights

MODEL_FILE_NAMES = ("inference.json", "inference.pdmodel")  # PIR program, old ProgramDesc
PARAMS_FILE_NAME = "inference.pdiparams"
CONFIG_FILE_NAME = "inference.yml"
# Where `models` lives, for the subprocess that writes the old format (see _add_program_format).

def find_model_files(model_dir, prefer=None):
    """(model_file, params_file, format) for an inference folder; UserError naming what is missing.

    When a folder has both formats (engine.runners.export writes both by default) the old ProgramDesc is
    chosen: its executor runs MobileFaceNet about 2x faster than the PIR one on the CPU
    (docs/speed.md) and it can keep PReLU out of bf16.
    `prefer="pir"` or `"program"` overrides that choice.
    """
    model_dir = str(model_dir)
    if not os.path.isdir(model_dir):
        what = "is a file, not a folder" if os.path.exists(model_dir) else "does not exist"
        raise UserError(f"inference model folder {model_dir} {what}: expected a folder with inference.json "
                        "(or inference.pdmodel) and inference.pdiparams, e.g. output/best_model/inference")
    params = os.path.join(model_dir, "inference.pdiparams")
    candidates = [("inference.pdmodel", "program"), ("inference.json", "pir")]
    if prefer == "pir":
        candidates.reverse()
    for name, fmt in candidates:
        model = os.path.join(model_dir, name)
        if os.path.isfile(model):
            if not os.path.isfile(params):
                raise UserError(f"{model_dir} has {name} but no inference.pdiparams (the weights); re-export the model")
            return model, params, fmt
    present = sorted(os.listdir(model_dir))[:8]
    raise UserError(f"no inference model in {model_dir}: expected inference.json (or inference.pdmodel) plus "
                    f"inference.pdiparams, found {', '.join(present) or 'an empty folder'}. "
                    "Export one with -o Global.mode=export")


def program_input_shape(model_file):
    """[N, C, H, W] of a program's first input as the file records it (-1 where free), or None
    when the file does not say (read from the file itself: the feed variable of an old program,
    the first data op of a PIR one)."""
    try:
        if model_file.endswith(".json"):
            with open(model_file, encoding="utf-8") as f:
                ops = json.load(f)["program"]["regions"][0]["blocks"][0]["ops"]
            for op in ops:
                if str(op.get("#", "")).endswith(".data"):
                    shape = next(a["AT"]["D"] for a in op.get("A", []) if a.get("N") == "shape")
                    return [int(d) for d in shape]
            return None
        with open(model_file, "rb") as f:
            block = framework_pb2.ProgramDesc.FromString(f.read()).blocks[0]
        feeds = [arg for op in block.ops if op.type == "feed" for out in op.outputs for arg in out.arguments]
        var = next(v for v in block.vars if feeds and v.name == feeds[0])
        # the field is `lod_tensor` in Paddle 2.x's schema and `dense_tensor` in 3.x's (same wire number)
        tensor = var.type.dense_tensor if hasattr(var.type, "dense_tensor") else var.type.lod_tensor
        return [int(d) for d in tensor.tensor.dims]
    except Exception:  # an unreadable program is reported by whatever loads it next, with Paddle's words
        return None


# bytes per element of the tensor data types a parameter file holds (framework.proto VarType.Type)
_DTYPE_BYTES = {0: 1, 1: 2, 2: 4, 3: 8, 4: 2, 5: 4, 6: 8, 20: 1, 21: 1, 22: 2, 23: 8, 24: 16, 32: 1, 33: 1, 36: 2,
                37: 4, 38: 8}
_DENSE_TENSOR = 7  # VarType.Type of a parameter (LOD_TENSOR in Paddle 2.x, DENSE_TENSOR in 3.x)


def _expected_parameter_count(model_file):
    """How many tensors the program reads from its parameter file, or None when it cannot tell."""
    try:
        if model_file.endswith(".json"):
            with open(model_file, encoding="utf-8") as f:
                ops = json.load(f)["program"]["regions"][0]["blocks"][0]["ops"]
            return sum(1 for op in ops if op.get("#") == "p")  # builtin.parameter
        with open(model_file, "rb") as f:
            block = framework_pb2.ProgramDesc.FromString(f.read()).blocks[0]
        return sum(1 for v in block.vars if v.persistable and v.type.type == _DENSE_TENSOR)
    except Exception:
        return None


def _parameter_tensors(f, size):
    """Walk a combined parameter file as Paddle writes it, one tensor after another (uint32 version,
    uint64 LoD levels and their data, uint32 version, int32 size and TensorDesc, the data), reading
    headers only. Returns (tensors complete, bytes they span, whether the file ends inside a tensor
    whose header began), or None for a layout it does not know."""
    count = offset = 0
    while offset < size:
        head = f.read(12)
        if len(head) < 12:  # a few bytes past the last tensor: too few to tell a header from trailing data
            return count, offset, False
        version, lod_levels = struct.unpack("<IQ", head)
        if version != 0 or lod_levels > 8:
            return None
        for _ in range(lod_levels):
            level = f.read(8)
            if len(level) < 8:
                return count, offset, True
            f.seek(struct.unpack("<Q", level)[0], 1)
        head = f.read(8)
        if len(head) < 8:
            return count, offset, True
        version, desc_size = struct.unpack("<Ii", head)
        desc_bytes = f.read(max(desc_size, 0))
        if len(desc_bytes) < desc_size:
            return count, offset, True
        try:
            desc = framework_pb2.VarType.TensorDesc.FromString(desc_bytes)
        except Exception:  # protobuf's DecodeError: not a tensor header
            return None
        if version != 0 or desc.data_type not in _DTYPE_BYTES:
            return None
        numel = 1
        for d in desc.dims:
            numel *= max(int(d), 0)
        end = f.tell() + numel * _DTYPE_BYTES[desc.data_type]
        if end > size:
            return count, offset, True
        f.seek(end)
        count, offset = count + 1, end
    return count, offset, False


def check_params_file(params_file, model_file):
    """UserError naming the file when inference.pdiparams is cut short (a copy or download that
    stopped): fewer complete tensors than the program reads, found from the tensor headers without
    reading their data. Anything else (a layout the walk does not know, bytes after the last
    tensor, other values) is left for Paddle to judge when it loads the file."""
    size = os.path.getsize(params_file)
    with open(params_file, "rb") as f:
        walked = _parameter_tensors(f, size)
    if walked is None:
        return
    count, offset, inside_a_tensor = walked
    expected = _expected_parameter_count(model_file)
    fix = "the copy is incomplete or damaged: copy, download or export the model again"
    if expected is not None and count >= expected:
        return
    if offset < size and (inside_a_tensor or expected is not None):
        raise UserError(f"{params_file} is cut short: it ends ({size} bytes) inside its tensor {count + 1}"
                        + (f" of {expected}" if expected else "") + f"; {fix}")
    if expected is not None:
        raise UserError(f"{params_file} holds {count} tensors but {os.path.basename(model_file)} needs {expected}; "
                        f"{fix}")


def read_inference_yml(model_dir):
    """inference.yml as a dict ({} when absent: older exports may lack it)."""
    path = os.path.join(model_dir, CONFIG_FILE_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    return data if isinstance(data, dict) else {}


class Preprocess:
    """The image pre-processing an inference.yml describes (PaddleX's PreProcess.transform_ops):
    BGR uint8 HWC -> float32 CHW. Without such a section: the standard face pre-processing
    (112x112 bilinear, RGB, (x/255 - 0.5)/0.5), which is what both our exports and the official
    models write. A picklable object, so decoding threads and processes can use it."""

    def __init__(self, info=None, config_path="inference.yml"):
        self.size = (112, 112)  # (width, height)
        self.scale, self.mean, self.std, self.rgb = 1.0 / 255.0, [0.5] * 3, [0.5] * 3, True
        ops = ((info or {}).get("PreProcess") or {}).get("transform_ops") or []
        for op in ops:
            name, args = (next(iter(op.items())) if isinstance(op, dict) and op else (op, None))
            args = args or {}
            if name == "ResizeImage":
                size = args.get("size") or args.get("resize_short")
                if size is None:
                    raise UserError(f"{config_path}: ResizeImage needs 'size' (e.g. [112, 112])")
                self.size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
            elif name == "NormalizeImage":
                scale = args.get("scale", 1.0 / 255.0)
                self.scale = float(eval_fraction(scale))
                self.mean = [float(v) for v in args.get("mean", self.mean)]
                self.std = [float(v) for v in args.get("std", self.std)]
                self.rgb = str(args.get("channel_order", "rgb")).lower() != "bgr"
            elif name not in ("ToCHWImage", "DecodeImage"):
                raise UserError(f"{config_path}: pre-processing step '{name}' is not supported (supported: "
                                "ResizeImage, NormalizeImage, ToCHWImage)")

    def __call__(self, img_bgr):
        img = to_bgr(img_bgr)
        if (img.shape[1], img.shape[0]) != self.size:
            img = cv2.resize(img, self.size, interpolation=cv2.INTER_LINEAR)
        if self.rgb:
            img = img[:, :, ::-1]
        img = (img.astype(np.float32) * self.scale - np.float32(self.mean)) / np.float32(self.std)
        return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def eval_fraction(value):
    """PaddleX writes scale as a number or as text such as '1./255.'."""
    if isinstance(value, str):
        num, _, den = value.partition("/")
        return float(num) / float(den) if den else float(num)
    return float(value)


def inference_files(folder):
    """{"model", "params", "config"} of an exported folder (the format that runs), or {} when it holds none."""
    if not os.path.isdir(folder) or not any(os.path.isfile(os.path.join(folder, n)) for n in MODEL_FILE_NAMES):
        return {}
    model, params, _ = find_model_files(folder)
    return {"model": model, "params": params, "config": os.path.join(folder, CONFIG_FILE_NAME)}


def has_inference_model(folder):
    return bool(inference_files(folder))


def resolve_model_source(weight_path, setting="Evaluate.weight_path"):
    """('checkpoint', file) or ('inference', dir) for a setting that takes either; UserError if unusable."""
    fix = ("train first (python main.py -c CONFIG -o Global.mode=train) or pass "
           f"-o {setting}=<checkpoint .pdparams or exported inference folder>")
    if not weight_path:
        raise UserError(f"{setting} is empty: {fix}")
    path = str(weight_path)
    if os.path.isfile(path):
        if path.endswith(".pdparams"):
            return "checkpoint", path
        if os.path.basename(path) in MODEL_FILE_NAMES:
            return "inference", os.path.dirname(os.path.abspath(path))
        raise UserError(f"{setting} {path} is neither a .pdparams checkpoint nor an inference model "
                        f"({' / '.join(MODEL_FILE_NAMES)}): {fix}")
    if os.path.isdir(path):
        for folder in (path, os.path.join(path, "inference")):
            if has_inference_model(folder):
                return "inference", folder
        found = sorted(os.listdir(path))[:8]
        raise UserError(f"{setting} {path} is a folder without an inference model (inference.json or "
                        f"inference.pdmodel; found: {', '.join(found) or 'nothing'}): {fix}")
    raise UserError(f"{setting} {path} does not exist: {fix}")


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
if weights != "-":  # "-": the program only (its own random parameters are thrown away)
    state = dict(np.load(weights))
    backbone.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
backbone.eval()
spec = [paddle.static.InputSpec(shape=[None, 3, int(image_size), int(image_size)], dtype="float32", name="x")]
paddle.jit.save(backbone, out, input_spec=spec)
"""


def write_program_format(backbone_name, embedding_size, image_size, out_prefix, state=None):
    """Write <out_prefix>.pdmodel (old ProgramDesc) and .pdiparams of our backbone `backbone_name`,
    with `state`'s parameters (None: random ones, when only the program is wanted), in a child
    process with FLAGS_enable_pir_api=0. Returns None on success, else why not."""
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out_prefix) or None) as work:
        weights = "-"
        if state is not None:
            weights = os.path.join(work, "weights.npz")
            np.savez(weights, **state)
        env = dict(os.environ, FLAGS_enable_pir_api="0")
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _PROGRAM_EXPORT_SCRIPT, PACKAGES_ROOT, backbone_name, str(embedding_size),
                 str(image_size), weights, out_prefix],
                env=env, capture_output=True, text=True, timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"old-format export did not run: {e}"
    if proc.returncode != 0 or not os.path.isfile(out_prefix + ".pdmodel"):
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        return f"old-format export failed: {tail[0]}"
    return None


def _add_program_format(backbone_name, embedding_size, image_size, state, tmp_dir):
    """Also write inference.pdmodel (old ProgramDesc) next to inference.json, sharing
    inference.pdiparams. Returns None on success, else why it was left out (export still succeeds).

    Why both: the old executor runs MobileFaceNet about 2x faster than the PIR executor on the
    CPU (docs/speed.md), and only it can keep PReLU out of oneDNN bf16
    (engine.inference.executors.PaddleExecutor). The parameter files of both formats are
    byte-identical when the parameter names are (fresh unique-name scope on both sides); that is
    checked, not assumed.
    """
    with tempfile.TemporaryDirectory(dir=tmp_dir) as work:
        out = os.path.join(work, "inference")
        why = write_program_format(backbone_name, embedding_size, image_size, out, state)
        if why:
            return why
        if file_digest(out + ".pdiparams") != file_digest(os.path.join(tmp_dir, PARAMS_FILE_NAME)):
            return "old-format parameters differ from the PIR ones"
        os.replace(out + ".pdmodel", os.path.join(tmp_dir, "inference.pdmodel"))
    return None


def verification_record(metrics, source):
    """The inference.yml `Verification` section: how well the model verified, and the cosine
    thresholds that gave it (the pipeline's default rec_threshold comes from here)."""
    far = metrics.get("tar_at_far_threshold_cosine") or {}
    return {
        "source": str(source),
        "protocol": f"{metrics.get('folds', 10)}-fold verification, flip {'on' if metrics.get('protocol', {}).get('flip', True) else 'off'}",
        "pairs": int(metrics.get("num_pairs", 0)),
        "acc": round(float(metrics["acc"]), 6),
        "best_threshold_cosine": round(float(metrics["best_threshold_cosine"]), 6),
        "threshold_cosine_at_far": {k: (None if v is None else round(float(v), 6)) for k, v in far.items()},
    }


def recorded_threshold(info):
    """(cosine threshold, what it is) from an inference.yml's Verification section, or (None, why)."""
    ver = (info or {}).get("Verification") if isinstance(info, dict) else None
    if not isinstance(ver, dict):
        return None, "the model folder records no verified threshold"
    far = ver.get("threshold_cosine_at_far") or {}
    for key in ("1e-3", "1e-2"):
        if far.get(key) is not None:
            return float(far[key]), f"the threshold at FAR {key} verified on {ver.get('source')}"
    if ver.get("best_threshold_cosine") is not None:
        return float(ver["best_threshold_cosine"]), f"the best-accuracy threshold verified on {ver.get('source')}"
    return None, "the model folder records no verified threshold"


def export_inference(backbone, save_dir, model_name, image_size=112, program_format=True, verification=None,
                     onnx=False, onnx_tolerance=DEFAULT_TOLERANCE, int8=None):
    """Write backbone's static inference model and inference.yml to `save_dir`, atomically.
    `verification` (verification_record) is written into inference.yml when given.

    With onnx=True the folder also gets inference.onnx (paddle2onnx from inference.json), checked
    against Paddle's output before anything is swapped in (engine.inference.onnx_convert; UserError and no
    folder change when it disagrees beyond `onnx_tolerance`); the check and the parameter file's
    sha256 go into inference.yml's `Onnx` section, which tells InferenceModel the file is current.
    `int8` (needs onnx): a function of the build folder (engine.inference.int8_gate.quantize_with_gate with
    its settings) that writes inference_int8.onnx there only when it passes its accuracy gate and
    returns the record that goes into inference.yml's `Int8` section, kept or refused.

    Paddle 3.x writes inference.json (PIR). With program_format=True (and a backbone made by
    models.build_backbone) the folder also gets inference.pdmodel, the older format of the same
    graph over the same inference.pdiparams, which engine.inference.model prefers for speed; older
    tools read it too. Returns the paths written: {"dir", "model", "params", "config", "formats"}.
    """
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
            config = inference_config(model_name, size, image_size)
            if verification:
                config["Verification"] = verification
            yaml.safe_dump(config, f, sort_keys=False)
        if not any(os.path.isfile(os.path.join(tmp_dir, n)) for n in MODEL_FILE_NAMES):
            raise RuntimeError(f"paddle.jit.save wrote none of {MODEL_FILE_NAMES} (wrote {sorted(os.listdir(tmp_dir))})")
        if program_format and target is not backbone and os.path.isfile(os.path.join(tmp_dir, "inference.json")):
            why = _add_program_format(backbone_name, embedding_size, image_size, state, tmp_dir)
            if why:
                notes.append(why)
        if onnx:
            model_file = next(os.path.join(tmp_dir, n) for n in MODEL_FILE_NAMES if os.path.isfile(os.path.join(tmp_dir, n)))
            params_file = os.path.join(tmp_dir, PARAMS_FILE_NAME)
            record = convert_checked(model_file, params_file, os.path.join(tmp_dir, ONNX_FILE_NAME),
                                     tolerance=onnx_tolerance, image_size=image_size)
            log_check(record, f"{save_dir}/{ONNX_FILE_NAME}")
            record["params_sha256"] = file_digest(params_file)
            config["Onnx"] = {"file": ONNX_FILE_NAME, **record}
            with open(os.path.join(tmp_dir, CONFIG_FILE_NAME), "w", encoding="utf-8") as f:
                yaml.safe_dump(config, f, sort_keys=False)
            if int8 is not None:
                config["Int8"] = int8(tmp_dir)
                with open(os.path.join(tmp_dir, CONFIG_FILE_NAME), "w", encoding="utf-8") as f:
                    yaml.safe_dump(config, f, sort_keys=False)

    try:
        atomic_replace_dir(build, save_dir)
    finally:
        if was_training:
            backbone.train()
    for note in notes:
        get_logger().warning(f"{save_dir}: only inference.json written ({note})")
    formats = [n for n in MODEL_FILE_NAMES + (ONNX_FILE_NAME, INT8_FILE_NAME) if os.path.isfile(os.path.join(save_dir, n))]
    return {
        "dir": save_dir,
        "model": os.path.join(save_dir, formats[0]),
        "params": os.path.join(save_dir, PARAMS_FILE_NAME),
        "config": os.path.join(save_dir, CONFIG_FILE_NAME),
        "formats": formats,
    }


def export_checkpoint(weight_path, model_name, backbone_name=None, embedding_size=None, image_size=112,
                      save_dir=None, setting="Export.weight_path", onnx=False, onnx_tolerance=DEFAULT_TOLERANCE,
                      int8=None):
    """Build the backbone, load `weight_path` strictly, export (with inference.onnx when `onnx`,
    and the gated inference_int8.onnx when `int8`: see export_inference).
    Returns export_inference's paths plus "loaded_tensors". `save_dir` defaults to <weights folder>/inference."""
    backbone_name = backbone_name or model_name
    if not weight_path:
        raise ConfigError(f"{setting} is empty: give the training checkpoint to export, "
                          f"e.g. -o {setting}=output/best_model/best_model.pdparams")
    weight_path = str(weight_path)
    if not os.path.isfile(weight_path):
        hint = ""
        if os.path.isdir(weight_path):
            found = sorted(f for f in os.listdir(weight_path) if f.endswith(".pdparams"))
            hint = f" (it is a directory; the .pdparams inside: {', '.join(found) or 'none'})"
        raise UserError(f"{setting} {weight_path} does not exist{hint}. Train first or point it at a "
                        ".pdparams checkpoint, e.g. output/best_model/best_model.pdparams")
    backbone = build_backbone(backbone_name, embedding_size=embedding_size)
    report = load_backbone_weights(backbone, weight_path, strict=True)
    if save_dir is None:
        save_dir = os.path.join(os.path.dirname(os.path.abspath(weight_path)), "inference")
    paths = export_inference(backbone, save_dir, model_name, image_size=int(image_size), onnx=onnx,
                             onnx_tolerance=onnx_tolerance, int8=int8)
    paths["loaded_tensors"] = len(report["loaded"])
    return paths
