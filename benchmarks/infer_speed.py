"""Inference speed per backend, precision, format and model, through the one predictor (InferenceModel).

    python benchmarks/infer_speed.py                        # both models, 2 threads
    python benchmarks/infer_speed.py --models MobileFaceNet --threads 1 --seconds 1
    python benchmarks/infer_speed.py --model-dir output/best_model/inference --models MobileFaceNet

For each model: export (random weights with BatchNorm statistics calibrated on random images, or
--model-dir for a trained export; both Paddle formats), then time every engine installed:
  - paddle fp32 / bf16 (oneDNN) on inference.pdmodel and on inference.json (PIR executor), and
    fp32 on a copy of the folder without inference.pdmodel (as official models ship: it runs the
    old-format program engine.inference.program_convert writes into the cache),
  - openvino fp32 / bf16 and onnxruntime fp32 on the ONNX model (paddle2onnx, converted from the
    .json and from the .pdmodel: the two ONNX files are compared byte for byte, so an ONNX backend
    runs both formats at the same speed when they are equal),
  - openvino int8: the folder's gated inference_int8.onnx (Export.int8) when its export kept it;
    otherwise, where nncf is installed, an int8 model quantized here on synthetic inputs for timing
    only (labelled so: its accuracy is not gated, and int8 is never chosen automatically),
  - auto: use_hpip=True without a backend (what the automatic choice picks on this CPU),
as batch-1 latency (median ms) and batch-64 throughput (images/s). Each engine runs in a fresh
process of its own for each of --rounds blocks, the order rotated each round, so a change of
machine load hits all of them alike and no engine's idle worker threads (OpenMP spins for a while
after a parallel region) take the cores from the next one. `auto` is timed in its own process
too, and compared with the best engine and with the named engine it picked.
Features are checked against paddle fp32 (.pdmodel) by the lowest cosine. Prints the CPU, its
flags, the threads and the load average before and after, and the ratio of auto to the best.
Inputs are random [-1, 1] tensors: no image decoding is timed.
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from foundation.runtime import cpu_flags, cpuinfo_field, set_threads  # noqa: E402

SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="MobileFaceNet,ResNet50_face")
    p.add_argument("--model-dir", default=None, help="benchmark this exported model instead of a random one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--throughput-batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=2.0, help="timing budget per engine and batch size")
    p.add_argument("--rounds", type=int, default=3, help="interleaved blocks per engine and batch size")
    return p.parse_args(argv)


def calibrated_backbone(name, seed=0):
    import paddle

    from benchmarks.loopback_service import calibrate_batchnorm
    from models import build_backbone

    paddle.seed(seed)
    x = paddle.to_tensor(np.random.default_rng(seed).uniform(-1, 1, (16, 3, 112, 112)).astype("float32"))
    return calibrate_batchnorm(build_backbone(name), x)


def cosine_rows(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def engine_specs(model_dir, threads, work):
    """[(label, spec)] of every engine installed here, the paddle fp32 .pdmodel one first; a spec is
    what a child process needs to build the engine (see build_engine)."""
    from engine.inference.backends import cpu_bf16_class, is_installed

    bf16 = bool(cpu_bf16_class())
    out = []
    for fmt, fname in (("program", ".pdmodel"), ("pir", ".json")):
        if not os.path.isfile(os.path.join(model_dir, "inference" + fname)):  # a folder exported elsewhere may hold one
            continue
        for precision in ("fp32", "bf16") if bf16 else ("fp32",):
            out.append((f"paddle {precision} {fname}", {"format": fmt, "backend": "paddle", "precision": precision}))
    # what an official model (inference.json only) runs on plain Paddle: its checked old-format program
    if os.path.isfile(os.path.join(model_dir, "inference.json")) and os.path.isfile(os.path.join(model_dir, "inference.yml")):
        out.append(("paddle fp32 .json-only folder", {"json_only": json_only_copy(model_dir, os.path.join(work, "json_only"))}))
    for backend, precisions in (("openvino", ("fp32", "bf16") if bf16 else ("fp32",)), ("onnxruntime", ("fp32",))):
        if not is_installed(backend):
            print(f"  {backend}: not installed (pip install \".[cpu,hpi]\"), skipped")
            continue
        for precision in precisions:
            out.append((f"{backend} {precision} onnx", {"format": "pir", "backend": backend, "precision": precision}))
    int8 = int8_spec(model_dir, next((s for _, s in out if s.get("backend") == "openvino"), None), threads)
    if int8:
        out.append(int8)
    out.append(("auto", {"auto": True}))
    return out


def build_engine(spec, model_dir, threads):
    """The predictor a spec names (in the child process that times it)."""
    from engine.inference.executors import OpenVINOExecutor
    from engine.inference.model import InferenceModel

    if spec.get("int8_file"):
        return OpenVINOExecutor(spec["int8_file"], "int8", threads)
    if spec.get("auto"):
        return InferenceModel(model_dir, num_threads=threads, use_hpip=True)
    if spec.get("json_only"):
        return InferenceModel(spec["json_only"], num_threads=threads)
    hpi = {"backend": spec["backend"], "precision": spec["precision"]}
    if spec.get("int8_gated"):
        hpi = {"precision": "int8"}
    return InferenceModel(model_dir, num_threads=threads, prefer_format=spec["format"], use_hpip=True, hpi_config=hpi)


def json_only_copy(model_dir, out):
    """A copy of the folder as official models ship it (no inference.pdmodel) in `out`."""
    import shutil

    os.makedirs(out)
    for name in ("inference.json", "inference.pdiparams", "inference.yml"):
        shutil.copy(os.path.join(model_dir, name), out)
    return out


def int8_spec(model_dir, openvino_spec, threads):
    """(label, spec) for OpenVINO int8, or None: the folder's gated model when its export kept it,
    else (nncf installed) an int8 model quantized now for timing only; see the docstring."""
    from engine.inference.folder import read_inference_yml
    from engine.inference.model import InferenceModel
    from engine.inference.onnx_convert import check_images, quantize_int8

    rec = read_inference_yml(model_dir).get("Int8") or {}
    if rec.get("passed"):
        return "openvino int8 onnx (gated)", {"int8_gated": True, "format": "pir"}
    if openvino_spec is None or not importable("nncf"):
        print("  openvino int8: needs openvino and nncf (pip install \".[cpu,hpi,int8]\"), skipped")
        return None
    onnx_file = InferenceModel(model_dir, num_threads=threads, prefer_format="pir", use_hpip=True,
                               hpi_config={"backend": "onnxruntime"}).onnx_file
    why = "refused" if rec else "ungated"
    folder = tempfile.mkdtemp(prefix="int8_timing_", dir=os.environ.get("XDG_CACHE_HOME"))  # main's cache: removed
    path = os.path.join(folder, "timing_only_int8.onnx")
    quantize_int8(onnx_file, [check_images(1, seed=i) for i in range(32)], path)
    return f"openvino int8 onnx ({why}, timing)", {"int8_file": path}


def onnx_formats_equal(model_dir):
    """Whether paddle2onnx gives the same ONNX bytes from inference.json and inference.pdmodel
    (None when the backends are not installed)."""
    from engine.inference.backends import is_installed
    from engine.inference.model import InferenceModel

    if not (is_installed("onnxruntime") and importable("paddle2onnx")):
        return None
    if not all(os.path.isfile(os.path.join(model_dir, n)) for n in ("inference.json", "inference.pdmodel")):
        return None
    files = [InferenceModel(model_dir, prefer_format=f, use_hpip=True, hpi_config={"backend": "onnxruntime"}).onnx_file
             for f in ("program", "pir")]
    digests = {hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}
    return len(digests) == 1


def importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def time_engine(predict, batch, seconds, warmup):
    """[seconds per call] of predict(batch) for a time budget, after `warmup` calls (oneDNN and
    OpenVINO build their kernels for the shape on the first)."""
    for _ in range(warmup):
        predict(batch)
    times, start = [], time.perf_counter()
    while True:
        t = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start >= seconds:
            return times


def child_main(job_file):
    """One engine in this process: build it, time batch 1 then the throughput batch, write the
    features of the check batch; the result goes to job["out"] as JSON."""
    with open(job_file) as f:
        job = json.load(f)
    set_threads(job["threads"])
    model = build_engine(job["spec"], job["model_dir"], job["threads"])
    rng = np.random.default_rng(job["round"])
    lat = time_engine(model.predict, rng.uniform(-1, 1, (1, 3, 112, 112)).astype("float32"), job["seconds"], 3)
    tb = job["throughput_batch"]
    thr = time_engine(model.predict, rng.uniform(-1, 1, (tb, 3, 112, 112)).astype("float32"), job["seconds"], 1)
    np.save(job["out"] + ".npy", model.predict(np.load(job["check"])))
    desc = f"{model.backend} {model.precision}" if hasattr(model, "backend") else ""
    with open(job["out"], "w") as f:
        json.dump({"lat": lat, "thr": thr, "engine": desc}, f)
    return 0


def time_in_processes(runs, model_dir, args, check_file, work):
    """{label: (latencies, throughput call times, features, engine description)}: each engine timed
    in a fresh process of its own per round (no engine's idle threads can steal the cores of the
    next one), the order rotated each round so a change of machine load hits all of them alike."""
    out = {label: ([], [], None, "") for label, _ in runs}
    per_block = args.seconds / args.rounds
    for r in range(args.rounds):
        order = runs[r % len(runs):] + runs[:r % len(runs)]
        for label, spec in order:
            job_file = os.path.join(work, "job.json")
            res_file = os.path.join(work, "result.json")
            with open(job_file, "w") as f:
                json.dump({"spec": spec, "model_dir": model_dir, "threads": args.threads, "round": r,
                           "seconds": per_block, "throughput_batch": args.throughput_batch,
                           "check": check_file, "out": res_file}, f)
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", job_file],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{label}: the timing process failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            with open(res_file) as f:
                res = json.load(f)
            lat, thr, _, _ = out[label]
            out[label] = (lat + res["lat"], thr + res["thr"], np.load(res_file + ".npy"), res["engine"])
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    args = parse_args(argv)
    set_threads(args.threads)
    from engine.inference.folder import export_inference

    flags = cpu_flags()
    load_before = os.getloadavg()
    print(f"CPU: {cpuinfo_field('model name') or 'unknown'}; {os.cpu_count()} logical cores; flags: "
          + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in SHOWN_FLAGS))
    print(f"threads {args.threads}; load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          f"(1/5/15 min) at start; batch 1 = median latency, batch {args.throughput_batch} = throughput; "
          f"{args.rounds} interleaved blocks, {args.seconds:g} s per engine and batch")
    versions = []
    for pkg in ("paddlepaddle", "openvino", "onnxruntime", "paddle2onnx"):
        try:
            import importlib.metadata

            versions.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{pkg} not installed")
    print("; ".join(versions))
    rng = np.random.default_rng(1)
    tb = args.throughput_batch
    cache = tempfile.TemporaryDirectory()  # the ONNX conversions of this run (random nets: not worth keeping)
    os.environ["XDG_CACHE_HOME"] = cache.name
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if args.model_dir:
                model_dir = args.model_dir
            else:
                model_dir = os.path.join(tmp, "inference")
                export_inference(calibrated_backbone(name), model_dir, name)
            print(f"\n{name} ({model_dir})")
            runs = engine_specs(model_dir, args.threads, tmp)
            check_file = os.path.join(tmp, "check.npy")
            np.save(check_file, rng.uniform(-1, 1, (16, 3, 112, 112)).astype("float32"))
            timed = time_in_processes(runs, model_dir, args, check_file, tmp)
            ref_label = runs[0][0]
            ref = timed[ref_label][2]
            for label, spec in runs:  # Paddle's bf16 falls back to fp32 where a layer has no bf16 kernel
                ran = timed[label][3].split(" ")[-1:]
                if spec.get("precision") == "bf16" and ran == ["fp32"]:
                    timed[label + " (ran fp32)"] = timed.pop(label)
            auto_engine = timed["auto"][3]
            if auto_engine:
                timed[f"auto = {auto_engine}"] = timed.pop("auto")
            res = {label: (statistics.median(v[0]) * 1000, tb * len(v[1]) / sum(v[1])) for label, v in timed.items()}
            cos = {label: float(cosine_rows(v[2], ref).min()) for label, v in timed.items()}
            print(f"  {'engine':38s} {'b1 ms':>8s} {f'b{tb} img/s':>12s}  min cosine to {ref_label}")
            for label in res:
                ms, ips = res[label]
                print(f"  {label:38s} {ms:8.2f} {ips:12.1f}  {cos[label]:.5f}")
            # the best of what auto may pick: int8 is never chosen automatically (and may be ungated)
            named = {k: v for k, v in res.items() if not k.startswith("auto") and "int8" not in k}
            auto_label = next(k for k in res if k.startswith("auto"))
            best_ms = min(v[0] for v in named.values())
            best_ips = max(v[1] for v in named.values())
            best_ms_label = min(named, key=lambda k: named[k][0])
            best_ips_label = max(named, key=lambda k: named[k][1])
            a_ms, a_ips = res[auto_label]
            own = next((k for k in named if auto_engine and k.startswith(auto_engine)), None)
            if own:
                print(f"  auto / its own engine ({own}) timed separately: batch 1 {res[own][0] / a_ms:.2f}, "
                      f"batch {tb} {a_ips / res[own][1]:.2f} (the spread between two runs of one engine)")
            print(f"  auto / best: batch 1 {best_ms / a_ms:.2f} (best {best_ms_label}), batch {tb} "
                  f"{a_ips / best_ips:.2f} (best {best_ips_label}); 1.00 = as fast as the best")
            print(f"  auto picked the best engine of this run: batch 1 {'yes' if own == best_ms_label else 'no'}, "
                  f"batch {tb} {'yes' if own == best_ips_label else 'no'}")
            base = res[ref_label]
            print(f"  auto / today's default ({ref_label}): batch 1 {base[0] / a_ms:.2f}x faster, "
                  f"batch {tb} {a_ips / base[1]:.2f}x the throughput")
            for prec in ("fp32", "bf16"):
                j, p = res.get(f"paddle {prec} .json"), res.get(f"paddle {prec} .pdmodel")
                if j and p:
                    print(f"  paddle {prec}: .json / .pdmodel throughput {j[1] / p[1]:.2f}, latency {p[0] / j[0]:.2f}")
            j, p = res.get("paddle fp32 .json-only folder"), res.get("paddle fp32 .pdmodel")
            if j and p:
                print(f"  .json-only folder (converted) / .pdmodel: throughput {j[1] / p[1]:.2f}, latency {p[0] / j[0]:.2f}")
            same = onnx_formats_equal(model_dir)
            if same is not None:
                print(f"  ONNX from .json and from .pdmodel: {'byte-identical' if same else 'DIFFERENT'}"
                      + (" (every ONNX backend runs both formats alike)" if same else ""))
    cache.cleanup()
    load_after = os.getloadavg()
    print(f"\nload average {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
