"""Inference speed of the exported face feature models: paddle.inference vs onnxruntime.

    python benchmarks/infer_speed.py                       # both models, 2 threads
    python benchmarks/infer_speed.py --models MobileFaceNet --threads 1 --batches 1,32,64

For each model: export (random weights with BatchNorm statistics calibrated on random images, or
--model-dir for a trained export), then time
  - latency: batch 1, median of the timed runs (ms)
  - throughput: batch 32 / 64, images per second over --seconds of back-to-back runs
for InferenceModel in fp32 (oneDNN) and bf16 (oneDNN, where the CPU supports it; features are
compared with fp32 by cosine), and for the same exported model converted with paddle2onnx and
run with onnxruntime (same threads). paddle2onnx/onnxruntime are optional (pip install
paddle2onnx onnxruntime); their rows are skipped when absent. Inputs are random [-1, 1] tensors:
no image decoding is timed.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from foundation.runtime import set_threads  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="MobileFaceNet,ResNet50_face")
    p.add_argument("--model-dir", default=None, help="benchmark this exported model instead of a random one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,32,64", help="batch 1 gives latency, the others throughput")
    p.add_argument("--seconds", type=float, default=5.0, help="timing budget per measurement")
    p.add_argument("--run-modes", default="paddle,mkldnn_bf16")
    p.add_argument("--formats", default="program,pir", help="exported formats to time (both are written by export)")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--ort-no-spin", action="store_true", help="onnxruntime threads sleep instead of spinning (fairer on a busy machine)")
    return p.parse_args(argv)


def calibrated_backbone(name, seed=0):
    import paddle

    from models import build_backbone

    paddle.seed(seed)
    model = build_backbone(name)
    x = paddle.to_tensor(np.random.default_rng(seed).uniform(-1, 1, (16, 3, 112, 112)).astype("float32"))
    norms = [m for m in model.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)]
    for m in norms:
        m._momentum = 0.0
    model.train()
    with paddle.no_grad():
        model(x)
    for m in norms:
        m._momentum = 0.9
    model.eval()
    return model


def time_fn(fn, batch, seconds, min_runs=5):
    """(median seconds per call, images per second) over about `seconds` of calls, after 2 warm-ups."""
    fn(batch)
    fn(batch)
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(batch) * len(times) / sum(times)


def onnx_predictor(model_dir, threads, workdir, spin=True):
    """An onnxruntime run function for the exported model, or (None, reason)."""
    try:
        import onnxruntime as ort
        import paddle2onnx
    except ImportError as e:
        return None, f"skipped: {e.name} not installed (pip install paddle2onnx onnxruntime)"
    from engine.inference_folder import find_model_files

    model_file, params_file, _ = find_model_files(model_dir)
    onnx_path = os.path.join(workdir, "model.onnx")
    # optimize_tool None: the default tools may try to pip-install packages at run time
    paddle2onnx.export(model_file, params_file, save_file=onnx_path, opset_version=11,
                       enable_onnx_checker=True, optimize_tool="None")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:  # busy-waiting worker threads collapse when the cores are shared with other work
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return (lambda b: sess.run(None, {name: b})[0]), f"onnxruntime {ort.__version__}"


def cosine_rows(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    from engine.inference_folder import export_inference
    from engine.inference_model import InferenceModel, cpu_supports_bf16

    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(1)
    print(f"threads {args.threads}; CPU bf16 support: {cpu_supports_bf16()}; random inputs, timing {args.seconds}s each")
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if args.model_dir:
                model_dir = args.model_dir
            else:
                model_dir = os.path.join(tmp, "inference")
                export_inference(calibrated_backbone(name), model_dir, name)
            data = {b: rng.uniform(-1, 1, (b, 3, 112, 112)).astype("float32") for b in batches}
            check = rng.uniform(-1, 1, (16, 3, 112, 112)).astype("float32")
            predictors = []
            reference = None
            for fmt in args.formats.split(","):
                for mode in args.run_modes.split(","):
                    try:
                        model = InferenceModel(model_dir, num_threads=args.threads, run_mode=mode, prefer_format=fmt)
                    except Exception as e:  # e.g. a --model-dir with one format only
                        print(f"{name}: {fmt} {mode} skipped: {e}")
                        continue
                    if model.format != fmt:
                        print(f"{name}: no {fmt} model in {model_dir}, skipped")
                        break
                    feats = model.predict(check)
                    note = model.bf16_note
                    if reference is None:
                        reference = feats
                    else:
                        note += f"; min cosine to {predictors[0][0]}: {cosine_rows(feats, reference).min():.5f}"
                    predictors.append((f"paddle {fmt} {mode}", model.predict, note.strip("; ")))
            if not args.no_onnx:
                fn, label = onnx_predictor(model_dir, args.threads, tmp, spin=not args.ort_no_spin)
                if fn is None:
                    print(f"{name}: onnxruntime {label}")
                else:
                    feats = fn(check)
                    predictors.append((label, fn, f"max abs diff to paddle fp32: {np.abs(feats - reference).max():.1e}"))
            for label, fn, note in predictors:
                cells = []
                for b in batches:
                    sec, ips = time_fn(fn, data[b], args.seconds)
                    cells.append(f"b{b}: {sec * 1000:.1f} ms" if b == 1 else f"b{b}: {ips:.1f} img/s")
                row = f"{name:14s} {label:30s} " + "  ".join(cells) + (f"  ({note})" if note else "")
                rows.append(row)
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
