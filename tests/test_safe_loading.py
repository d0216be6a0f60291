"""Loading a weights, optimizer or checkpoint file never runs code from it (restricted unpickler),
while real checkpoints (ours, paddle.save'd PaddleClas/PaddleX state dicts) keep loading."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from foundation.errors import UserError
from foundation.safe_pickle import UnsafePickleError, load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "face_recognition", "MobileFaceNet.yaml")


class _RunsCode:
    """Unpickling this calls os.system: the payload of a crafted file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalsToAStateDict:
    """A payload that would also hand back a plausible state dict (so a plain load looks fine)."""

    def __reduce__(self):
        return (eval, ("{'backbone.conv1.conv.weight': __import__('numpy').zeros(1)}",))


def crafted(path, payload):
    with open(path, "wb") as f:
        pickle.dump({"backbone.conv1.conv.weight": payload}, f, protocol=4)
    return str(path)


def test_crafted_weights_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = crafted(tmp_path / "evil.pdparams", _RunsCode(marker))
    with pytest.raises(UnsafePickleError, match=r"evil.pdparams.*'posix.system'"):
        load_file(path, "weights file")
    assert not marker.exists()


def test_payload_returning_a_valid_state_dict_is_refused(tmp_path):
    from models import read_state_dict

    path = crafted(tmp_path / "quiet.pdparams", _EvalsToAStateDict())
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        read_state_dict(path)


def test_paddle_saved_state_dicts_load_through_the_safe_path(tmp_path):
    """A state dict written by paddle.save (the PaddleClas / PaddleX .pdparams format) loads by
    name with the same values."""
    import paddle

    from models import ArcMargin, FaceRecModel, build_backbone, load_backbone_weights, read_state_dict

    paddle.seed(3)
    backbone = build_backbone("MobileFaceNet")
    model = FaceRecModel(backbone, ArcMargin(128, 7))
    path = str(tmp_path / "MobileFaceNet_pretrained.pdparams")
    paddle.save(model.state_dict(), path)
    state = read_state_dict(path)
    assert set(state) == set(model.state_dict())
    assert all(isinstance(v, np.ndarray) for v in state.values())
    fresh = build_backbone("MobileFaceNet")
    report = load_backbone_weights(fresh, path, strict=True)
    assert not report["missing"] and not report["skipped"]
    np.testing.assert_array_equal(fresh.state_dict()["conv1.conv.weight"].numpy(),
                                  backbone.state_dict()["conv1.conv.weight"].numpy())


def test_truncated_and_empty_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.pdparams"
    with open(good, "wb") as f:
        pickle.dump({"w": np.ones(1000, np.float32)}, f, protocol=4)
    cut = tmp_path / "cut.pdopt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError, match=r"cut.pdopt: it is cut short \(truncated\)"):
        load_file(str(cut), "optimizer state")
    empty = tmp_path / "empty.pdparams"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        load_file(str(empty), "weights file")


@pytest.mark.parametrize("mode,key", [("export", "Export.weight_path"), ("evaluate", "Evaluate.weight_path")])
def test_cli_refuses_a_crafted_checkpoint(tmp_path, mode, key):
    from _tiny_face_model import make_pair_dataset

    make_pair_dataset(str(tmp_path / "data"))
    marker = tmp_path / "ran"
    path = crafted(tmp_path / "evil.pdparams", _RunsCode(marker))
    proc = subprocess.run([sys.executable, "main.py", "-c", CONFIG, "-o", f"Global.mode={mode}", "-o", f"{key}={path}",
                           "-o", f"Global.output={tmp_path / 'out'}", "-o", f"Global.dataset_dir={tmp_path / 'data'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert errors and "refused to load" in errors[0] and "evil.pdparams" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not marker.exists()
