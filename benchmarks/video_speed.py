"""Video recognition speed: frames/s end to end (decode, detect, track, embed, search, vote).

    python benchmarks/video_speed.py [--threads 2] [--seconds 12] [--sizes 720p,1080p] [--every 1,2,3]

A clip per size is built first (benchmarks/video_clips.py: LFW photos from ../shared/data when
present, else the demo faces; people in turn, moving and zooming, with gaps; 25 fps, MPEG-4 in
.mp4), then decoded and processed by:
  - tracked: engine.recognition.video.VideoRecognizer with the config's defaults, detection every
    n-th frame for each --every;
  - every face, every frame: decode, detect, align and embed every face of every frame and search
    each one (the loop face_recognition's webcam examples run), no tracker.
Each row is one run in a fresh process (so memory is its own): frames/s of wall time, the real-time
factor (frames/s / 25), the speed-up over the every-face loop of the same size, and the peak RSS.
The exported model is a random-weight MobileFaceNet (the speed does not depend on the weights).
The CPU, the threads and the load average before and after are printed with the figures.
"""
import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
for _path in (ROOT, BENCH):
    if _path not in sys.path:
        sys.path.insert(0, _path)
SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
LFW = os.path.join(ROOT, "..", "shared", "data", "lfw_dev", "images")
FPS = 25.0


def script_for(size, seconds, people):
    """People in turn (two on screen at a time), moving and zooming, with gaps, scaled to `size`."""
    from video_clips import Appearance

    w, h = size
    k = h / 720.0
    out, t, i = [], 0.0, 0
    while t < seconds:
        p = people[i % len(people)]
        side0, side1 = int(260 * k), int(380 * k)
        x0 = int((0.05 + 0.5 * (i % 2)) * w)
        out.append(Appearance(p, t, min(t + 3.0, seconds), (x0, int(0.1 * h), side0),
                              (x0 + int(0.15 * w), int(0.2 * h), side1)))
        t += 1.6
        i += 1
    return out


def faces_for_clip():
    import cv2
    from video_clips import demo_people

    if os.path.isdir(LFW):
        names = ("Colin_Powell", "Tony_Blair", "Hugo_Chavez", "Laura_Bush", "Jacques_Chirac")
        return {n: cv2.imread(sorted(glob.glob(os.path.join(LFW, n, "*.jpg")))[0]) for n in names}, "LFW photos"
    return demo_people(os.path.join(ROOT, "dataset", "face_demo")), "demo faces"


def one_run(args):
    """Child process: one (size, mode, every) measurement; prints one JSON line."""
    import numpy as np

    from datasets.video import open_video
    from engine.recognition.pipeline import create_pipeline
    from engine.recognition.video import VideoRecognizer, VideoSettings

    pipe = create_pipeline(config={"SubModules": {"Recognition": {"model_dir": args.model}},
                                   "Global": {"num_threads": args.threads}})
    rng = np.random.default_rng(0)
    index = pipe.new_index(in_memory=True)
    feats = rng.standard_normal((200, pipe.model.embedding_size)).astype(np.float32)
    index.add(feats / np.linalg.norm(feats, axis=1, keepdims=True), [f"person_{i}" for i in range(200)])
    source = open_video(args.clip)
    start = time.perf_counter()
    cpu0 = time.process_time()
    if args.mode == "tracked":
        result = VideoRecognizer(pipe, VideoSettings(detect_every=args.every)).run(source, index)
        frames, extra = result["frames"], {"tracks": len(result["tracks"])}
    else:
        frames = faces = 0
        for _, _, frame in source.frames():
            found = pipe.faces_of(frame)
            if found:
                index.search(pipe.embed([c for _, c in found]), 1)
            frames += 1
            faces += len(found)
        extra = {"faces": faces}
    wall = time.perf_counter() - start
    print(json.dumps({"frames": frames, "wall": wall, "cpu": time.process_time() - cpu0,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--sizes", default="720p,1080p")
    p.add_argument("--every", default="1,2,3", help="detection every n-th frame, for the tracked runs")
    p.add_argument("--work", default=None, help="folder for the clips and the model (default: a temporary one)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--clip", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--every-n", dest="every_one", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        args.every = args.every_one
        return one_run(args)

    from loopback_service import export_random_model
    from video_clips import make_clip

    from foundation.runtime import cpu_summary

    work = args.work or tempfile.mkdtemp(prefix="facefeat_video_speed_")
    os.makedirs(work, exist_ok=True)
    print(f"CPU {cpu_summary()}; {args.threads} threads; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    model = export_random_model(os.path.join(work, "model"), 0)
    faces, what = faces_for_clip()
    rows = []
    for size_name in args.sizes.split(","):
        size = SIZES[size_name]
        clip = os.path.join(work, f"clip_{size_name}.mp4")
        if not os.path.isfile(clip):
            make_clip(clip, script_for(size, args.seconds, list(faces)), faces, size=size, fps=FPS,
                      seconds=args.seconds)
        runs = [("every face, every frame", "loop", 1)] + [(f"tracked, detect every {n}", "tracked", int(n))
                                                          for n in args.every.split(",")]
        base = None
        for label, mode, every in runs:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", "--clip", clip, "--model", model, "--mode", mode,
                   "--every-n", str(every), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            fps = r["frames"] / r["wall"]
            base = base or fps
            rows.append((size_name, label, fps, fps / FPS, fps / base, r["peak_rss_mb"]))
            print(f"{size_name:6s} {label:26s}: {fps:7.1f} frames/s ({fps / FPS:.2f}x real time at 25 fps), "
                  f"x{fps / base:.2f} the every-face loop, CPU {r['cpu'] / r['frames'] * 1000:.1f} ms/frame, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB (load average {os.getloadavg()[0]:.2f})", flush=True)
    print(f"clips: {what}, {args.seconds:g} s at 25 fps; load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
