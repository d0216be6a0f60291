"""The web page's live camera in a real browser: headless Chromium from Debian's package, its fake
camera playing a clip of demo faces (--use-file-for-fake-video-capture, a .y4m the test writes),
streams frames to the real service (a subprocess on loopback), and the page names the face on the
live picture. A screenshot goes to tests/artifacts/web_live.png (git-ignored).

Skips without Chromium or Playwright, except under CI=true (as tests/test_web_page.py)."""
import os

import cv2
import pytest
from _tiny_face_model import export_random_model
from test_web_page import CHROMIUM, _require

from benchmarks.loopback_service import Service, b64
from benchmarks.video_clips import Appearance, background, demo_people, render, write_y4m

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join(REPO_ROOT, "dataset", "face_demo")
ARTIFACT = os.path.join(REPO_ROOT, "tests", "artifacts", "web_live.png")
# the fake camera loops this: alice, then bob, each still for a while
CAMERA_SCRIPT = (Appearance("alice", 0.0, 3.0, (60, 60, 220), (90, 60, 230)),
                 Appearance("bob", 3.0, 6.0, (340, 80, 220), (320, 80, 230)))

pytestmark = pytest.mark.slow


def test_the_live_page_names_the_face_the_camera_sees(tmp_path):
    _require(os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK),
             f"no Chromium at {CHROMIUM}: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "the playwright package is not installed: pip install -e '.[test]'")
    faces = demo_people(DEMO_DIR)
    camera = tmp_path / "camera.y4m"
    write_y4m(camera, CAMERA_SCRIPT, faces)
    model = export_random_model(tmp_path / "model")
    # an untrained model finds every face alike (cosine 0.78+ between these two): a gallery match, and
    # a face rejoining a lost track, must be as alike as a face is to itself here
    service = Service(model, tmp_path / "indexes", tmp_path / "out", "rec_threshold=0.95", start_timeout=240)
    errors = []
    try:
        bg = background((640, 360))
        pairs = [{"image": b64(cv2.imencode(".png", render([Appearance(a.person, 0, 1, a.first, a.first)], faces, 0.0,
                                                            (640, 360), bg))[1].tobytes()), "label": a.person}
                 for a in CAMERA_SCRIPT]
        status, r = service.post("/face-recognition-index-build", {"imageLabelPairs": pairs})
        assert status == 200, r
        key = r["result"]["indexKey"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={camera}"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1400})
                page.set_default_timeout(60_000)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(service.url + "/")
                page.wait_for_function("document.getElementById('health').textContent.startsWith('Service ready')")
                page.fill("#index-key", key)
                page.get_by_role("button", name="Use this key").click()
                page.get_by_role("button", name="Start camera").click()
                seen = "() => document.getElementById('live-names').textContent"
                try:
                    page.wait_for_function(f"({seen})().includes('alice')")
                    page.wait_for_function(f"({seen})().includes('bob')")
                except Exception:
                    state = page.evaluate(f"[({seen})(), document.getElementById('live-status').textContent, "
                                          "document.getElementById('error').textContent]")
                    raise AssertionError(f"the page never named both: names, status, error = {state}") from None
                assert int(page.get_attribute("#live-canvas", "data-faces")) >= 1
                assert "frames sent" in page.inner_text("#live-status")
                os.makedirs(os.path.dirname(ARTIFACT), exist_ok=True)
                page.locator("#live-view").screenshot(path=ARTIFACT)
                page.get_by_role("button", name="Stop").click()
                assert page.inner_text("#live-status") == "Camera stopped."
                assert not page.is_visible("#error"), page.inner_text("#error")
            finally:
                browser.close()
    finally:
        service.stop()
    assert not errors, errors
