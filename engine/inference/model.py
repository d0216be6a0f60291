"""An exported face feature model, ready to run: the folder read, the backend chosen, the model
converted where that backend needs it, and the executor built (engine.inference.executors).

Both export formats load: the PIR program `inference.json` (Paddle 3.x) and the older
ProgramDesc `inference.pdmodel` (Paddle 2.x, earlier PaddleX/PaddleClas exports). The old format
cannot go through the new PIR executor (its oneDNN passes fail on attribute types), so its
predictor is built with `config.enable_new_ir(False)`; the JSON format needs the new IR on.
The choice is made from the files found; the user never sets it. A folder without inference.yml
(PaddleClas's layout, older exports) runs at its program's input size with the face
pre-processing PaddleClas and PaddleX use, said in the log; a parameter file that was cut short is
refused up front, naming it. A folder holding both (what
export writes) runs the old format, which is faster here (see engine.inference.folder.find_model_files).
A folder with only inference.json of one of our architectures (an official PaddleX model) runs on
the CPU through its old-format program, written once into the cache and checked to give the same
features (engine.inference.program_convert); `prefer_format="pir"` keeps the PIR executor.

run_mode: "paddle" (fp32, oneDNN on CPU; "mkldnn" is the same) or "mkldnn_bf16" (oneDNN bf16
convolutions where the CPU has native bf16; see PaddleExecutor._setup_bf16 for its limits).
A model is not thread-safe: call predict from one thread (decode images in others).

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

import numpy as np

from engine.config.schema import RUN_MODES
from engine.inference.backends import PACKAGES, check_hpi_config, require
from engine.inference.backends import resolve as resolve_backend
from engine.inference.executors import PaddleExecutor, onnx_executor
from engine.inference.folder import (
    CONFIG_FILE_NAME,
    Preprocess,
    check_params_file,
    find_model_files,
    program_input_shape,
    read_inference_yml,
)
from engine.inference.onnx_convert import cached_onnx, folder_int8, folder_onnx
from engine.inference.program_convert import cached_program
from foundation.errors import ConfigError, UserError
from foundation.logger import get_logger
from foundation.runtime import parse_device


class InferenceModel:
    """One exported model and the executor that runs it.

        model = InferenceModel("output/best_model/inference", num_threads=2)
        feats = model.predict(batch)      # float32 [N, 3, 112, 112] -> [N, D] raw features
    """

    def __init__(self, model_dir, device="cpu", num_threads=2, run_mode="paddle", mkldnn_cache_capacity=10,
                 prefer_format=None, use_hpip=False, hpi_config=None):
        if run_mode not in RUN_MODES:
            raise ConfigError(f"run_mode '{run_mode}' is not one of {', '.join(RUN_MODES)}")
        self.model_dir = str(model_dir)
        self.model_file, self.params_file, self.format = find_model_files(self.model_dir, prefer=prefer_format)
        check_params_file(self.params_file, self.model_file)
        self.folder_format = self.format  # what the folder holds; self.format is what runs
        self.info = read_inference_yml(self.model_dir)
        # how images become the model's input, as the folder's inference.yml says (PaddleX layout)
        self.preprocess = Preprocess(self.info, os.path.join(self.model_dir, CONFIG_FILE_NAME))
        glob = self.info.get("Global", {}) if isinstance(self.info.get("Global"), dict) else {}
        folder = os.path.basename(os.path.abspath(self.model_dir))  # ".../best_model/inference": best_model
        self.model_name = glob.get("model_name") or (folder if folder != "inference" else
                                                     os.path.basename(os.path.dirname(os.path.abspath(self.model_dir))))
        self.image_size = self._input_size(glob)
        self.onnx_file = None
        kind, ids = parse_device(device)
        backend, precision, threads, self.backend_reason = self._choose(use_hpip, hpi_config, run_mode,
                                                                        int(num_threads), kind)
        if backend == "paddle":
            if self.format == "pir" and prefer_format != "pir" and kind == "cpu":
                self._use_program_format(glob)
            self.run_mode = "mkldnn_bf16" if precision == "bf16" else "paddle"
            self._executor = PaddleExecutor(self.model_file, self.params_file, self.format, kind, ids, threads,
                                            self.run_mode, mkldnn_cache_capacity)
            self.bf16_note = self._executor.bf16_note
        else:
            self.run_mode, self.bf16_note = run_mode, ""
            if precision != "int8":  # the backend's package is named before a conversion asks for paddle2onnx
                require(PACKAGES[backend], f"hpi_config.backend {backend}")  # (int8: the folder's record first)
            self.onnx_file = self._onnx_model(precision, threads, check_hpi_config(hpi_config)["auto_paddle2onnx"])
            self._executor = onnx_executor(backend, self.onnx_file, precision, threads)
        self.backend, self.precision, self.num_threads = backend, self._executor.precision, threads
        self.embedding_size = int(glob.get("embedding_size") or 0) or self._probe_embedding_size()
        if use_hpip:
            get_logger().info(f"high-performance inference: {self.describe()} ({self.backend_reason})")

    def _input_size(self, glob):
        """The input's side: inference.yml's Global.input_shape, else the program's own input shape,
        else the pre-processing's size. A folder without inference.yml (a PaddleClas or Paddle 2.x
        export) is pre-processed at the program's input size with the face pre-processing that
        PaddleClas's and PaddleX's face models use, said in the log, since nothing in it says otherwise."""
        if glob.get("input_shape"):
            return int(glob["input_shape"][-1])
        shape = program_input_shape(self.model_file) or []
        height, width = (shape[2], shape[3]) if len(shape) == 4 and min(shape[2:]) > 0 else (None, None)
        if os.path.isfile(os.path.join(self.model_dir, CONFIG_FILE_NAME)):
            return int(height or self.preprocess.size[1])
        if height:
            self.preprocess.size = (int(width), int(height))
        w, h = self.preprocess.size
        where = "the program's input" if height else "the program fixes none, so the usual face size"
        get_logger().warning(
            f"{self.model_dir} has no {CONFIG_FILE_NAME} (a PaddleClas or Paddle 2.x export): images are resized to "
            f"{w}x{h} ({where}), RGB, scaled as (x / 255 - 0.5) / 0.5, the face pre-processing of PaddleClas's and "
            f"PaddleX's face models; write an {CONFIG_FILE_NAME} with PreProcess.transform_ops into the folder if the "
            "model was trained otherwise (docs/inference.md)")
        return int(h)

    def _choose(self, use_hpip, hpi_config, run_mode, threads, device_kind):
        """(backend, precision, threads, why): Paddle as run_mode says, or with use_hpip the choice of
        engine.inference.backends."""
        if not use_hpip:
            if hpi_config:
                get_logger().warning("hpi_config is ignored while use_hpip is off (Predict.use_hpip=True turns it on)")
            return "paddle", "bf16" if run_mode == "mkldnn_bf16" else "fp32", threads, "use_hpip off"
        default = "bf16" if run_mode == "mkldnn_bf16" else "fp32"
        return resolve_backend(hpi_config, self.model_name, threads, device_kind, default_precision=default)

    def _onnx_model(self, precision, threads, convert=True):
        """The ONNX file an ONNX backend runs: the folder's gated int8 model (UserError saying why
        not), else the folder's inference.onnx, else (`convert`: hpi_config.auto_paddle2onnx) one
        converted once into the cache."""
        if precision == "int8":
            path = folder_int8(self.model_dir, self.params_file, self.info)
            rec = self.info["Int8"]
            self.backend_reason += (f"; its export measured val accuracy {rec.get('int8_acc', 0) * 100:.2f} % "
                                    f"int8 vs {rec.get('fp32_acc', 0) * 100:.2f} % fp32")
            return path
        found = folder_onnx(self.model_dir, self.params_file, self.info)
        if found or not convert:
            if not found:
                raise UserError(f"{self.model_dir} has no inference.onnx and hpi_config.auto_paddle2onnx is False: "
                                "export it with -o Export.formats=[paddle,onnx], or allow the conversion")
            return found
        return cached_onnx(self.model_file, self.params_file, image_size=self.image_size, num_threads=threads)

    def describe(self):
        """'paddle fp32 (.pdmodel), 2 thread(s)' / 'openvino bf16 (inference.onnx), 2 thread(s)'."""
        source = os.path.basename(self.onnx_file or self.model_file)
        return f"{self.backend} {self.precision} ({source}), {self.num_threads} thread(s)"

    def _use_program_format(self, glob):
        """Switch a PIR-only folder of our architectures to its checked old-format program (2x
        faster on the CPU; engine.inference.program_convert), or say in the log why it stays PIR."""
        path, why = cached_program(self.model_file, self.params_file, glob.get("model_name"),
                                   glob.get("embedding_size"), self.image_size)
        if path:
            self.model_file, self.format = path, "program"
        else:
            get_logger().info(f"{self.model_file} runs on Paddle's PIR executor ({why})")

    def _probe_embedding_size(self):
        return int(self.predict(np.zeros((1, 3, self.image_size, self.image_size), dtype=np.float32)).shape[1])

    def predict(self, batch):
        """float32 NCHW batch (any N >= 1) -> float32 [N, D] raw features (not normalised)."""
        batch = np.asarray(batch)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected an NCHW batch with 3 channels, got shape {batch.shape}")
        if batch.shape[0] == 0:
            return np.zeros((0, getattr(self, "embedding_size", 0)), dtype=np.float32)
        out = self._executor.predict(np.ascontiguousarray(batch, dtype=np.float32))
        return out.reshape(out.shape[0], -1).astype(np.float32, copy=False)

    __call__ = predict

    def __repr__(self):
        return (f"InferenceModel({self.model_dir!r}, format={self.format}, backend={self.backend}, "
                f"precision={self.precision}, threads={self.num_threads})")
