"""High-performance inference (`use_hpip`): which backend runs a model, at which precision, with how
many threads. The executors that run it are engine.inference.executors.

    model = InferenceModel(folder, use_hpip=True)                                   # automatic
    model = InferenceModel(folder, use_hpip=True, hpi_config={"backend": "openvino", "precision": "fp32"})

hpi_config, as in PaddleX: {"backend": "paddle" | "openvino" | "onnxruntime", "precision":
"fp32" | "bf16" | "int8", "num_threads": N}; every key is optional. int8 runs on OpenVINO only, only
a folder's inference_int8.onnx whose export passed the accuracy gate (engine.inference.int8_gate), and only
when asked for: the automatic choice never picks it. Without a backend the choice is
automatic (`choose_backend`): the fastest backend installed for this CPU, from the measurements
in PRIOR_MEASUREMENTS (made with benchmarks/infer_speed.py). OpenVINO and ONNX Runtime run the
ONNX model that engine.inference.onnx_convert writes (paddle2onnx); Paddle runs the exported files itself
(engine.inference.model). The packages are the optional `hpi` extra: a missing one is a
UserError naming it, and nothing here imports them unless that backend is asked for.

OpenVINO reads neither Paddle format of MobileFaceNet (its Paddle reader has no PReLU), hence ONNX.
ONNX Runtime has no bf16 on CPU, so it is fp32 only. TensorRT (GPU) is not offered.
"""
import importlib.util

from engine.config.schema import HPI_BACKENDS as BACKENDS
from engine.config.schema import HPI_PRECISIONS as PRECISIONS
from engine.config.schema import RUN_MODES
from foundation.errors import ConfigError, UserError
from foundation.runtime import cpu_bf16_class

HPI_CONFIG_KEYS = ("backend", "precision", "num_threads", "auto_paddle2onnx")
# PaddleX's HPIConfig keys that say nothing a CPU build of ours can act on (its model_name and device
# come from the model and Global.device; hpi_info is PaddleX's own table)
PADDLEX_INFO_KEYS = ("model_name", "device_type", "device_id", "hpi_info")
# PaddleX backends that need hardware or builds this project does not run on
FOREIGN_BACKENDS = {"tensorrt": "NVIDIA GPUs (Paddle Inference with TensorRT)", "om": "Huawei Ascend NPUs"}
HPI_INSTALL = 'pip install ".[cpu,hpi]"'
# the Python module each backend (and the converter) needs
PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime", "paddle2onnx": "paddle2onnx", "nncf": "nncf"}
INT8_INSTALL = 'pip install ".[cpu,hpi,int8]"'

# What `auto` chooses from, per CPU class: batch-1 latency in ms and batch-64 throughput in images/s
# per (model, backend, precision), measured idle with benchmarks/infer_speed.py at 2 threads on the
# same exported models (docs/speed.md has the runs). "avx512_bf16": AMD EPYC with AVX-512 BF16, no
# AMX; "amx": Intel Xeon with AMX-BF16. A CPU without native bf16 uses the avx512_bf16 table's fp32
# rows, where OpenVINO fp32 is the fastest too.
PRIOR_MEASUREMENTS = {
    "avx512_bf16": {
        "MobileFaceNet": {("paddle", "fp32"): (6.8, 254), ("paddle", "bf16"): (5.3, 345),
                          ("openvino", "fp32"): (4.1, 290), ("openvino", "bf16"): (2.3, 520),
                          ("onnxruntime", "fp32"): (12.0, 98)},
        "ResNet50_face": {("paddle", "fp32"): (44.0, 25.0), ("paddle", "bf16"): (24.5, 47.8),
                          ("openvino", "fp32"): (39.5, 25.8), ("openvino", "bf16"): (20.5, 51.0),
                          ("onnxruntime", "fp32"): (39.6, 26.0)},
    },
    "amx": {
        "MobileFaceNet": {("paddle", "fp32"): (9.5, 159.6), ("paddle", "bf16"): (8.3, 214.9),
                          ("openvino", "fp32"): (3.4, 205.3), ("openvino", "bf16"): (1.9, 408.2),
                          ("onnxruntime", "fp32"): (15.7, 66.6)},
        "ResNet50_face": {("paddle", "fp32"): (57.4, 22.6), ("paddle", "bf16"): (23.0, 68.2),
                          ("openvino", "fp32"): (52.7, 21.3), ("openvino", "bf16"): (11.6, 98.1),
                          ("onnxruntime", "fp32"): (47.0, 22.5)},
    },
}
# What `auto` may pick. Paddle's bf16 is left to the user (run_mode mkldnn_bf16): under the PIR
# executor it silently stays fp32 for PReLU models. ONNX Runtime is left out too: it was never
# clearly faster than Paddle fp32 (MobileFaceNet batch 1: 12.0 vs 6.8 ms; ResNet50_face within 4%).
# So `auto` without OpenVINO is today's plain Paddle fp32 path, whatever is installed besides.
AUTO_CANDIDATES = (("openvino", "bf16"), ("openvino", "fp32"), ("paddle", "fp32"))


def is_installed(backend):
    """Whether the Python package a backend needs is importable (paddle: always)."""
    if backend == "paddle":
        return True
    return importlib.util.find_spec(PACKAGES[backend]) is not None


def require(package, what):
    """Import `package` or raise the one-line UserError naming the extra that installs it."""
    if importlib.util.find_spec(package) is None:
        raise UserError(f"{what} needs the Python package {package}, which is not installed: {HPI_INSTALL} "
                        "(or leave high-performance inference off: use_hpip=False / -o Predict.use_hpip=False)")
    return importlib.import_module(package)


def cpu_has_bf16():
    """True when this CPU has native bf16 dot products (AVX512-BF16 or AMX)."""
    return bool(cpu_bf16_class())


def pp_option_settings(pp_option):
    """{run_mode, num_threads, device} from PaddleX's PaddlePredictorOption (or a dict of its fields
    run_mode, cpu_threads, device_type, device_id), for create_model and create_pipeline; a run
    mode this CPU build has not (TensorRT, ...) is a ConfigError."""
    if pp_option is None:
        return {}
    get = pp_option.get if isinstance(pp_option, dict) else (lambda key: getattr(pp_option, key, None))
    out = {}
    run_mode = get("run_mode")
    if run_mode is not None:
        if run_mode not in RUN_MODES:
            raise ConfigError(f"pp_option.run_mode {run_mode!r} is not available on this CPU build: use one of "
                              f"{', '.join(RUN_MODES)}")
        out["run_mode"] = run_mode
    if get("cpu_threads") is not None:
        out["num_threads"] = int(get("cpu_threads"))
    device_type, device_id = get("device_type"), get("device_id")
    if device_type is not None:
        out["device"] = str(device_type) if device_type == "cpu" or device_id is None else f"{device_type}:{device_id}"
    return out


def hpi_settings(predict_section):
    """(use_hpip, hpi_config dict) of a config's Predict section (what predict and evaluate pass on)."""
    hpi = predict_section.hpi_config
    defaults = {"auto_paddle2onnx": True}
    return bool(predict_section.use_hpip), {k: hpi[k] for k in HPI_CONFIG_KEYS
                                            if hpi[k] is not None and hpi[k] != defaults.get(k)}


def translate_hpi_config(hpi_config):
    """Our hpi_config keys from PaddleX's HPIConfig ones, which a PaddleX user's code passes:
    backend_config {"cpu_num_threads", "run_mode", "precision"} -> num_threads / precision,
    auto_config=False (needs a backend), auto_paddle2onnx; model_name, device_type, device_id and
    hpi_info are accepted and not needed. Our own keys pass through; anything else is a ConfigError."""
    cfg = dict(hpi_config or {})
    backend = cfg.get("backend")
    if backend in FOREIGN_BACKENDS:
        raise ConfigError(f"hpi_config.backend {backend} runs on {FOREIGN_BACKENDS[backend]}, which this build does "
                          f"not support; use one of {', '.join(BACKENDS)} (or leave it out for the automatic choice)")
    for key in PADDLEX_INFO_KEYS:
        cfg.pop(key, None)
    if cfg.pop("auto_config", True) is False and backend is None:
        raise ConfigError("hpi_config.auto_config=False needs hpi_config.backend (paddle, openvino or onnxruntime)")
    extra = cfg.pop("backend_config", None) or {}
    if not isinstance(extra, dict):
        raise ConfigError(f"hpi_config.backend_config must be a mapping, got {type(extra).__name__}")
    extra = dict(extra)
    if "cpu_num_threads" in extra:
        cfg.setdefault("num_threads", extra.pop("cpu_num_threads"))
    run_mode = extra.pop("run_mode", None)
    if run_mode is not None:
        if run_mode not in ("paddle", "mkldnn", "mkldnn_bf16"):
            raise ConfigError(f"hpi_config.backend_config.run_mode {run_mode!r} is not available on this CPU build: "
                              "use paddle, mkldnn or mkldnn_bf16")
        cfg.setdefault("precision", "bf16" if run_mode == "mkldnn_bf16" else "fp32")
    if "precision" in extra:
        cfg.setdefault("precision", extra.pop("precision"))
    if extra:
        raise ConfigError(f"hpi_config.backend_config has key(s) {', '.join(sorted(extra))} this project does not "
                          "act on: it takes cpu_num_threads, run_mode and precision")
    unknown = sorted(set(cfg) - set(HPI_CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"hpi_config has unknown key(s) {', '.join(unknown)}: allowed are {', '.join(HPI_CONFIG_KEYS)} "
                          "and PaddleX's backend_config, auto_config, model_name, device_type, device_id, hpi_info")
    return cfg


def check_hpi_config(hpi_config):
    """hpi_config (ours or PaddleX's, see translate_hpi_config) as a dict with every key of ours
    ({} / None -> all None but auto_paddle2onnx True); ConfigError naming a bad key or value."""
    cfg = translate_hpi_config(hpi_config)
    out = {k: cfg.get(k) for k in HPI_CONFIG_KEYS}
    out["auto_paddle2onnx"] = out["auto_paddle2onnx"] is not False
    if out["backend"] is not None and out["backend"] not in BACKENDS:
        raise ConfigError(f"hpi_config.backend '{out['backend']}' is not one of {', '.join(BACKENDS)} "
                          "(leave it out for the automatic choice)")
    if out["precision"] is not None and out["precision"] not in PRECISIONS:
        raise ConfigError(f"hpi_config.precision '{out['precision']}' is not one of {', '.join(PRECISIONS)}")
    n = out["num_threads"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"hpi_config.num_threads must be a whole number >= 1, got {n!r}")
    return out


def choose_backend(model_name, flags=None, installed=None, device_kind="cpu", precision=None):
    """(backend, precision, why) that `auto` runs: the fastest of AUTO_CANDIDATES that is installed
    and that the CPU supports (of `precision` when given), by batch-64 throughput in
    PRIOR_MEASUREMENTS for this CPU class (MobileFaceNet's rows for a model not measured).
    `installed`: a backend -> bool function (is_installed by default)."""
    installed = installed or is_installed
    if device_kind != "cpu":
        return "paddle", precision or "fp32", "GPU: Paddle Inference (the ONNX backends here are CPU only)"
    cls = cpu_bf16_class(flags)
    table = PRIOR_MEASUREMENTS.get(cls) or PRIOR_MEASUREMENTS["avx512_bf16"]
    rows = table.get(model_name) or table["MobileFaceNet"]
    usable = [(b, p) for b, p in AUTO_CANDIDATES if (p == "fp32" or cls) and (precision in (None, p))
              and (b, p) in rows and installed(b)]
    if not usable:  # bf16 asked for without OpenVINO: Paddle's own bf16
        return "paddle", precision, f"auto: precision {precision} without OpenVINO ({HPI_INSTALL}) is Paddle's"
    backend, precision = max(usable, key=lambda bp: rows[bp][1])
    missing = [b for b in ("openvino",) if not installed(b)]
    cpu = {"amx": "CPU with AMX-BF16", "avx512_bf16": "CPU with AVX512-BF16", "": "CPU without native bf16"}[cls]
    why = f"auto: fastest measured on a {cpu}" + (f" among those installed ({', '.join(missing)} is not: "
                                                   f"{HPI_INSTALL})" if missing else "")
    return backend, precision, why


def resolve(hpi_config, model_name, default_threads, device_kind="cpu", default_precision=None):
    """(backend, precision, threads, why) for an hpi_config; see the module docstring."""
    cfg = check_hpi_config(hpi_config)
    threads = int(cfg["num_threads"] or default_threads or 1)
    backend, precision = cfg["backend"], cfg["precision"]
    if precision == "int8":  # asked for by name only; see engine.inference.int8_gate
        if backend not in (None, "openvino"):
            raise ConfigError(f"hpi_config.precision int8 runs on OpenVINO only, not {backend}: set "
                              "hpi_config.backend=openvino or leave it out")
        if device_kind != "cpu":
            raise ConfigError("hpi_config.precision int8 runs on the CPU only here; use Global.device=cpu")
        return "openvino", "int8", threads, "hpi_config.precision int8 (never chosen automatically)"
    if backend is None:
        backend, precision, why = choose_backend(model_name, device_kind=device_kind, precision=precision)
    else:
        why = "hpi_config.backend"
        if precision is None:  # each backend's own default
            precision = ("bf16" if cpu_bf16_class() else "fp32") if backend == "openvino" else (default_precision or "fp32")
    if backend != "paddle" and device_kind != "cpu":
        raise ConfigError(f"hpi_config.backend {backend} runs on the CPU only here; use Global.device=cpu or backend paddle")
    if backend == "onnxruntime" and precision != "fp32":
        raise ConfigError("hpi_config: onnxruntime has no bf16 on CPU; use precision fp32 or backend openvino")
    return backend, precision, threads, why
