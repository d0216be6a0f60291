"""datasets.bin_file: insightface .bin round trip and the restricted unpickler. No Paddle."""
import os
import pickle

import cv2
import numpy as np
import pytest

from datasets.bin_file import UnsafePickleError, decode_image, read_bin, write_bin
from foundation.errors import DatasetError


def _faces(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8) for _ in range(n)]


def test_round_trip_png_is_lossless(tmp_path):
    imgs = _faces(6)
    path = str(tmp_path / "tiny.bin")
    write_bin(path, imgs, [True, False, True], ext=".png")
    images, issame = read_bin(path)
    assert issame.dtype == bool and issame.tolist() == [True, False, True]
    assert len(images) == 6
    for i, (data, img) in enumerate(zip(images, imgs)):
        np.testing.assert_array_equal(decode_image(data, f"image {i}"), img)


def test_reads_python2_style_pickle_with_numpy_bools(tmp_path):
    # protocol 2 from Python 3 stores bytes via _codecs.encode and arrays via numpy _reconstruct
    imgs = [cv2.imencode(".jpg", im)[1].tobytes() for im in _faces(4)]
    path = tmp_path / "old.bin"
    path.write_bytes(pickle.dumps((imgs, np.array([True, False])), protocol=2))
    images, issame = read_bin(str(path))
    assert images == imgs and issame.tolist() == [True, False]
    # a list of numpy bool scalars works too
    path.write_bytes(pickle.dumps((imgs, [np.bool_(False), np.bool_(True)]), protocol=2))
    assert read_bin(str(path))[1].tolist() == [False, True]


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([b"x", b"y"], [_RunsCode(marker)]), protocol=2))
    # the payload is real: a plain pickle.load would run it (checked with another marker)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_RunsCode(control)))
    assert control.exists()

    with pytest.raises(UnsafePickleError) as err:
        read_bin(str(path))
    assert not marker.exists()
    msg = str(err.value)
    assert str(path) in msg and "system" in msg and "not allowed" in msg
    assert isinstance(err.value, DatasetError)


@pytest.mark.parametrize("payload", [
    (eval, ("1+1",)),
    (getattr, (b"x", "decode")),
    (np.load, ("whatever.npy",)),
])
def test_other_globals_refused(tmp_path, payload):
    class Evil:
        def __reduce__(self):
            return payload

    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b"], [Evil()])))
    with pytest.raises(UnsafePickleError, match="not allowed"):
        read_bin(str(path))


def test_object_dtype_array_refused(tmp_path):
    path = tmp_path / "obj.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b"], np.array([True], dtype=object)), protocol=2))
    with pytest.raises(UnsafePickleError, match="Python objects"):
        read_bin(str(path))


def test_codecs_encode_only_latin1(tmp_path):
    # opcodes for _codecs.encode("eJw=", "base64"), which the loader must not call
    data = b"\x80\x02c_codecs\nencode\nq\x00X\x04\x00\x00\x00eJw=X\x06\x00\x00\x00base64\x86R."
    path = tmp_path / "codec.bin"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError, match="encoding"):
        read_bin(str(path))


def test_missing_truncated_and_malformed_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_bin(str(tmp_path / "nope.bin"))
    good = tmp_path / "good.bin"
    write_bin(str(good), _faces(2), [True])
    bad = tmp_path / "trunc.bin"
    bad.write_bytes(good.read_bytes()[:50])
    with pytest.raises(DatasetError, match="trunc.bin"):
        read_bin(str(bad))
    bad.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DatasetError, match="expected a pickled pair"):
        read_bin(str(bad))
    bad.write_bytes(pickle.dumps(([b"a"], [True, False])))
    with pytest.raises(DatasetError, match="need 4 images"):
        read_bin(str(bad))
    bad.write_bytes(pickle.dumps(([b"a", b"b"], [True])))
    images, _ = read_bin(str(bad))
    with pytest.raises(DatasetError, match="does not decode"):
        decode_image(images[0], f"{bad} image #0")


def test_write_bin_checks_pair_count(tmp_path):
    with pytest.raises(ValueError, match="need 4 images"):
        write_bin(str(tmp_path / "x.bin"), _faces(3), [True, False])
