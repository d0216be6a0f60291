"""Faces in video: datasets/video.py (opening, reading, bad input) and engine/recognition/video.py
(tracks named once each, on a timeline) on a clip built from synthetic demo faces, and on one built
from real LFW photos (skipped without ../shared/data)."""
import glob
import http.server
import json
import os
import threading

import cv2
import numpy as np
import pytest

from benchmarks.video_clips import DEMO_SCRIPT, Appearance, background, demo_people, make_clip, render
from datasets import video as video_io
from datasets.video import camera_index, is_stream_url, is_video_input, open_video
from foundation.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join(REPO_ROOT, "dataset", "face_demo")
LFW = os.path.join(REPO_ROOT, "..", "shared", "data", "lfw_dev", "images")


def test_what_counts_as_a_video_input():
    assert is_video_input("talk.MP4") and is_video_input("a/b.webm") and is_video_input(0) and is_video_input("1")
    assert is_video_input("camera:2") and camera_index("camera:2") == 2 and camera_index(True) is None
    assert is_stream_url("rtsp://cam.local/live") and is_stream_url("https://x.org/v/clip.mp4?sig=1")
    assert not is_video_input("photo.jpg") and not is_video_input("https://x.org/photo.jpg")
    assert not is_video_input("folder") and camera_index(-1) is None


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    """A 2 s 160x120 MJPG AVI of moving noise (readable, with a frame count in its header)."""
    path = tmp_path_factory.mktemp("clips") / "noise.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(20):
        writer.write(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    writer.release()
    return path


def test_a_video_is_read_frame_by_frame_with_its_times(small_clip):
    source = open_video(str(small_clip))
    frames = list(source.frames())
    assert (source.kind, source.fps, source.frame_count, source.width, source.height) == ("file", 10.0, 20, 160, 120)
    assert [i for i, _, _ in frames] == list(range(20)) and frames[5][1] == pytest.approx(0.5)
    assert source.ended_early is None


def test_a_stop_request_ends_reading(small_clip):
    source = open_video(str(small_clip))
    seen = []
    for i, _, _ in source.frames(stop=lambda: len(seen) >= 4):
        seen.append(i)
    assert seen == [0, 1, 2, 3]


def test_a_truncated_file_is_read_up_to_where_it_stops(small_clip, tmp_path):
    data = small_clip.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    source = open_video(str(cut))
    n = sum(1 for _ in source.frames())
    assert 0 < n < 20 and source.frame_count == 20
    assert source.ended_early.startswith(f"the file ended at frame {n} of the 20")


@pytest.mark.parametrize("content,expected", [
    (b"", "not a video OpenCV's FFmpeg can open"),
    (b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8, "not a video OpenCV's FFmpeg can open"),
])
def test_an_empty_or_corrupt_file_is_one_line(tmp_path, content, expected):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=expected) as e:
        source = open_video(str(bad))
        list(source.frames())  # some corrupt files open and then decode nothing
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_a_file_without_frames(tmp_path):
    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    writer.release()
    with pytest.raises(UserError, match=r"no frame could be decoded|not a video OpenCV's FFmpeg can open"):
        list(open_video(str(empty)).frames())


def test_missing_file_and_oversized_frames(small_clip, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_video(str(tmp_path / "nope.mp4"))
    with pytest.raises(UserError, match="exceed the 100-pixel limit"):
        open_video(str(small_clip), max_pixels=100)


def test_a_stream_that_stops_is_reopened_a_bounded_number_of_times(small_clip, monkeypatch):
    """A loopback HTTP 'stream' that serves the clip once and then refuses: read to its end, the
    bounded reconnection attempts, then a clear end."""
    monkeypatch.setattr(video_io, "RECONNECT_PAUSES", (0.01, 0.02))
    served = []
    data = small_clip.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served.append(self.path)
            if len(served) > 1:
                self.send_error(503)
                return
            self.send_response(200)
            self.send_header("Content-Type", "video/x-msvideo")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = open_video(f"http://user:secret@127.0.0.1:{server.server_port}/live.avi", reconnects=2)
        assert source.kind == "stream" and "secret" not in source.name
        n = sum(1 for _ in source.frames())
    finally:
        server.shutdown()
    assert n == 20 and source.reconnects_used == 2
    assert source.ended_early == "the stream stopped sending frames after 20 frames and 2 reconnection attempts"


def test_an_unreachable_stream_is_one_line():
    with pytest.raises(UserError, match=r"the stream rtsp://127\.0\.0\.1:9/x cannot be opened"):
        open_video("rtsp://127.0.0.1:9/x")


# --------------------------------------------------------------------------- recognition
paddle = pytest.importorskip("paddle")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from _tiny_face_model import export_random_model

    from engine.recognition.pipeline import create_pipeline

    model = export_random_model(tmp_path_factory.mktemp("model"))
    return create_pipeline(config={"SubModules": {"Recognition": {"model_dir": model}}, "Global": {"num_threads": 2},
                                   "det_threshold": 0.5})


def gallery_of(pipeline, faces, size, script, names):
    """An in-memory index of the named people's faces as the clip shows them (on its background,
    where each appearance starts): an untrained network matches a face to itself far more than to
    another, and sees the background around it too."""
    bg = background(size)
    firsts = [a for a in script if a.person in names]
    shots = [render([Appearance(a.person, 0, 1, a.first, a.first)], faces, 0.0, size, bg) for a in firsts]
    return pipeline.build_index(shots, [a.person for a in firsts])


def check_against_script(result, script, known, tolerance=0.5):
    """Every appearance of the script is one reported track with the right label, start and end
    within `tolerance` seconds; nothing else is reported."""
    tracks = sorted(result["tracks"], key=lambda t: t["start_time"])
    expected = sorted(script, key=lambda a: a.start)
    assert len(tracks) == len(expected), [(t["label"], t["start_time"], t["end_time"]) for t in tracks]
    for t, a in zip(tracks, expected):
        want = a.person if a.person in known else "unknown"
        assert t["label"] == want, (t, a)
        assert abs(t["start_time"] - a.start) <= tolerance and abs(t["end_time"] - min(a.end, result["duration"])) \
            <= tolerance, (t["start_time"], t["end_time"], a)


def test_a_synthetic_clip_gives_one_named_track_per_appearance(pipeline, tmp_path):
    from engine.recognition.video import AnnotatedVideoWriter, VideoRecognizer, VideoSettings

    faces = demo_people(DEMO_DIR)
    clip = tmp_path / "people.mp4"
    frames = make_clip(clip, DEMO_SCRIPT, faces)
    index = gallery_of(pipeline, faces, (640, 360), DEMO_SCRIPT, ["alice", "bob"])  # carol is not in the gallery
    source = open_video(str(clip))
    writer = AnnotatedVideoWriter(str(tmp_path / "people_res.webm"), source.fps, (source.width, source.height))
    result = VideoRecognizer(pipeline, VideoSettings(), rec_threshold=0.95).run(source, index, writer=writer)
    writer.finish()
    assert result["frames"] == frames and result["fps"] == 25.0 and not result["partial"]
    check_against_script(result, DEMO_SCRIPT, known={"alice", "bob"})
    assert list(result["timeline"]) == ["alice", "bob", "unknown"]
    assert len(result["timeline"]["alice"]) == 2  # two appearances, 2.5 s apart: not merged
    for t in result["tracks"]:
        assert 1 <= t["embeddings"] <= 8 and t["boxes"] and len(t["boxes"][0]) == 6
        assert t["changes"][0]["time"] == pytest.approx(t["start_time"], abs=0.1)
    # the annotated video plays back with every frame
    back = cv2.VideoCapture(str(tmp_path / "people_res.webm"))
    n = 0
    while back.read()[0]:
        n += 1
    assert n == frames
    saved = result.save_to_json(str(tmp_path))
    assert saved.endswith("people_res.json") and json.load(open(saved))["tracks"] == json.loads(json.dumps(
        result["tracks"]))
    assert "alice: 2 appearances" in str(result)


def test_detecting_every_third_frame_and_majority_vote_agree(pipeline, tmp_path):
    from engine.recognition.video import VideoRecognizer, VideoSettings

    faces = demo_people(DEMO_DIR)
    clip = tmp_path / "people.mp4"
    make_clip(clip, DEMO_SCRIPT, faces)
    index = gallery_of(pipeline, faces, (640, 360), DEMO_SCRIPT, ["alice", "bob"])
    result = VideoRecognizer(pipeline, VideoSettings(detect_every=3, vote="majority"), rec_threshold=0.95).run(
        open_video(str(clip)), index)
    check_against_script(result, DEMO_SCRIPT, known={"alice", "bob"})


def test_an_interrupted_run_is_partial(pipeline, tmp_path):
    from engine.recognition.video import VideoRecognizer

    faces = demo_people(DEMO_DIR)
    clip = tmp_path / "people.mp4"
    make_clip(clip, DEMO_SCRIPT, faces)
    index = gallery_of(pipeline, faces, (640, 360), DEMO_SCRIPT, ["alice", "bob"])
    source = open_video(str(clip))
    result = VideoRecognizer(pipeline, rec_threshold=0.95).run(source, index, stop=lambda: source.frames_read >= 50)
    assert result["partial"] and result["frames"] == 50 and result["duration"] == 2.0
    assert [t["label"] for t in result["tracks"]] == ["alice", "bob"]


LFW_PEOPLE = ("Colin_Powell", "Tony_Blair", "Hugo_Chavez", "Laura_Bush")


@pytest.mark.skipif(not os.path.isdir(LFW), reason="LFW photos not available at ../shared/data/lfw_dev")
def test_a_clip_of_real_photos_gives_one_named_track_per_appearance(pipeline, tmp_path):
    """720p, 25 fps: four people in turn, moving and zooming, one of them twice, one not in the
    gallery. The gallery holds each person's photo as the clip shows it (the test has no trained
    model, and an untrained one only matches a photo to itself reliably)."""
    from engine.recognition.video import VideoRecognizer

    def one_face_photo(person):  # LFW photos often show other people too: take one showing only this one
        for path in sorted(glob.glob(os.path.join(LFW, person, "*.jpg"))):
            img = cv2.imread(path)
            if len(pipeline.faces_of(cv2.resize(img, (400, 400)), 0.3)) == 1:
                return img
        pytest.fail(f"no photo of {person} with one face")

    photos = {p: one_face_photo(p) for p in LFW_PEOPLE}
    script = (Appearance("Colin_Powell", 0.0, 2.5, (100, 100, 300), (400, 80, 420)),
              Appearance("Tony_Blair", 1.0, 4.0, (800, 200, 360), (700, 150, 300)),
              Appearance("Hugo_Chavez", 4.6, 6.5, (200, 150, 320), (260, 120, 400)),
              Appearance("Colin_Powell", 5.0, 7.5, (820, 120, 330), (760, 160, 400)),
              Appearance("Laura_Bush", 8.0, 9.5, (500, 200, 300), (520, 180, 340)))
    clip = tmp_path / "lfw.mp4"
    make_clip(clip, script, photos, size=(1280, 720), seconds=10.0)
    index = gallery_of(pipeline, photos, (1280, 720), script, ["Colin_Powell", "Tony_Blair", "Hugo_Chavez"])
    result = VideoRecognizer(pipeline, rec_threshold=0.955).run(open_video(str(clip)), index)
    check_against_script(result, script, known={"Colin_Powell", "Tony_Blair", "Hugo_Chavez"})
    assert len(result["timeline"]["Colin_Powell"]) == 2


# --------------------------------------------------------------------------- the command line
PIPELINE = os.path.join(REPO_ROOT, "configs", "face_recognition", "pipeline.yaml")


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A random model, a gallery folder of alice and bob as the demo clip shows them, its index, and
    the clip."""
    from _tiny_face_model import export_random_model

    from main import main

    root = tmp_path_factory.mktemp("video_cli")
    model = export_random_model(root / "model")
    faces = demo_people(DEMO_DIR)
    bg = background((640, 360))
    for k, a in enumerate(x for x in DEMO_SCRIPT if x.person in ("alice", "bob")):
        folder = root / "gallery" / a.person
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{k}.png"), render([Appearance(a.person, 0, 1, a.first, a.first)], faces, 0.0,
                                                      (640, 360), bg))
    make_clip(root / "people.mp4", DEMO_SCRIPT, faces)
    common = [f"SubModules.Recognition.model_dir={model}", f"index={root / 'index'}", "det_threshold=0.5",
              "rec_threshold=0.95"]
    args = ["-c", PIPELINE, *[x for o in ["Global.mode=build_index", f"Index.gallery={root / 'gallery'}", *common]
                              for x in ("-o", o)]]
    assert main(args) == 0
    return root, common


def _recognize(common, *more):
    from main import main

    return main(["-c", PIPELINE, *[x for o in ["Global.mode=recognize", *common, *more] for x in ("-o", o)]])


def test_cli_recognizes_a_video_into_a_timeline_and_an_annotated_video(cli_setup, tmp_path, capsys):
    root, common = cli_setup
    out = tmp_path / "out"
    assert _recognize(common, f"Predict.input={root / 'people.mp4'}", f"Global.output={out}") == 0
    printed = capsys.readouterr().out
    assert "alice: 2 appearances" in printed and "bob: 1 appearance" in printed and "1 video(s)" in printed
    result = json.loads((out / "people_res.json").read_text())
    check_against_script(result, DEMO_SCRIPT, known={"alice", "bob"})
    assert (out / "people_res.webm").stat().st_size > 0 and not list(out.glob(".*part*"))
    assert "recognize.log" in os.listdir(out)


def test_cli_a_folder_of_photos_and_videos(cli_setup, tmp_path, capsys):
    """A video in a folder is a video, not a skipped non-image; a corrupt one is skipped and counted."""
    root, common = cli_setup
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil_copy(root / "people.mp4", folder / "a_clip.mp4")
    shutil_copy(next((root / "gallery" / "bob").glob("*.png")), folder / "b_photo.png")
    (folder / "c_broken.mp4").write_bytes(b"\x00" * 4096)
    out = tmp_path / "out"
    assert _recognize(common, f"Predict.input={folder}", f"Global.output={out}", "Video.save_video=False") == 1
    err = capsys.readouterr().err
    assert "1 input(s) could not be read" in err and "c_broken.mp4" in err
    assert json.loads((out / "b_photo_res.json").read_text())["boxes"][0]["label"] == "bob"
    assert json.loads((out / "a_clip_res.json").read_text())["timeline"].keys() == {"alice", "bob", "unknown"}
    assert not (out / "a_clip_res.webm").exists()


def shutil_copy(src, dst):
    import shutil

    shutil.copyfile(src, dst)


def test_cli_bad_video_inputs_are_one_line(cli_setup, tmp_path, capsys):
    root, common = cli_setup
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    out = tmp_path / "out"
    assert _recognize(common, f"Predict.input={broken}", f"Global.output={out}") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.mp4" in err[0] and "re-encode" in err[0]
    assert not list(out.glob("broken_res*")) and not list(out.glob(".*"))  # no half-written output
    assert _recognize(common, f"Predict.input={tmp_path / 'gone.mp4'}", f"Global.output={out}") == 1
    assert "does not exist" in capsys.readouterr().err


def test_model_predict_on_a_video_says_where_videos_go(tmp_path, capsys):
    from _tiny_face_model import CONFIG, export_random_model

    from main import main

    model = export_random_model(tmp_path / "model")
    clip = tmp_path / "c.mp4"
    make_clip(clip, [Appearance("x", 0, 0.2, (0, 0, 50), (0, 0, 50))], {"x": np.zeros((50, 50, 3), np.uint8)},
              size=(64, 64))
    code = main(["-c", CONFIG, "-o", "Global.mode=predict", "-o", f"Predict.input={clip}",
                 "-o", f"Predict.model_dir={model}", "-o", f"Global.output={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 1 and "is a video: the face recognition pipeline reads videos" in err


def test_sigterm_mid_video_writes_what_was_processed(cli_setup, tmp_path):
    """SIGTERM during a long video: the results so far, marked partial, and exit 130."""
    import signal
    import subprocess
    import sys
    import time

    root, common = cli_setup
    faces = demo_people(DEMO_DIR)
    long_script = [Appearance(a.person, a.start + 9 * k, a.end + 9 * k, a.first, a.last)
                   for k in range(8) for a in DEMO_SCRIPT]
    clip = tmp_path / "long.mp4"
    make_clip(clip, long_script, faces)
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO_ROOT, "main.py"), "-c", PIPELINE,
           *[x for o in ["Global.mode=recognize", *common, f"Predict.input={clip}", f"Global.output={out}"]
             for x in ("-o", o)]]
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".long_res.webm.part*")):
        time.sleep(0.1)
    time.sleep(1.5)  # some frames in
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    result = json.loads((out / "long_res.json").read_text())
    assert result["partial"] and result["interrupted"] and 0 < result["frames"] < 72 * 25
    assert (out / "long_res.webm").stat().st_size > 0 and not list(out.glob(".long_res*"))
    assert "Interrupted:" in stdout
