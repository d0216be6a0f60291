"""The executors that run an exported model, one per backend, each with `predict(nchw) -> [N, D]`,
`precision` and `num_threads`: Paddle Inference (oneDNN on CPU) on the exported program, OpenVINO
and ONNX Runtime on an ONNX model. Which one runs is engine.inference.backends' choice; the folder
and its conversions are engine.inference.model's.

An executor is not thread-safe: call predict from one thread (decode images in others).
"""
import os
import re

import numpy as np

from engine.inference.backends import cpu_has_bf16, is_installed, require
from foundation.errors import ConfigError, UserError
from foundation.logger import get_logger


def program_has_op(model_file, op_name):
    """Whether an exported program uses an operator (e.g. "prelu"), read from the file itself."""
    with open(model_file, "rb") as f:
        data = f.read()
    if model_file.endswith(".json"):  # PIR ops are serialised as "#":"<dialect id>.<op name>"
        return re.search(rb'"#":"\d+\.' + re.escape(op_name.encode()) + rb'"', data) is not None
    return op_name.encode() in data  # ProgramDesc protobuf: op types are plain strings


class PaddleExecutor:
    """paddle.inference on an exported program: `format` "pir" (inference.json, the new executor) or
    "pdmodel" / "program" (the old ProgramDesc, which only runs on the old executor).

    run_mode: "paddle" (fp32, oneDNN on CPU; "mkldnn" is the same) or "mkldnn_bf16" (oneDNN bf16
    where it gives right answers; see _setup_bf16). `bf16_note` says what bf16 did.
    """

    name = "paddle"

    def __init__(self, model_file, params_file, format, device_kind="cpu", device_ids=(), num_threads=2,
                 run_mode="paddle", mkldnn_cache_capacity=10):
        self.model_file, self.format, self.num_threads = model_file, format, int(num_threads)
        self.bf16_note = ""
        from paddle import inference as paddle_infer  # only this executor needs Paddle

        config = paddle_infer.Config(model_file, params_file)
        # PIR programs need the new executor; old ProgramDesc files only run on the old one.
        config.enable_new_ir(format == "pir")
        if device_kind == "gpu":
            config.enable_use_gpu(256, device_ids[0] if device_ids else 0)
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(max(1, self.num_threads))
            config.enable_mkldnn()
            # Keep oneDNN primitives for a few input shapes (batch sizes) instead of rebuilding them.
            config.set_mkldnn_cache_capacity(int(mkldnn_cache_capacity))
            if run_mode == "mkldnn_bf16":
                self.bf16_note = self._setup_bf16(config)
        config.switch_ir_optim(True)
        if format == "program":
            # (Paddle 3.3's PIR predictor rejects this pass: "Not find ... memory_optimize_pass")
            config.enable_memory_optim()
        config.disable_glog_info()
        try:
            self.predictor = paddle_infer.create_predictor(config)
        except Exception as e:
            raise UserError(f"cannot load the inference model in {os.path.dirname(model_file)} "
                            f"({os.path.basename(model_file)}): {type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        self._input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self._output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])
        bf16 = run_mode == "mkldnn_bf16" and not self.bf16_note.startswith("fp32")
        self.precision = "bf16" if bf16 else "fp32"

    def _setup_bf16(self, config):
        """Turn on oneDNN bf16 where it gives right answers; returns a note on what was done.

        Paddle 3.3's oneDNN bf16 PReLU returns wrong values (features at cosine ~0.1 to fp32 on
        MobileFaceNet), so PReLU must stay fp32. The old executor honours an op list (bf16 for the
        convolutions only: cosine 0.9993 to fp32); the PIR executor ignores the list and converts
        every op, so a PIR model with PReLU stays in fp32 with a warning.
        """
        if not cpu_has_bf16():
            get_logger().warning("run_mode mkldnn_bf16: this CPU has no native bf16 (avx512_bf16/amx); running fp32")
            return "fp32: no CPU bf16 support"
        if self.format == "program":
            config.enable_mkldnn_bfloat16()
            config.set_bfloat16_op({"conv2d", "depthwise_conv2d", "fused_conv2d"})
            return "bf16 convolutions"
        if program_has_op(self.model_file, "prelu"):
            get_logger().warning(
                f"run_mode mkldnn_bf16: {self.model_file} has PReLU layers, which Paddle's oneDNN bf16 computes "
                "wrongly under the PIR executor; running fp32 instead (a model exported with "
                "FLAGS_enable_pir_api=0, inference.pdmodel, runs its convolutions in bf16)")
            return "fp32: PReLU under PIR"
        config.enable_mkldnn_bfloat16()
        return "bf16 all ops"

    def predict(self, batch):
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(batch)
        self.predictor.run()
        return self._output.copy_to_cpu()


class OpenVINOExecutor:
    """An ONNX model compiled by OpenVINO for the CPU with a precision hint and a thread count."""

    name = "openvino"

    def __init__(self, onnx_file, precision="fp32", num_threads=2):
        ov = require("openvino", "hpi_config.backend openvino")
        core = ov.Core()
        if precision == "bf16" and not cpu_has_bf16():
            raise ConfigError("hpi_config.precision bf16: this CPU has no native bf16 (avx512_bf16 or amx); use fp32")
        # int8: a quantized model (QuantizeLinear / DequantizeLinear pairs) runs its quantized layers in
        # int8 and the rest in f32, the way the accuracy gate measured it
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": int(num_threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        try:
            self.compiled = core.compile_model(core.read_model(onnx_file), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError with a multi-line report
            raise UserError(f"OpenVINO cannot load {onnx_file}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
        self.request = self.compiled.create_infer_request()
        hint = str(self.compiled.get_property("INFERENCE_PRECISION_HINT")).lower()  # "<Type: 'bfloat16'>"
        self.precision = "bf16" if "bf16" in hint or "bfloat16" in hint else "fp32"
        if precision == "int8":
            self.precision = "int8"
        self.num_threads = int(num_threads)

    def predict(self, batch):
        return np.array(self.request.infer({0: batch})[0], dtype=np.float32, copy=True)


class OnnxRuntimeExecutor:
    """An ONNX model in an onnxruntime CPU session (fp32) with a thread count."""

    name = "onnxruntime"

    def __init__(self, onnx_file, precision="fp32", num_threads=2):
        ort = require("onnxruntime", "hpi_config.backend onnxruntime")
        if precision != "fp32":
            raise ConfigError("hpi_config: onnxruntime has no bf16 on CPU; use precision fp32 or backend openvino")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        # Worker threads sleep between runs instead of spinning: on cores shared with other work
        # (decoding threads, other jobs) spinning made it several times slower.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(onnx_file, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise UserError(f"onnxruntime cannot load {onnx_file}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.precision = "fp32"
        self.num_threads = int(num_threads)

    def predict(self, batch):
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


ONNX_EXECUTORS = {"openvino": OpenVINOExecutor, "onnxruntime": OnnxRuntimeExecutor}


def onnx_executor(backend, onnx_file, precision="fp32", num_threads=2):
    return ONNX_EXECUTORS[backend](onnx_file, precision=precision, num_threads=num_threads)


def reference_onnx_executor(onnx_file, num_threads=2):
    """An fp32 executor of whichever ONNX backend is installed (onnxruntime first), for checks;
    None when neither is."""
    for backend in ("onnxruntime", "openvino"):
        if is_installed(backend):
            return onnx_executor(backend, onnx_file, "fp32", num_threads)
    return None
