"""A Paddle inference model -> ONNX (paddle2onnx), checked against Paddle's own output; the cache.

Both Paddle formats convert (inference.json, PIR, and inference.pdmodel; opset 11). An old
program from an earlier exporter may lack attributes that its ops gained later (Paddle <= 2.2.1
wrote prelu without `data_format`); Paddle's old executor fills in their defaults when it runs
such a program, but the translation into PIR that paddle2onnx goes through does not and stops
("Type of attribute: data_format is not pir::StrAttribute"). So paddle2onnx is given a copy of
the program with those defaults written in (`complete_program`), while the check's reference
features come from the user's files as they are.

The conversion runs in a child interpreter: paddle2onnx prints to stdout from C++ and sets Paddle
flags, neither of which belongs in the caller's process, and the child also computes Paddle's
reference features for the check. The check runs the new ONNX model (onnxruntime, else OpenVINO,
fp32) on CHECK_IMAGES seeded synthetic face-sized inputs and refuses it when the largest feature
difference, relative to the largest Paddle feature value, is above the tolerance or any cosine is
below CHECK_COSINE. Nothing is written when refused.

Where the ONNX model lives: export writes inference.onnx into the folder (Export.formats) and
records its check in inference.yml (`Onnx`, with the parameter file's sha256); any other folder
(an official model, a training export) is converted on first use into
foundation.runtime.cache_dir("onnx", <key>), the key being the sha256 of the parameter and
program files' digests, the paddle2onnx version and the opset.
"""
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from engine.inference.backends import HPI_INSTALL, require
from engine.inference.executors import reference_onnx_executor
from foundation.atomic_io import atomic_write_bytes, atomic_write_json, file_digest
from foundation.errors import UserError
from foundation.logger import get_logger
from foundation.runtime import cache_dir

ONNX_FILE_NAME = "inference.onnx"
OPSET = 11
CHECK_IMAGES = 4
CHECK_COSINE = 0.9999
DEFAULT_TOLERANCE = 1e-4  # max |onnx - paddle| / max |paddle| over the check images

# Runs in a fresh interpreter (see the module docstring). argv: the model and params paddle2onnx
# converts, the model and params Paddle computes the reference with, onnx out, opset, input .npy,
# reference-output .npy, threads.
_CONVERT_SCRIPT = """
import sys
convert_model, convert_params, model_file, params_file, out, opset, images, ref_out, threads = sys.argv[1:10]
import numpy as np
import paddle2onnx
from paddle import inference as paddle_infer
data = paddle2onnx.export(convert_model, convert_params, save_file=None, opset_version=int(opset),
                          auto_upgrade_opset=False, enable_onnx_checker=True, verbose=False)
with open(out, "wb") as f:
    f.write(data)
config = paddle_infer.Config(model_file, params_file)
config.enable_new_ir(model_file.endswith(".json"))
config.disable_gpu()
config.set_cpu_math_library_num_threads(int(threads))
config.enable_mkldnn()
config.disable_glog_info()
predictor = paddle_infer.create_predictor(config)
x = np.load(images)
inp = predictor.get_input_handle(predictor.get_input_names()[0])
inp.reshape(list(x.shape))
inp.copy_from_cpu(x)
predictor.run()
np.save(ref_out, predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu())
"""


def paddle2onnx_version():
    try:
        return importlib.metadata.version("paddle2onnx")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_images(n=CHECK_IMAGES, size=112, seed=0):
    """n float32 [3, size, size] inputs in [-1, 1] shaped like pre-processed faces: smooth
    random shapes (8x8 cells, bilinear) plus a little pixel noise, reproducible."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-0.9, 0.9, (n, 3, 8, 8)).astype(np.float32)
    pos = np.linspace(0, 7, size, dtype=np.float32)
    i0 = np.floor(pos).astype(int).clip(0, 6)
    t = (pos - i0)[None, None]
    rows = coarse[:, :, i0] * (1 - t[..., None]) + coarse[:, :, i0 + 1] * t[..., None]
    img = rows[:, :, :, i0] * (1 - t[:, :, None]) + rows[:, :, :, i0 + 1] * t[:, :, None]
    img = img + rng.normal(0, 0.05, img.shape).astype(np.float32)
    return np.ascontiguousarray(np.clip(img, -1, 1), dtype=np.float32)


def compare_features(ref, got):
    """{"max_abs_diff", "max_rel_diff", "min_cosine"} of two [N, D] feature arrays."""
    ref = ref.reshape(ref.shape[0], -1).astype(np.float64)
    got = got.reshape(got.shape[0], -1).astype(np.float64)
    diff = float(np.abs(ref - got).max())
    cos = (ref * got).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
    return {"max_abs_diff": diff, "max_rel_diff": diff / max(float(np.abs(ref).max()), 1e-12),
            "min_cosine": float(cos.min())}


# proto field of an OpDesc attribute, by its type (framework.proto AttrType); block, variable and
# scalar attributes never have a plain default and are not filled
_ATTR_FIELDS = {0: "i", 1: "f", 2: "s", 3: "ints", 4: "floats", 5: "strings", 6: "b", 7: "bools", 9: "l",
                11: "longs", 12: "float64s", 15: "float64"}


def complete_program(model_file, params_file, work_dir):
    """An old program (inference.pdmodel) as paddle2onnx can read it: each attribute that an op's
    definition in this Paddle declares (run-time-only "extra" ones aside) and the file lacks,
    added with its registered default, the value Paddle's old executor uses for it. Nothing else
    in the program changes.

    Returns (model, params, {op type: [attribute names added]}): the original files when nothing
    was missing, else <work_dir>/inference.pdmodel beside a link to (or copy of) the parameters,
    because paddle2onnx reads a .pdmodel's parameters from its own path prefix."""
    from paddle.base import core
    from paddle.base.proto import framework_pb2

    with open(model_file, "rb") as f:
        data = f.read()
    try:
        program = framework_pb2.ProgramDesc.FromString(data)
        defaults = core.ProgramDesc(data)  # the same program, where Paddle fills in the defaults
    except Exception as e:  # protobuf's DecodeError or Paddle's own error types on a damaged file
        raise UserError(f"{model_file} is not a readable Paddle program ({type(e).__name__}): re-export the model, "
                        "or restore the file") from None
    declared = {}
    for proto_bytes in core.get_all_op_protos():
        proto = framework_pb2.OpProto.FromString(proto_bytes)
        declared[proto.type] = {a.name for a in proto.attrs if not a.extra and not a.generated}
    filled = {}
    for b, block in enumerate(program.blocks):
        for i, op in enumerate(block.ops):
            missing = declared.get(op.type, set()) - {a.name for a in op.attrs}
            if not missing:
                continue
            full = defaults.block(b).op(i)
            try:
                full.check_attrs()
            except Exception:  # an attribute without a default: left for paddle2onnx to name
                continue
            for name in sorted(missing):
                field = _ATTR_FIELDS.get(int(full.attr_type(name))) if full.has_attr(name) else None
                if field is None:
                    continue
                attr = op.attrs.add(name=name, type=int(full.attr_type(name)))
                value = full.attr(name)
                if isinstance(value, list):
                    getattr(attr, field).extend(value)
                else:
                    setattr(attr, field, value)
                filled.setdefault(op.type, set()).add(name)
    if not filled:
        return model_file, params_file, {}
    out_model, out_params = os.path.join(work_dir, "inference.pdmodel"), os.path.join(work_dir, "inference.pdiparams")
    with open(out_model, "wb") as f:
        f.write(program.SerializeToString())
    try:
        os.symlink(os.path.abspath(params_file), out_params)
    except OSError:  # no symbolic links here (some file systems)
        shutil.copyfile(params_file, out_params)
    return out_model, out_params, {op: sorted(names) for op, names in sorted(filled.items())}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def converter_complaint(output):
    """The line of paddle2onnx's output that says why it failed, without colour codes and log prefix."""
    lines = [_ANSI.sub("", ln).strip() for ln in output.splitlines() if ln.strip()]
    why = next((ln for ln in lines if "Failed to convert" in ln), lines[-1] if lines else "no output")
    return why.split("Failed to convert PaddlePaddle model: ", 1)[-1][:300]


def convert_checked(model_file, params_file, out_path, tolerance=DEFAULT_TOLERANCE, image_size=112, num_threads=2):
    """Convert a Paddle model to ONNX at `out_path` (atomically) if it agrees with Paddle; returns
    the check's record. UserError when a package is missing, the conversion fails or the check fails."""
    require("paddle2onnx", "converting to ONNX")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out_path))) as work:
        images, ref_out, onnx_tmp = (os.path.join(work, n) for n in ("x.npy", "ref.npy", "model.onnx"))
        x = check_images(size=image_size)
        np.save(images, x)
        convert_model, convert_params, filled = model_file, params_file, {}
        if model_file.endswith(".pdmodel"):
            convert_model, convert_params, filled = complete_program(model_file, params_file, work)
        env = dict(os.environ, OMP_NUM_THREADS=str(num_threads), GLOG_minloglevel=os.environ.get("GLOG_minloglevel", "2"))
        try:
            proc = subprocess.run([sys.executable, "-c", _CONVERT_SCRIPT, convert_model, convert_params, model_file,
                                   params_file, onnx_tmp, str(OPSET), images, ref_out, str(num_threads)], env=env,
                                  capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UserError(f"paddle2onnx did not run on {model_file}: {e}") from None
        if proc.returncode != 0 or not os.path.isfile(onnx_tmp) or not os.path.isfile(ref_out):
            raise UserError(f"paddle2onnx could not convert {model_file}: {converter_complaint(proc.stdout + proc.stderr)}"
                            " (the Paddle backend still runs it: leave use_hpip off or set hpi_config.backend=paddle)")
        runner = reference_onnx_executor(onnx_tmp, num_threads)
        if runner is None:
            raise UserError(f"checking the ONNX model of {model_file} needs onnxruntime or openvino, neither is "
                            f"installed: {HPI_INSTALL}")
        record = compare_features(np.load(ref_out), runner.predict(x))
        checked_with = f"{runner.name} fp32"
        del runner
        record.update({"opset": OPSET, "paddle2onnx": paddle2onnx_version(), "checked_with": checked_with,
                       "check_images": int(x.shape[0]), "tolerance": float(tolerance),
                       "source": os.path.basename(model_file), "seconds": round(time.perf_counter() - t0, 2)})
        if filled:  # what an older exporter left out and the conversion took at Paddle's defaults
            record["filled_attributes"] = filled
        if record["max_rel_diff"] > tolerance or record["min_cosine"] < CHECK_COSINE:
            raise UserError(
                f"the ONNX conversion of {model_file} disagrees with Paddle on {x.shape[0]} check images "
                f"(max abs difference {record['max_abs_diff']:.3g}, {record['max_rel_diff']:.3g} of the largest "
                f"feature value, tolerance {tolerance:g}; lowest cosine {record['min_cosine']:.6f}, needed "
                f"{CHECK_COSINE}): not written. Run the Paddle files instead (no use_hpip), or raise "
                "Export.onnx_tolerance if the difference is acceptable")
        with open(onnx_tmp, "rb") as f:
            atomic_write_bytes(out_path, f.read())
    return record


def log_check(record, what):
    filled = record.get("filled_attributes")
    if filled:
        lacking = "; ".join(f"{op}: {', '.join(names)}" for op, names in filled.items())
        get_logger().info(f"{what}: an older exporter's program, converted with Paddle's defaults for the attributes "
                          f"it lacks ({lacking})")
    get_logger().info(f"{what}: ONNX (opset {record['opset']}, paddle2onnx {record['paddle2onnx']}) checked against "
                      f"Paddle on {record['check_images']} images with {record['checked_with']}: max abs difference "
                      f"{record['max_abs_diff']:.2g} ({record['max_rel_diff']:.2g} relative, tolerance "
                      f"{record['tolerance']:g}), lowest cosine {record['min_cosine']:.6f}")


def folder_onnx(model_dir, params_file, info):
    """The folder's own inference.onnx when inference.yml says it was converted from these very
    parameters (export's `Onnx` record), else None."""
    path = os.path.join(model_dir, ONNX_FILE_NAME)
    rec = info.get("Onnx") if isinstance(info, dict) else None
    if not os.path.isfile(path) or not isinstance(rec, dict) or not rec.get("params_sha256"):
        return None
    return path if rec["params_sha256"] == file_digest(params_file) else None


def cached_onnx(model_file, params_file, image_size=112, num_threads=2, tolerance=DEFAULT_TOLERANCE):
    """The ONNX model of a Paddle model in the cache, converted (and checked) on first use."""
    require("paddle2onnx", "running a Paddle model on OpenVINO or ONNX Runtime (converted to ONNX first)")
    key = hashlib.sha256("\n".join([file_digest(params_file), file_digest(model_file), str(paddle2onnx_version()),
                                    str(OPSET)]).encode()).hexdigest()[:24]
    folder = cache_dir("onnx", key)
    path = os.path.join(folder, ONNX_FILE_NAME)
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    get_logger().info(f"converting {model_file} to ONNX once, into {folder}")
    record = convert_checked(model_file, params_file, path, tolerance=tolerance, image_size=image_size,
                             num_threads=num_threads)
    record["params"] = os.path.abspath(params_file)
    atomic_write_json(os.path.join(folder, "check.json"), record)
    log_check(record, model_file)
    return path


# --------------------------------------------------------------------------- int8
INT8_FILE_NAME = "inference_int8.onnx"


def quantize_int8(onnx_file, calibration, out_path):
    """NNCF post-training int8 of an ONNX model, calibrated on `calibration` (a list of float32
    [1, 3, H, W] pre-processed faces), written to `out_path` (atomically) as a QDQ ONNX model.
    Whether it may be used is decided by engine.inference.int8_gate, never here."""
    require("nncf", "Export.int8 (post-training int8)")
    onnx = require("onnx", "Export.int8 (post-training int8)")
    import nncf  # noqa: E402 - optional, checked by require above

    model = onnx.load(onnx_file)
    input_name = model.graph.input[0].name
    t0 = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(calibration, lambda x: {input_name: x}),
                              subset_size=len(calibration))
    atomic_write_bytes(out_path, quantized.SerializeToString())
    return round(time.perf_counter() - t0, 2)


def folder_int8(model_dir, params_file, info):
    """The folder's inference_int8.onnx, when its export passed the accuracy gate on these very
    parameters (inference.yml `Int8`); otherwise a UserError saying why not."""
    path = os.path.join(model_dir, INT8_FILE_NAME)
    rec = info.get("Int8") if isinstance(info, dict) else None
    how = ("export it with -o Export.int8=True (kept only when its verification accuracy loses at most "
           "Export.int8_max_loss points), or run fp32 / bf16")
    if not isinstance(rec, dict):
        raise UserError(f"hpi_config.precision int8: {model_dir} has no int8 model: {how}")
    if not rec.get("passed"):
        raise UserError(f"hpi_config.precision int8: {model_dir} has no int8 model: export refused it "
                        f"({rec.get('reason', 'accuracy gate failed')})")
    if not os.path.isfile(path):
        raise UserError(f"hpi_config.precision int8: {path} is missing although inference.yml records it: {how}")
    if rec.get("params_sha256") != file_digest(params_file):
        raise UserError(f"hpi_config.precision int8: {path} was quantized from other parameters than "
                        f"{os.path.basename(params_file)}: {how}")
    return path
