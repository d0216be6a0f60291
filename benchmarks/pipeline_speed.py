"""Photos/s of the face recognition pipeline (decode, detect, align, embed, search) by thread count.

    python benchmarks/pipeline_speed.py                        # 300 LFW photos, Global.num_threads 1 and 2
    python benchmarks/pipeline_speed.py --photos 600 --threads 1 2 4 --rounds 2
    python benchmarks/pipeline_speed.py --in-process           # also 2+ threads without worker processes

Photos: the first --photos of ../shared/data/lfw_dev/images (250x250 LFW photos, one face near the
centre, often others around it), or where that folder is absent, demo faces enlarged onto a plain
canvas (benchmarks/loopback_service.demo_face_photo, the ones YuNet detects) saved as JPEG files and
repeated up to --photos. Model: a random-init MobileFaceNet export (speed does not depend on the
weights) unless --model-dir names one. Gallery: the first 50 photos, labelled by person.

Each setting runs in a fresh process of its own (one per setting and round, the order rotated each
round): `pipeline.predict` over the photos is timed after a warm-up call, with the worker processes
already started (their start-up is timed and printed on its own: a call of fewer than
engine.recognition.workers.MIN_IMAGES_TO_START photos does not start them). `build_index` over the
same photos is timed the same way (gallery enrolment). Printed per setting: photos/s, the CPU
seconds per photo of the whole process tree (the pipeline's process and its workers: what a
loaded machine cannot hide), and the load average before and after; then the ratio of each thread
count's photos/s to 1 thread's. With --in-process the settings of 2+ threads also run without
worker processes (the model on every thread, detection on one, in the pipeline's process).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "lfw_dev"))
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
GALLERY_PHOTOS = 50


def lscpu():
    """{field: value} of `lscpu` (empty when it is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def cpu_line():
    from foundation.runtime import cpu_flags, cpuinfo_field

    info = lscpu()
    flags = set(info.get("Flags", "").split()) or cpu_flags()
    shown = " ".join(f for f in SHOWN_FLAGS if f in flags) or "none of " + "/".join(SHOWN_FLAGS)
    return (f"CPU {info.get('Model name') or cpuinfo_field('model name') or 'unknown'} "
            f"({info.get('Vendor ID') or cpuinfo_field('vendor_id')}, family {info.get('CPU family', '?')} "
            f"model {info.get('Model', '?')}), {os.cpu_count()} logical CPUs; flags: {shown}")


def load_average():
    return [round(v, 2) for v in os.getloadavg()]


def photo_paths(data, count, work):
    """(paths of `count` photos, where they come from): LFW's, else demo faces written under `work`."""
    from datasets.transforms import list_images

    images = os.path.join(data, "images")
    if os.path.isdir(images):
        paths = list_images(images)[:count]
        return paths, f"the first {len(paths)} LFW photos of {images}"
    from benchmarks.loopback_service import detected_demo_photos

    demo = detected_demo_photos(limit=24)
    if not demo:
        raise SystemExit("YuNet finds no demo face: no photos to time")
    folder = os.path.join(work, "photos")
    paths = []
    for i in range(count):
        person, data_bytes = demo[i % len(demo)]
        path = os.path.join(folder, person, f"{i:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data_bytes)
        paths.append(path)
    return paths, f"{count} JPEG files of {len(demo)} demo faces on a 320x320 canvas ({data} is absent)"


def tree_cpu_seconds(pid):
    """User + system CPU seconds of process `pid` and its living children (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_setting(args):
    """In a fresh process: time predict and build_index at one thread count; print one JSON line."""
    from engine import create_pipeline
    from engine.recognition import workers

    if args.no_workers:  # the in-process plan at the same thread count, for comparison
        workers.MIN_IMAGES_TO_START = float("inf")
    with open(args.paths_file, encoding="utf-8") as f:
        paths = f.read().split("\n")
    labels = [os.path.basename(os.path.dirname(p)) for p in paths]
    config = {"SubModules.Recognition.model_dir": args.model_dir, "Global.num_threads": args.setting_threads}
    if args.batch_size:
        config["SubModules.Recognition.batch_size"] = args.batch_size
    pipe = create_pipeline(config=config)
    t0 = time.perf_counter()
    if not args.no_workers:  # start_workers() would start them whatever the threshold
        pipe.start_workers()
    start_seconds = time.perf_counter() - t0
    index = pipe.build_index(paths[:GALLERY_PHOTOS], labels[:GALLERY_PHOTOS])
    list(pipe.predict(paths[:32], index=index))  # warm-up: oneDNN primitives of every batch shape
    out = {"threads": args.setting_threads, "workers": pipe.worker_processes,
           "start_seconds": start_seconds, "load_before": load_average()}
    cpu0, t0 = tree_cpu_seconds(os.getpid()), time.perf_counter()
    results = list(pipe.predict(paths, index=index))
    seconds, cpu = time.perf_counter() - t0, tree_cpu_seconds(os.getpid()) - cpu0
    out.update(photos=len(results), faces=sum(len(r["boxes"]) for r in results), predict_seconds=seconds,
               predict_photos_per_s=len(results) / seconds, predict_cpu_ms_per_photo=1000 * cpu / len(results))
    cpu0, t0 = tree_cpu_seconds(os.getpid()), time.perf_counter()
    pipe.build_index(paths, labels)
    seconds, cpu = time.perf_counter() - t0, tree_cpu_seconds(os.getpid()) - cpu0
    out.update(enrol_photos_per_s=len(paths) / seconds, enrol_cpu_ms_per_photo=1000 * cpu / len(paths),
               load_after=load_average())
    pipe.close()
    print("RESULT " + json.dumps(out), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA, help="the lfw_dev folder (images/<Person>/*.jpg)")
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="Global.num_threads settings")
    ap.add_argument("--rounds", type=int, default=1, help="fresh processes per setting, the order rotated")
    ap.add_argument("--in-process", action="store_true", help="also time 2+ threads without worker processes")
    ap.add_argument("--model-dir", default=None, help="an exported face feature model (default: random MobileFaceNet)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="SubModules.Recognition.batch_size (default: the pipeline config's)")
    ap.add_argument("--json", default=None, help="also write every figure here")
    # one setting in a fresh process (what the run above starts)
    ap.add_argument("--setting-threads", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-workers", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--paths-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.setting_threads is not None:
        return run_setting(args)

    work = tempfile.mkdtemp(prefix="pipeline_speed_")
    try:
        from benchmarks.loopback_service import export_random_model

        model_dir = args.model_dir or export_random_model(work)
        paths, source = photo_paths(args.data, args.photos, work)
        paths_file = os.path.join(work, "paths.txt")
        with open(paths_file, "w", encoding="utf-8") as f:
            f.write("\n".join(paths))
        settings = [(t, False) for t in args.threads]
        if args.in_process:
            settings += [(t, True) for t in args.threads if t >= 2]
        print(cpu_line())
        print(f"photos: {source}; model {'random-init MobileFaceNet' if not args.model_dir else model_dir}; "
              f"batch {args.batch_size or 'of the pipeline config'}")
        runs = {s: [] for s in settings}
        for r in range(args.rounds):
            for threads, in_process in settings[r % len(settings):] + settings[:r % len(settings)]:
                cmd = [sys.executable, os.path.abspath(__file__), "--setting-threads", str(threads),
                       "--paths-file", paths_file, "--model-dir", model_dir] + (["--no-workers"] if in_process else []) \
                    + ([] if args.batch_size is None else ["--batch-size", str(args.batch_size)])
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
                                     f"\n{proc.stderr[-2000:]}")
                res = json.loads(line[len("RESULT "):])
                runs[(threads, in_process)].append(res)
                how = f"{res['workers']} worker processes (started in {res['start_seconds']:.1f} s)" \
                    if res["workers"] else "in process"
                print(f"  round {r + 1}, Global.num_threads={threads}, {how}: predict "
                      f"{res['predict_photos_per_s']:.1f} photos/s ({res['predict_cpu_ms_per_photo']:.2f} CPU ms a "
                      f"photo), build_index {res['enrol_photos_per_s']:.1f} photos/s "
                      f"({res['enrol_cpu_ms_per_photo']:.2f} CPU ms); {res['photos']} photos, {res['faces']} faces; "
                      f"load average {res['load_before']} before, {res['load_after']} after", flush=True)
        best = {s: {k: max(r[k] for r in rs) for k in ("predict_photos_per_s", "enrol_photos_per_s")}
                for s, rs in runs.items()}
        base = best.get((1, False))
        print("best of the rounds per setting" + (", ratio to 1 thread:" if base else ":"))
        for (threads, in_process), b in best.items():
            ratio = (f"; x{b['predict_photos_per_s'] / base['predict_photos_per_s']:.2f} predict, "
                     f"x{b['enrol_photos_per_s'] / base['enrol_photos_per_s']:.2f} build_index") if base else ""
            print(f"  Global.num_threads={threads}{' in process' if in_process else ''}: predict "
                  f"{b['predict_photos_per_s']:.1f} photos/s, build_index {b['enrol_photos_per_s']:.1f} photos/s{ratio}")
        print(f"load average at the end {load_average()} ({os.cpu_count()} logical CPUs): a load above the "
              "benchmark's own threads means other work shared the cores, and the ratios are lower bounds")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"cpu": cpu_line(), "photos": source, "runs": {f"{t}{'-in-process' if p else ''}": rs
                                                                          for (t, p), rs in runs.items()}}, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
