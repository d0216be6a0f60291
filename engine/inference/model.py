"""Run an exported face feature model with paddle.inference (oneDNN on CPU).

Both export formats load: the PIR program `inference.json` (Paddle 3.x) and the older
ProgramDesc `inference.pdmodel` (Paddle 2.x, earlier PaddleX/PaddleClas exports). The old format
cannot go through the new PIR executor (its oneDNN passes fail on attribute types), so its
predictor is built with `config.enable_new_ir(False)`; the JSON format needs the new IR on.
The choice is made from the files found; the user never sets it. A folder holding both (what
export writes) runs the old format, which is faster here (see engine.inference.folder.find_model_files).
A folder with only inference.json of one of our architectures (an official PaddleX model) runs on
the CPU through its old-format program, written once into the cache and checked to give the same
features (engine.inference.program_convert); `prefer_format="pir"` keeps the PIR executor.

run_mode: "paddle" (fp32, oneDNN on CPU; "mkldnn" is the same) or "mkldnn_bf16" (oneDNN bf16
convolutions where the CPU has native bf16; see InferenceModel._setup_bf16 for its limits).
A predictor is not thread-safe: call predict from one thread (decode images in others).

use_hpip=True (with hpi_config {"backend", "precision", "num_threads"}, each optional) is
PaddleX's high-performance inference: the backend is chosen by engine.inference.backends
(automatically without a backend: OpenVINO bf16 on a CPU with native bf16, else OpenVINO fp32,
else Paddle), and OpenVINO / ONNX Runtime run the folder's inference.onnx or an ONNX model
converted once into the cache (engine.inference.onnx_convert); hpi_config.precision int8 runs the folder's
inference_int8.onnx on OpenVINO, only when its export passed the accuracy gate (engine.inference.int8_gate),
and is never chosen automatically. One log line names the backend, precision
and threads. Every caller (predict, evaluate, the recognition pipeline) gets the same predict().
"""
import os
import re

import numpy as np
from paddle import inference as paddle_infer

from engine.config.schema import RUN_MODES
from engine.inference.backends import onnx_runner
from engine.inference.backends import resolve as resolve_backend
from engine.inference.folder import Preprocess, find_model_files, read_inference_yml
from engine.inference.onnx_convert import cached_onnx, folder_int8, folder_onnx
from engine.inference.program_convert import cached_program
from foundation.errors import ConfigError, UserError
from foundation.logger import get_logger
from foundation.runtime import cpu_flags, parse_device


def cpu_supports_bf16():
    """True when this CPU has native bf16 dot products (AVX512-BF16 or AMX), which oneDNN needs
    to make bf16 faster than fp32."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def program_has_op(model_file, op_name):
    """Whether an exported program uses an operator (e.g. "prelu"), read from the file itself."""
    with open(model_file, "rb") as f:
        data = f.read()
    if model_file.endswith(".json"):  # PIR ops are serialised as "#":"<dialect id>.<op name>"
        return re.search(rb'"#":"\d+\.' + re.escape(op_name.encode()) + rb'"', data) is not None
    return op_name.encode() in data  # ProgramDesc protobuf: op types are plain strings


class InferenceModel:
    """A paddle.inference predictor for one exported model.

        model = InferenceModel("output/best_model/inference", num_threads=2)
        feats = model.predict(batch)      # float32 [N, 3, 112, 112] -> [N, D] raw features
    """

    def __init__(self, model_dir, device="cpu", num_threads=2, run_mode="paddle", mkldnn_cache_capacity=10,
                 prefer_format=None, use_hpip=False, hpi_config=None):
        if run_mode not in RUN_MODES:
            raise ConfigError(f"run_mode '{run_mode}' is not one of {', '.join(RUN_MODES)}")
        self.model_dir = str(model_dir)
        self.model_file, self.params_file, self.format = find_model_files(self.model_dir, prefer=prefer_format)
        self.folder_format = self.format  # what the folder holds; self.format is what runs
        self.info = read_inference_yml(self.model_dir)
        # how images become the model's input, as the folder's inference.yml says (PaddleX layout)
        self.preprocess = Preprocess(self.info, os.path.join(self.model_dir, "inference.yml"))
        glob = self.info.get("Global", {}) if isinstance(self.info.get("Global"), dict) else {}
        self.model_name = glob.get("model_name") or os.path.basename(os.path.dirname(os.path.abspath(self.model_dir)))
        self.bf16_note = ""
        self.num_threads = int(num_threads)
        kind, ids = parse_device(device)
        # high-performance inference: which backend, precision and threads (engine.inference.backends)
        self.use_hpip = bool(use_hpip)
        self.backend, self.backend_reason, self.onnx_file, self._runner = "paddle", "use_hpip off", None, None
        if hpi_config and not use_hpip:
            get_logger().warning("hpi_config is ignored while use_hpip is off (Predict.use_hpip=True turns it on)")
        if use_hpip:
            default = "bf16" if run_mode == "mkldnn_bf16" else "fp32"
            backend, precision, self.num_threads, self.backend_reason = resolve_backend(
                hpi_config, self.model_name, self.num_threads, kind, default_precision=default)
            self.backend = backend
            if backend == "paddle":
                run_mode = "mkldnn_bf16" if precision == "bf16" else "paddle"
            else:
                size = int((glob.get("input_shape") or [3, 112, 112])[-1])
                if precision == "int8":  # only the folder's gated int8 model (UserError saying why not)
                    self.onnx_file = folder_int8(self.model_dir, self.params_file, self.info)
                    rec = self.info["Int8"]
                    self.backend_reason += (f"; its export measured val accuracy {rec.get('int8_acc', 0) * 100:.2f} % "
                                            f"int8 vs {rec.get('fp32_acc', 0) * 100:.2f} % fp32")
                else:
                    self.onnx_file = (folder_onnx(self.model_dir, self.params_file, self.info)
                                      or cached_onnx(self.model_file, self.params_file, image_size=size,
                                                     num_threads=self.num_threads))
                self._runner = onnx_runner(backend, self.onnx_file, precision, self.num_threads)
        self.run_mode = run_mode
        if self._runner is None:
            if self.format == "pir" and prefer_format != "pir" and kind == "cpu":
                self._use_program_format(glob)
            self._create_paddle_predictor(kind, ids, run_mode, mkldnn_cache_capacity)
            self.precision = "bf16" if run_mode == "mkldnn_bf16" and not self.bf16_note.startswith("fp32") else "fp32"
        else:
            self.precision = self._runner.precision
        self.embedding_size = int(glob.get("embedding_size") or 0) or self._probe_embedding_size()
        if use_hpip:
            get_logger().info(f"high-performance inference: {self.describe()} ({self.backend_reason})")

    def describe(self):
        """'paddle fp32 (.pdmodel), 2 thread(s)' / 'openvino bf16 (inference.onnx), 2 thread(s)'."""
        source = os.path.basename(self.onnx_file or self.model_file)
        return f"{self.backend} {self.precision} ({source}), {self.num_threads} thread(s)"

    def _use_program_format(self, glob):
        """Switch a PIR-only folder of our architectures to its checked old-format program (2x
        faster on the CPU; engine.inference.program_convert), or say in the log why it stays PIR."""
        size = int((glob.get("input_shape") or [3, 112, 112])[-1])
        path, why = cached_program(self.model_file, self.params_file, glob.get("model_name"),
                                   glob.get("embedding_size"), size)
        if path:
            self.model_file, self.format = path, "program"
        else:
            get_logger().info(f"{self.model_file} runs on Paddle's PIR executor ({why})")

    def _create_paddle_predictor(self, kind, ids, run_mode, mkldnn_cache_capacity):
        config = paddle_infer.Config(self.model_file, self.params_file)
        # PIR programs need the new executor; old ProgramDesc files only run on the old one.
        config.enable_new_ir(self.format == "pir")
        if kind == "gpu":
            config.enable_use_gpu(256, ids[0] if ids else 0)
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(max(1, self.num_threads))
            config.enable_mkldnn()
            # Keep oneDNN primitives for a few input shapes (batch sizes) instead of rebuilding them.
            config.set_mkldnn_cache_capacity(int(mkldnn_cache_capacity))
            if run_mode == "mkldnn_bf16":
                self.bf16_note = self._setup_bf16(config)
        config.switch_ir_optim(True)
        if self.format == "program":
            # (Paddle 3.3's PIR predictor rejects this pass: "Not find ... memory_optimize_pass")
            config.enable_memory_optim()
        config.disable_glog_info()
        try:
            self.predictor = paddle_infer.create_predictor(config)
        except Exception as e:
            raise UserError(f"cannot load the inference model in {self.model_dir} ({os.path.basename(self.model_file)}): "
                            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        self.input_names = self.predictor.get_input_names()
        self.output_names = self.predictor.get_output_names()
        self._input = self.predictor.get_input_handle(self.input_names[0])
        self._output = self.predictor.get_output_handle(self.output_names[0])

    def _setup_bf16(self, config):
        """Turn on oneDNN bf16 where it gives right answers; returns a note on what was done.

        Paddle 3.3's oneDNN bf16 PReLU returns wrong values (features at cosine ~0.1 to fp32,
        measured on MobileFaceNet), so PReLU must stay fp32. The old executor honours an op list
        (bf16 for the convolutions only: cosine 0.9993 to fp32); the PIR executor ignores the list
        and converts every op, so a PIR model with PReLU stays in fp32 with a warning.
        """
        if not cpu_supports_bf16():
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

    def _probe_embedding_size(self):
        glob = self.info.get("Global") if isinstance(self.info.get("Global"), dict) else {}
        shape = glob.get("input_shape")
        size = int(shape[-1]) if shape else 112
        return int(self.predict(np.zeros((1, 3, size, size), dtype=np.float32)).shape[1])

    def predict(self, batch):
        """float32 NCHW batch (any N >= 1) -> float32 [N, D] raw features (not normalised)."""
        batch = np.asarray(batch)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected an NCHW batch with 3 channels, got shape {batch.shape}")
        if batch.shape[0] == 0:
            return np.zeros((0, getattr(self, "embedding_size", 0)), dtype=np.float32)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._runner is not None:
            out = self._runner.predict(batch)
            return out.reshape(out.shape[0], -1).astype(np.float32, copy=False)
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(batch)
        self.predictor.run()
        out = self._output.copy_to_cpu()
        return out.reshape(out.shape[0], -1).astype(np.float32, copy=False)

    __call__ = predict

    def __repr__(self):
        return (f"InferenceModel({self.model_dir!r}, format={self.format}, backend={self.backend}, "
                f"precision={self.precision}, threads={self.num_threads})")
