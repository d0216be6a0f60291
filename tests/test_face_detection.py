"""YuNet detection, its digest check, and the one alignment function (models.alignment)."""
import os

import cv2
import numpy as np
import pytest

from foundation.errors import UserError
from models.alignment import ARCFACE_TEMPLATE, align_face, crop_square, face_chip, main_face
from models.face_detector import YUNET_FILE, Face, MainFaceCropper, YuNetDetector, build_detector

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LFW = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "lfw_dev"))
needs_lfw = pytest.mark.skipif(not os.path.isdir(LFW), reason="LFW photos not available at ../shared/data/lfw_dev")
LFW_PHOTOS = ["Colin_Powell/Colin_Powell_0001.jpg", "Tony_Blair/Tony_Blair_0002.jpg",
              "Catherine_Woodard/Catherine_Woodard_0001.jpg", "Erskine_Bowles/Erskine_Bowles_0001.jpg",
              "Adrien_Brody/Adrien_Brody_0003.jpg"]


def _blob_centres(img, k=5):
    """Sub-pixel centres (intensity-weighted) of the k brightest blobs of a grey image."""
    grey = img[:, :, 0].astype(np.float64) if img.ndim == 3 else img.astype(np.float64)
    n, labels = cv2.connectedComponents((grey > 40).astype(np.uint8))
    ys, xs = np.mgrid[:grey.shape[0], :grey.shape[1]]
    out = []
    for i in range(1, n):
        w = np.where(labels == i, grey, 0.0)
        out.append((w.sum(), (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()))
    out.sort(reverse=True)
    return np.array([[x, y] for _, x, y in out[:k]])


def test_align_face_puts_known_landmarks_on_the_template():
    """Gaussian dots drawn at the template points of a 112x112 picture, warped into a 400x400 photo
    by a known similarity (rotation 17 degrees, scale 2.3, shift): aligning the photo on the warped
    points brings every dot back onto its template point within 0.5 px."""
    size = 448  # draw at 4x for smooth dots, then shrink
    ys, xs = np.mgrid[:size, :size]
    canvas = np.zeros((size, size), np.float64)
    for x, y in ARCFACE_TEMPLATE * 4:
        canvas += 255 * np.exp(-((xs - (x + 1.5)) ** 2 + (ys - (y + 1.5)) ** 2) / (2 * 6.0 ** 2))
    face = cv2.resize(np.clip(canvas, 0, 255).astype(np.uint8), (112, 112), interpolation=cv2.INTER_AREA)
    angle, scale, shift = np.deg2rad(17), 2.3, np.array([120.0, 60.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = np.hstack([rot, shift[:, None]])
    photo = cv2.warpAffine(cv2.cvtColor(face, cv2.COLOR_GRAY2BGR), m, (400, 400), flags=cv2.INTER_LINEAR)
    landmarks = ARCFACE_TEMPLATE @ rot.T + shift
    chip = align_face(photo, landmarks)
    assert chip.shape == (112, 112, 3)
    found = _blob_centres(chip)
    for point in ARCFACE_TEMPLATE:  # every template point has a dot centre within 0.5 px
        assert np.min(np.linalg.norm(found - point, axis=1)) < 0.5, (point, found)
    # the reference: the dots of the unwarped picture are where the template says
    ref = _blob_centres(cv2.cvtColor(face, cv2.COLOR_GRAY2BGR))
    assert max(np.min(np.linalg.norm(ref - p, axis=1)) for p in ARCFACE_TEMPLATE) < 0.5


def test_face_chip_falls_back_to_a_square_crop_and_passes_whole_images_through():
    img = np.random.default_rng(0).integers(0, 255, (200, 300, 3)).astype(np.uint8)
    no_points = Face([100, 50, 180, 150], 0.9)
    np.testing.assert_array_equal(face_chip(img, no_points, margin=0.2), crop_square(img, no_points.box, 0.2))
    assert face_chip(img, no_points).shape == (112, 112, 3)
    whole = build_detector(enable=False).detect(img)[0]
    assert face_chip(img, whole) is img
    with pytest.raises(ValueError, match="5"):
        align_face(img, np.zeros((2, 2)))


def test_main_face_is_the_largest_nearest_the_centre_not_the_highest_score():
    subject = Face([35, 30, 75, 80], 0.80)  # large, central, a lower score
    background = Face([0, 0, 20, 20], 0.99)  # small, in a corner, sharper
    assert main_face([background, subject], (100, 100)) is subject
    # size against distance: area minus twice the squared offset (pixels^2)
    big_off = Face([50, 0, 100, 50], 0.9)  # 2500 - 2 * (25^2 + 25^2) = 0
    small_central = Face([45, 45, 55, 55], 0.9)  # 100 - 0 = 100
    assert main_face([big_off, small_central], (100, 100)) is small_central
    bigger_off = Face([40, 0, 100, 60], 0.9)  # 3600 - 2 * (20^2 + 20^2) = 2000
    assert main_face([small_central, bigger_off], (100, 100)) is bigger_off
    # equal boxes: the score decides; no image shape: the largest
    twin = Face([35, 30, 75, 80], 0.95)
    assert main_face([subject, twin], (100, 100)) is twin
    assert main_face([small_central, big_off]) is big_off
    assert main_face([], (100, 100)) is None


def test_yunet_digest_mismatch_is_refused(tmp_path):
    bad = tmp_path / "yunet.onnx"
    data = bytearray(open(YUNET_FILE, "rb").read())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        YuNetDetector(model_path=str(bad))
    assert str(bad) in str(e.value) and "sha256" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="missing"):
        YuNetDetector(model_path=str(tmp_path / "nothing.onnx"))


def test_yunet_finds_no_face_in_a_flat_image():
    assert YuNetDetector().detect(np.full((120, 160, 3), 127, np.uint8)) == []
    assert YuNetDetector().detect(np.full((120, 160), 127, np.uint8)) == []  # grey input


@needs_lfw
def test_yunet_finds_the_face_and_5_landmarks_in_lfw_photos():
    det = YuNetDetector()
    for rel in LFW_PHOTOS:
        img = cv2.imread(os.path.join(LFW, "images", rel))
        faces = det.detect(img)
        central = [f for f in faces if f.box[0] <= 125 <= f.box[2] and f.box[1] <= 125 <= f.box[3]]
        assert central, rel
        f = central[0]
        assert 0.6 <= f.score <= 1.0 and f.landmarks.shape == (5, 2)
        x1, y1, x2, y2 = f.box
        assert ((f.landmarks[:, 0] >= x1) & (f.landmarks[:, 0] <= x2)
                & (f.landmarks[:, 1] >= y1) & (f.landmarks[:, 1] <= y2)).all(), rel
        eye_l, eye_r, nose, mouth_l, mouth_r = f.landmarks
        # template order: image-left eye and mouth corner first, eyes above nose above mouth
        assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0], rel
        assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1]), rel


@needs_lfw
def test_main_face_cropper_aligns_lfw_photos_so_yunet_sees_the_template(tmp_path):
    """After alignment YuNet, run again on the 112x112 chip (padded), finds the landmarks near the
    template: the order mapping and the warp agree."""
    cropper = MainFaceCropper()
    det = YuNetDetector(threshold=0.3, min_size=1)
    for rel in LFW_PHOTOS[:3]:
        chip, faces = cropper.crop(cv2.imread(os.path.join(LFW, "images", rel)))
        assert chip.shape == (112, 112, 3) and faces
        padded = cv2.copyMakeBorder(chip, 56, 56, 56, 56, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        again = main_face(det.detect(padded), padded.shape)
        assert again is not None, rel
        err = np.linalg.norm(again.landmarks - 56 - ARCFACE_TEMPLATE, axis=1)
        assert err.max() < 10.0 and err.mean() < 5.0, (rel, err)  # a swapped order would be ~35 px off
    chip, faces = cropper.crop(np.full((100, 100, 3), 127, np.uint8))
    assert chip is None and faces == []


@needs_lfw
def test_landmarks_inside_a_box_from_another_detector():
    """What Det.type paddle relies on: given only a box, YuNet run on the enlarged box region finds the
    same 5 landmarks as on the whole photo."""
    det = YuNetDetector(threshold=0.3, min_size=1)
    img = cv2.imread(os.path.join(LFW, "images", LFW_PHOTOS[0]))
    face = main_face(det.detect(img), img.shape)
    points = det.landmarks_in(img, face.box)
    np.testing.assert_allclose(points, face.landmarks, atol=3.0)
    assert det.landmarks_in(np.full((250, 250, 3), 127, np.uint8), [50, 50, 150, 150]) is None
