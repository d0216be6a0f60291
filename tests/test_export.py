"""Export to a static inference model, run it with paddle.inference, and the export mode CLI."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from foundation.runtime import set_threads

set_threads(2)
paddle = pytest.importorskip("paddle")

from benchmarks.loopback_service import calibrate_batchnorm  # noqa: E402
from engine.inference.backends import cpu_has_bf16  # noqa: E402
from engine.inference.executors import program_has_op  # noqa: E402
from engine.inference.folder import export_inference  # noqa: E402
from engine.inference.model import InferenceModel  # noqa: E402
from foundation.errors import UserError  # noqa: E402
from models import ArcMargin, FaceRecModel, build_backbone  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "face_recognition", "MobileFaceNet.yaml")


def calibrated(model, seed=0, batch=16):
    """A randomly initialised backbone whose BatchNorm statistics come from real forward passes,
    so its features have a realistic scale (an untouched random net explodes to ~1e3)."""
    rng = np.random.default_rng(seed)
    return calibrate_batchnorm(model, paddle.to_tensor(rng.uniform(-1, 1, (batch, 3, 112, 112)).astype("float32")))


def images(n, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 112, 112)).astype("float32")


@pytest.fixture(scope="module")
def mobilefacenet():
    paddle.seed(0)
    return calibrated(build_backbone("MobileFaceNet"))


@pytest.fixture(scope="module")
def exported_mobilefacenet(mobilefacenet, tmp_path_factory):
    save_dir = str(tmp_path_factory.mktemp("export") / "inference")
    paths = export_inference(mobilefacenet, save_dir, "MobileFaceNet")
    return save_dir, paths


def test_export_writes_model_and_yml(exported_mobilefacenet):
    save_dir, paths = exported_mobilefacenet
    files = set(os.listdir(save_dir))
    # both formats, sharing one parameter file
    assert {"inference.json", "inference.pdmodel", "inference.pdiparams", "inference.yml"} <= files
    assert paths["model"].endswith("inference.json")
    assert paths["formats"] == ["inference.json", "inference.pdmodel"]
    with open(paths["config"], encoding="utf-8") as f:
        info = yaml.safe_load(f)
    assert info["Global"]["model_name"] == "MobileFaceNet"
    assert info["Global"]["embedding_size"] == 128
    ops = [list(op)[0] for op in info["PreProcess"]["transform_ops"]]
    assert ops == ["ResizeImage", "NormalizeImage", "ToCHWImage"]
    norm = info["PreProcess"]["transform_ops"][1]["NormalizeImage"]
    assert norm["mean"] == [0.5, 0.5, 0.5] and norm["std"] == [0.5, 0.5, 0.5]
    assert abs(norm["scale"] - 1 / 255) < 1e-12
    assert "NormalizeFeatures" in info["PostProcess"]
    # no temporary folders left behind by the atomic swap
    assert not [n for n in os.listdir(os.path.dirname(save_dir)) if n.endswith(".tmp")]


def test_inference_matches_dygraph_any_batch(mobilefacenet, exported_mobilefacenet):
    save_dir, _ = exported_mobilefacenet
    x = images(5)
    with paddle.no_grad():
        ref = mobilefacenet(paddle.to_tensor(x)).numpy()
    assert np.abs(ref).max() > 0.1  # features are not trivially small
    # the folder's default (old executor) and the PIR program both give the dygraph features
    for prefer, fmt in ((None, "program"), ("pir", "pir")):
        model = InferenceModel(save_dir, num_threads=2, prefer_format=prefer)
        assert model.format == fmt and model.embedding_size == 128 and model.model_name == "MobileFaceNet"
        for n in (1, 5, 2):  # the input is reshaped for each batch size
            out = model.predict(x[:n])
            assert out.shape == (n, 128) and out.dtype == np.float32
            assert np.abs(out - ref[:n]).max() < 1e-4


def cosine_rows(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_bf16_mode_never_runs_prelu_in_bf16(mobilefacenet, exported_mobilefacenet):
    """Paddle 3.3's oneDNN bf16 PReLU is wrong (cosine ~0.1 to fp32) and the PIR executor cannot
    exclude it, so a PIR MobileFaceNet runs fp32 in bf16 mode rather than return bad features."""
    save_dir, paths = exported_mobilefacenet
    assert program_has_op(paths["model"], "prelu")
    assert not program_has_op(paths["model"], "relu6")
    model = InferenceModel(save_dir, num_threads=2, run_mode="mkldnn_bf16", prefer_format="pir")
    x = images(2, seed=3)
    with paddle.no_grad():
        ref = mobilefacenet(paddle.to_tensor(x)).numpy()
    assert model.bf16_note.startswith("fp32")
    assert np.abs(model.predict(x) - ref).max() < 1e-4


def test_export_keeps_training_mode_and_replaces_atomically(tmp_path):
    backbone = build_backbone("MobileFaceNet")
    backbone.train()
    save_dir = str(tmp_path / "inference")
    os.makedirs(save_dir)
    with open(os.path.join(save_dir, "stale.txt"), "w") as f:
        f.write("old export")
    export_inference(backbone, save_dir, "MobileFaceNet", program_format=False)
    assert backbone.training  # the caller's mode is restored
    assert "stale.txt" not in os.listdir(save_dir)  # the folder was replaced whole


OLD_FORMAT_EXPORT = textwrap.dedent("""
    import sys
    import paddle
    sys.path.insert(0, {repo!r})
    from engine.inference.folder import export_inference
    from models import build_backbone
    backbone = build_backbone("MobileFaceNet")
    backbone.set_state_dict(paddle.load({weights!r}))
    print(export_inference(backbone, {save_dir!r}, "MobileFaceNet")["model"])
""")


def test_old_pdmodel_format_loads(mobilefacenet, tmp_path):
    """Models exported by older Paddle (inference.pdmodel) need the old executor; InferenceModel
    detects the format and switches by itself."""
    weights = str(tmp_path / "w.pdparams")
    paddle.save(mobilefacenet.state_dict(), weights)
    save_dir = str(tmp_path / "old_inference")
    env = dict(os.environ, FLAGS_enable_pir_api="0")  # makes paddle.jit.save write the old format
    script = OLD_FORMAT_EXPORT.format(repo=REPO, weights=weights, save_dir=save_dir)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("inference.pdmodel")
    assert not os.path.exists(os.path.join(save_dir, "inference.json"))

    model = InferenceModel(save_dir, num_threads=2)
    assert model.format == "program"
    x = images(3, seed=5)
    with paddle.no_grad():
        ref = mobilefacenet(paddle.to_tensor(x)).numpy()
    assert np.abs(model.predict(x) - ref).max() < 1e-4
    assert np.abs(model.predict(x[:1]) - ref[:1]).max() < 1e-4

    if cpu_has_bf16():  # the old executor runs the convolutions in bf16, PReLU in fp32
        bf16 = InferenceModel(save_dir, num_threads=2, run_mode="mkldnn_bf16")
        assert bf16.bf16_note == "bf16 convolutions"
        out = bf16.predict(x)
        assert np.abs(out - ref).max() > 1e-5  # bf16 really ran (fp32 agrees to ~1e-5)
        assert cosine_rows(out, ref).min() > 0.995


def test_resnet50_face_export_matches_dygraph(tmp_path):
    paddle.seed(3)
    backbone = calibrated(build_backbone("ResNet50_face"), batch=4)
    save_dir = str(tmp_path / "inference")
    export_inference(backbone, save_dir, "ResNet50_face", program_format=False)
    model = InferenceModel(save_dir, num_threads=2)
    assert model.format == "pir"
    assert model.embedding_size == 512
    x = images(2, seed=7)
    with paddle.no_grad():
        ref = backbone(paddle.to_tensor(x)).numpy()
    assert np.abs(model.predict(x) - ref).max() < 1e-4


def test_inference_model_errors(tmp_path):
    with pytest.raises(UserError) as e:
        InferenceModel(str(tmp_path / "nowhere"))
    assert "nowhere" in str(e.value) and "does not exist" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(UserError) as e:
        InferenceModel(str(empty))
    assert str(empty) in str(e.value) and "inference.json" in str(e.value) and "notes.txt" in str(e.value)
    half = tmp_path / "half"
    half.mkdir()
    (half / "inference.json").write_text("{}")
    with pytest.raises(UserError, match="inference.pdiparams"):
        InferenceModel(str(half))


# ---------------------------------------------------------------- Global.mode=export from the CLI

def run_cli(*overrides, timeout=180):
    cmd = [sys.executable, os.path.join(REPO, "main.py"), "-c", CONFIG]
    for o in overrides:
        cmd += ["-o", o]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def checkpoint(mobilefacenet, tmp_path_factory):
    """A FaceRecModel state dict as training saves it (backbone.* and head.*)."""
    folder = tmp_path_factory.mktemp("ckpt") / "best_model"
    folder.mkdir()
    model = FaceRecModel(mobilefacenet, ArcMargin(128, 6))
    path = str(folder / "best_model.pdparams")
    paddle.save(model.state_dict(), path)
    return path


def test_cli_export_mode(checkpoint, mobilefacenet, tmp_path):
    proc = run_cli("Global.mode=export", f"Export.weight_path={checkpoint}", f"Global.output={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    save_dir = os.path.join(os.path.dirname(checkpoint), "inference")  # default: next to the weights
    assert save_dir in proc.stdout
    model = InferenceModel(save_dir)
    x = images(2, seed=9)
    with paddle.no_grad():
        ref = mobilefacenet(paddle.to_tensor(x)).numpy()
    assert np.abs(model.predict(x) - ref).max() < 1e-4



def test_export_runner_honours_save_dir(checkpoint, tmp_path):
    from engine.config.loader import load_config
    from engine.runners.export import run

    target = tmp_path / "elsewhere"
    cfg = load_config(CONFIG, ["Global.mode=export", f"Export.weight_path={checkpoint}", f"Export.save_dir={target}"])
    assert run(cfg) == 0
    assert {"inference.json", "inference.pdmodel", "inference.pdiparams", "inference.yml"} <= set(os.listdir(target))


def test_cli_export_errors(checkpoint, tmp_path):
    missing = tmp_path / "nope.pdparams"
    proc = run_cli("Global.mode=export", f"Export.weight_path={missing}")
    assert proc.returncode == 1
    assert "nope.pdparams" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr  # one line, no traceback
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: ")

    # weights that do not fit the config's model: the message names the tensor and both shapes
    proc = run_cli("Global.mode=export", f"Export.weight_path={checkpoint}", "Arch.embedding_size=256",
                   f"Export.save_dir={tmp_path / 'bad'}")
    assert proc.returncode == 1
    assert "linear1.conv.weight" in proc.stderr and "[128, 512, 1, 1]" in proc.stderr and "[256, 512, 1, 1]" in proc.stderr
    assert not (tmp_path / "bad").exists()  # nothing half-written
