"""The service's video endpoints, run for real (`main.py ... Global.mode=serve` in a subprocess on a
loopback port): a clip answered with its tracks and timeline, a live session fed frame by frame,
and their limits and bad input, in the service's envelope."""
import base64
import os

import cv2
import pytest
from _tiny_face_model import export_random_model
from test_video import check_against_script

from benchmarks.loopback_service import Service as Server
from benchmarks.loopback_service import b64
from benchmarks.video_clips import DEMO_SCRIPT, Appearance, background, demo_people, make_clip, render

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join(REPO_ROOT, "dataset", "face_demo")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A service (live sessions: at most 1; clips: at most 5 s), an index of alice and bob as the demo
    clip shows them, and the clip."""
    root = tmp_path_factory.mktemp("serve_video")
    model = export_random_model(root / "model")
    faces = demo_people(DEMO_DIR)
    make_clip(root / "people.mp4", DEMO_SCRIPT, faces)
    server = Server(model, root / "indexes", root / "out", "Serve.max_live_sessions=1", "Serve.max_video_seconds=10")
    try:
        bg = background((640, 360))
        pairs = [{"image": b64(cv2.imencode(".png", render([Appearance(a.person, 0, 1, a.first, a.first)], faces, 0.0,
                                                            (640, 360), bg))[1].tobytes()), "label": a.person}
                 for a in DEMO_SCRIPT if a.person in ("alice", "bob")]
        status, r = server.post("/face-recognition-index-build", {"imageLabelPairs": pairs})
        assert status == 200, r
        yield server, r["result"]["indexKey"], root
    finally:
        server.stop()


def test_a_clip_is_answered_with_its_tracks_and_timeline(served):
    server, key, root = served
    video = base64.b64encode((root / "people.mp4").read_bytes()).decode()
    status, r = server.post("/face-recognition-video", {"video": video, "indexKey": key, "recThreshold": 0.95})
    assert status == 200 and r["errorCode"] == 0, r
    res = r["result"]
    assert res["frames"] == 225 and res["fps"] == 25.0 and not res["partial"] and res["endedEarly"] is None
    tracks = [{"label": t["label"], "start_time": t["startTime"], "end_time": t["endTime"]} for t in res["tracks"]]
    check_against_script({"tracks": tracks, "duration": res["duration"]}, DEMO_SCRIPT, known={"alice", "bob"})
    assert set(res["timeline"]) == {"alice", "bob", "unknown"}


def test_a_live_session_follows_the_camera_frame_by_frame(served):
    server, key, root = served
    cap = cv2.VideoCapture(str(root / "people.mp4"))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    session, labels = None, set()
    for i in range(0, 100, 4):  # the first 4 s, a frame every 160 ms
        body = {"image": b64(cv2.imencode(".jpg", frames[i])[1].tobytes()), "indexKey": key}
        if session:
            body["session"] = session
        status, r = server.post("/face-recognition-live", body)
        assert status == 200, r
        session = r["result"]["session"]
        labels |= {f["label"] for f in r["result"]["faces"]}
        assert all(len(f["bbox"]) == 4 and f["trackId"] >= 1 for f in r["result"]["faces"])
    assert {"alice", "bob"} <= labels
    # one session at most on this server: another is refused while this one is open
    status, r = server.post("/face-recognition-live", {"image": b64(cv2.imencode(".jpg", frames[0])[1].tobytes())})
    assert status == 429 and "Serve.max_live_sessions" in r["errorMsg"]
    status, r = server.post("/face-recognition-live", {"image": b64(cv2.imencode(".jpg", frames[100])[1].tobytes()),
                                                       "session": session, "end": True})
    assert status == 200 and {t["label"] for t in r["result"]["tracks"]} >= {"alice", "bob"}
    status, r = server.post("/face-recognition-live", {"image": b64(cv2.imencode(".jpg", frames[0])[1].tobytes()),
                                                       "session": session})
    assert status == 404 and "no such live session" in r["errorMsg"]


def test_video_limits_and_bad_input_are_one_line_without_server_paths(served, tmp_path):
    server, key, root = served
    long_clip = tmp_path / "long.mp4"
    make_clip(long_clip, [Appearance("alice", 0, 12, (30, 70, 180), (40, 70, 180))], demo_people(DEMO_DIR))
    status, r = server.post("/face-recognition-video", {"video": b64(long_clip.read_bytes()), "indexKey": key})
    assert status == 413 and "Serve.max_video_seconds" in r["errorMsg"] and "12 s long" in r["errorMsg"]
    status, r = server.post("/face-recognition-video", {"video": b64(b"\x00" * 5000)})
    assert status == 422 and "not a video" in r["errorMsg"] and "/tmp" not in r["errorMsg"]
    status, r = server.post("/face-recognition-video", {"video": "%%% not base64"})
    assert status == 422 and "neither base64" in r["errorMsg"]
    status, r = server.post("/face-recognition-video", {"video": "http://127.0.0.1:9/clip.mp4"})
    assert status in (403, 422) and r["errorCode"] == status  # a URL leading to loopback is not fetched
