"""Phone photos stored on their side: every decode applies the JPEG's EXIF Orientation, as photo
viewers do, so train, check_dataset, evaluate, predict, the pipeline and the service (all of which
decode through datasets.transforms.read_image / decode_image_bytes) see the picture upright.
Checked against Pillow's exif_transpose for all eight orientations, then end to end."""
import io

import cv2
import numpy as np
import pytest
from _tiny_face_model import demo_face_photo, export_random_model
from PIL import Image, ImageOps

from datasets.image_headers import jpeg_orientation
from datasets.transforms import decode_image_bytes, read_image

# what each Orientation value stores: the upright picture turned by this PIL operation
STORED = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
          7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def stored_jpeg(upright_bgr, orientation):
    """JPEG bytes of `upright_bgr` stored as a camera turned by `orientation` stores it."""
    img = Image.fromarray(np.ascontiguousarray(upright_bgr[:, :, ::-1]))
    if STORED[orientation] is not None:
        img = img.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_every_orientation_decodes_as_pillow_shows_it(tmp_path):
    rng = np.random.default_rng(0)
    upright = cv2.resize(rng.integers(0, 256, (6, 10, 3)).astype(np.uint8), (100, 60), interpolation=cv2.INTER_CUBIC)
    for orientation in range(1, 9):
        data = stored_jpeg(upright, orientation)
        assert jpeg_orientation(data) == orientation
        shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))[:, :, ::-1]
        path = tmp_path / f"o{orientation}.jpg"
        path.write_bytes(data)
        for decoded in (read_image(str(path)), decode_image_bytes(data, "upload")):
            assert decoded.shape == upright.shape == shown.shape, orientation
            assert np.abs(decoded.astype(int) - shown.astype(int)).mean() < 3, orientation
    assert jpeg_orientation(b"\x89PNG\r\n\x1a\n") == 1 and jpeg_orientation(b"\xff\xd8\xff\xe1\x00\x08Exif") == 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_random_model(tmp_path_factory.mktemp("m"))


def test_predict_and_the_pipeline_see_a_rotated_photo_upright(model_dir, tmp_path):
    from facefeat import create_model, create_pipeline

    photo = demo_face_photo("p00000/00")  # YuNet finds this face upright
    (tmp_path / "upright.jpg").write_bytes(stored_jpeg(photo, 1))
    (tmp_path / "sideways.jpg").write_bytes(stored_jpeg(photo, 6))
    assert cv2.imread(str(tmp_path / "sideways.jpg"), cv2.IMREAD_UNCHANGED).shape[:2] == (320, 320)
    model = create_model(model_dir=model_dir)
    a, b = (model.feature(str(tmp_path / name)) for name in ("upright.jpg", "sideways.jpg"))
    assert float(np.dot(a, b)) > 0.99
    pipe = create_pipeline(config={"SubModules.Recognition.model_dir": model_dir})
    index = pipe.build_index([str(tmp_path / "upright.jpg")], ["alice"])
    assert pipe.last_enrolment.whole == []  # the face was found, not embedded whole
    (res,) = pipe.predict(str(tmp_path / "sideways.jpg"), index=index)
    assert [box["label"] for box in res["boxes"]] == ["alice"]
