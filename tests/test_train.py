"""Training: outputs, determinism, resume (also after SIGKILL), atomic checkpoints, bad input,
pretrained weights, and the two-process CPU (gloo) run.

MobileFaceNet on this CPU runs about 2-5 images/s, so every run here is tiny: 4 identities x 2
images (8 training images, batch 4, 2 steps per epoch) and 8 validation pairs, 112x112 input.
"""
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from datasets.demo import generate_demo  # noqa: E402
from datasets.face_dataset import (  # noqa: E402
    BatchLoader,
    FaceTrainDataset,
    ImageReadError,
    LoaderWorkerError,
    SeededBatchSampler,
    flip_decision,
)
from engine.config.loader import load_config  # noqa: E402
from foundation.errors import ConfigError, DatasetError, UserError  # noqa: E402
from models import fast_cpu_ops  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "face_recognition", "MobileFaceNet.yaml")
STEP_LINE = re.compile(r"epoch (\d+)/\d+ step (\d+)/\d+ loss ([-\d.naif]+) lr (\S+) ips (\S+) img/s eta (\S+)")


# --------------------------------------------------------------------------- helpers
def make_data(root, identities=4, per_identity=2, seed=1):
    generate_demo(str(root), train_identities=identities, images_per_identity=per_identity, val_identities=4,
                  val_pairs=8, seed=seed, workers=1)
    return str(root)


def overrides(data, out, *extra):
    return ["Global.mode=train", f"Global.dataset_dir={data}", f"Global.output={out}", "Global.num_threads=2",
            "Train.epochs_iters=2", "Train.batch_size=4", "Train.num_workers=0", "Train.log_interval=1",
            "Evaluate.batch_size=16", "Evaluate.folds=4", *extra]


def make_cfg(data, out, *extra):
    return load_config(CONFIG, overrides(data, out, *extra))


def train(data, out, *extra):
    from engine.runners.train import run

    return run(make_cfg(data, out, *extra))


def step_losses(out):
    """{(epoch, step): loss text} from train.log (the last occurrence wins after a resume)."""
    with open(os.path.join(out, "train.log"), encoding="utf-8") as f:
        return {(int(m.group(1)), int(m.group(2))): m.group(3) for m in STEP_LINE.finditer(f.read())}


def load_params(path):
    return {k: np.asarray(v.numpy()) for k, v in paddle.load(path).items()}


def assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= atol, f"weights differ by {worst}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """Two epochs in one go (the reference every other run is compared with)."""
    out = str(tmp_path_factory.mktemp("straight") / "out")
    assert train(data, out) == 0
    return out


# --------------------------------------------------------------------------- data pipeline (no model)
def test_sampler_and_flips_depend_only_on_seed_epoch_index():
    a = SeededBatchSampler(10, 3, seed=5)
    b = SeededBatchSampler(10, 3, seed=5)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b) and len(list(a)) == len(a) == 3  # drop_last: 10 // 3
    b.set_epoch(3)
    assert list(a) != list(b)
    ranks = [SeededBatchSampler(10, 2, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    got = [i for s in ranks for i in s.epoch_indices()]
    assert len(got) == 10 and sorted(got) == list(range(10))  # disjoint shards covering everything
    assert len(ranks[0]) == len(ranks[1]) == 2
    flips = [flip_decision(42, 1, i, 0.5) for i in range(200)]
    assert flips == [flip_decision(42, 1, i, 0.5) for i in range(200)]
    assert 60 < sum(flips) < 140 and flips != [flip_decision(42, 2, i, 0.5) for i in range(200)]
    assert not flip_decision(1, 1, 1, 0.0) and flip_decision(1, 1, 1, 1.0)


def test_loader_same_batches_with_and_without_workers(data):
    from datasets.label_files import load_train_list

    ds = FaceTrainDataset(load_train_list(data), flip_prob=0.5, seed=3)
    streams = []
    for workers in (0, 2):
        loader = BatchLoader(ds, SeededBatchSampler(len(ds), 3, seed=3), num_workers=workers)
        batches = []
        for epoch in (1, 2):
            loader.set_epoch(epoch)
            batches += list(loader)
        loader.close()
        streams.append(batches)
    assert len(streams[0]) == 4
    for (xa, ya), (xb, yb) in zip(*streams):
        assert xa.shape == (3, 3, 112, 112) and xa.dtype == np.float32 and ya.dtype == np.int64
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_loader_start_forks_the_workers_before_the_first_batch(data):
    """BatchLoader.start() forks every worker at once, while the trainer is still small (a worker
    keeps its own copy of each page the trainer rewrites after the fork); batches are unchanged."""
    from datasets.label_files import load_train_list

    psutil = pytest.importorskip("psutil")
    ds = FaceTrainDataset(load_train_list(data), flip_prob=0.5, seed=3)
    before = {c.pid for c in psutil.Process().children()}
    plain = BatchLoader(ds, SeededBatchSampler(len(ds), 3, seed=3), num_workers=0)
    plain.set_epoch(1)
    expected = list(plain)
    loader = BatchLoader(ds, SeededBatchSampler(len(ds), 3, seed=3), num_workers=2).start()
    try:
        started = {c.pid for c in psutil.Process().children()} - before
        assert len(started) >= 2  # both workers exist before any batch was asked for
        loader.set_epoch(1)
        got = list(loader)
        assert {c.pid for c in psutil.Process().children()} - before == started  # the same workers load
    finally:
        loader.close()
    assert len(got) == len(expected) == 2
    for (xa, ya), (xb, yb) in zip(got, expected):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_loader_reports_bad_image_and_dead_worker(tmp_path, data):
    from datasets.label_files import load_train_list

    samples = load_train_list(data)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    samples[3] = (str(bad), samples[3][1])
    loader = BatchLoader(FaceTrainDataset(samples), SeededBatchSampler(len(samples), 2, seed=0), num_workers=2)
    start = time.perf_counter()
    with pytest.raises(ImageReadError, match=re.escape(str(bad))):
        list(loader)
    loader.close()
    assert time.perf_counter() - start < 30

    good = load_train_list(data)
    loader = BatchLoader(FaceTrainDataset(good), SeededBatchSampler(len(good), 1, seed=0), num_workers=2)
    with pytest.raises(LoaderWorkerError, match="died"):
        for i, _ in enumerate(loader):
            if i == 0:
                for proc in list(loader._pool._processes.values()):
                    os.kill(proc.pid, signal.SIGKILL)
    loader.close()


# --------------------------------------------------------------------------- optimizer and schedule
def test_schedule_warmup_cosine_and_no_decay_on_1d_params():
    from engine.training.builders import WarmupCosineLR, build_optimizer

    s = WarmupCosineLR(0.01, total_iters=100, warmup_iters=10, eta_min=1e-6)
    assert s.lr_at(0) == 0.0 and abs(s.lr_at(5) - 0.005) < 1e-12 and abs(s.lr_at(10) - 0.01) < 1e-12
    assert abs(s.lr_at(100) - 1e-6) < 1e-12 and abs(s.lr_at(55) - (1e-6 + (0.01 - 1e-6) * 0.5)) < 1e-9
    decay = [s.lr_at(i) for i in range(10, 101)]
    assert all(x >= y for x, y in zip(decay, decay[1:]))
    for _ in range(37):
        s.step()
    restored = WarmupCosineLR(0.01, total_iters=100, warmup_iters=10, eta_min=1e-6)
    restored.set_state_dict(s.state_dict())
    assert restored.get_lr() == s.get_lr() == s.lr_at(37)

    model = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3, bias_attr=False), paddle.nn.BatchNorm2D(4),
                                 paddle.nn.PReLU(4), paddle.nn.Flatten(), paddle.nn.Linear(4, 2))
    cfg = load_config(CONFIG, ["Train.epochs_iters=3", "Train.warmup_steps=1"])
    opt, sched = build_optimizer(cfg, model, steps_per_epoch=5)
    assert sched.total_iters == 15 and sched.warmup_iters == 5 and sched.get_lr() == 0.0
    decays = {tuple(p.shape): opt._apply_decay_param_fun(p.name) for p in model.parameters() if not p.stop_gradient}
    assert decays[(4, 3, 3, 3)] and decays[(4, 2)]  # conv and linear weights decay
    assert [opt._apply_decay_param_fun(p.name) for p in model.parameters() if len(p.shape) == 1
            and not p.stop_gradient] == [False] * 4  # BN scale/shift, PReLU slope, linear bias
    assert opt._beta1 == 0.9 and opt._beta2 == 0.999 and opt._epsilon == 1e-8 and opt._weight_decay == 0.05


# --------------------------------------------------------------------------- a full run
def test_outputs_of_a_run(straight):
    out = straight
    for name in ("config.yaml", "train.log", "train_result.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    result = json.load(open(os.path.join(out, "train_result.json"), encoding="utf-8"))
    for key in ("model_name", "label_dict", "train_log", "visualdl_log", "config", "models", "done_flag"):
        assert key in result, key
    assert result["done_flag"] is True and result["model_name"] == "MobileFaceNet"
    assert result["train_log"] == "train.log" and result["config"] == "config.yaml"
    assert result["visualdl_log"].startswith("vdl/") and os.path.isfile(os.path.join(out, result["visualdl_log"]))
    assert set(result["models"]) == {"last_1", "last_2", "best"}
    import yaml

    yml = yaml.safe_load(open(os.path.join(out, "best_model", "inference", "inference.yml"), encoding="utf-8"))
    ver = yml["Verification"]  # what the pipeline takes its default rec_threshold from
    best_epoch = result["best_epoch"]
    assert ver["acc"] == pytest.approx(result["best_metric"]["value"], abs=1e-6) and ver["pairs"] > 0, (ver, best_epoch)
    assert -1.0 <= ver["best_threshold_cosine"] <= 1.0 and "1e-2" in ver["threshold_cosine_at_far"]
    assert result["models"]["last_1"]["pdparams"] == "epoch_2/epoch_2.pdparams"
    for entry in result["models"].values():
        assert isinstance(entry["score"], float) and 0.0 <= entry["score"] <= 1.0
        for key in ("pdparams", "pdopt", "pdstates", "inference_config", "pdmodel", "pdiparams"):
            assert not os.path.isabs(entry[key]) and os.path.isfile(os.path.join(out, entry[key])), (key, entry)
    assert result["models"]["best"]["score"] == max(r["score"] for r in result["history"])
    for folder in ("latest", "best_model", "epoch_1", "epoch_2"):
        for ext in ("pdparams", "pdopt", "pdstates"):
            assert os.path.isfile(os.path.join(out, folder, f"{folder}.{ext}")), (folder, ext)
    for folder in ("latest", "best_model"):
        names = os.listdir(os.path.join(out, folder, "inference"))
        assert "inference.pdiparams" in names and "inference.yml" in names
        assert "inference.json" in names or "inference.pdmodel" in names
    states = paddle.load(os.path.join(out, "latest", "latest.pdstates"), return_numpy=True)
    assert states["epoch"] == 2 and states["global_step"] == 4 and states["model_name"] == "MobileFaceNet"
    assert states["num_classes"] == 4 and states["embedding_size"] == 128 and states["best_metric"] is not None
    assert states["lr_scheduler"]["last_epoch"] == 4 and states["rng"]["seed"] == 42
    # every log_interval: epoch, step, loss, lr, images/s, ETA; eval accuracy each eval_interval
    log = open(os.path.join(out, "train.log"), encoding="utf-8").read()
    assert sorted(step_losses(out)) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert len(re.findall(r"epoch \d eval: val verification acc [\d.]+", log)) == 2
    from foundation.runtime import cpu_class

    # the CPU path chosen at run time, and why, is in the log
    assert re.search(r"MKL vendor shim: (on|off|not active) \(", log)
    assert f"CPU class {cpu_class()}" in log or "fused kernels: off" in log
    cfg = load_config(os.path.join(out, "config.yaml"))
    assert cfg.Train.epochs_iters == 2 and cfg.Global.mode == "train"
    from visualdl import LogReader

    reader = LogReader(file_path=os.path.join(out, result["visualdl_log"]))
    tags = set(reader.get_tags().get("scalar", []))
    assert {"train/loss", "train/lr", "train/ips", "eval/acc"} <= tags


def test_rerun_into_a_finished_output_is_refused(straight, data):
    with pytest.raises(UserError, match="earlier training run.*resume_path.*overwrite_output"):
        train(data, straight)


def test_resume_with_other_class_count_is_refused(straight, tmp_path):
    other = make_data(tmp_path / "five", identities=5)
    resume = os.path.join(straight, "latest", "latest.pdparams")
    with pytest.raises(UserError, match=r"num_classes: checkpoint 4, this run 5"):
        train(other, str(tmp_path / "out"), f"Train.resume_path={resume}", "Train.epochs_iters=3")


def test_nan_stop_failed_save_and_resume_match_a_straight_run(straight, data, tmp_path, monkeypatch):
    """Same seed -> same losses; NaN stops with epoch/step and keeps the last good checkpoint;
    a save that fails half-way leaves the previous checkpoint whole; 1 epoch + resume + 1 epoch
    gives the weights of 2 epochs straight."""
    import engine.training.trainer as T

    out = str(tmp_path / "out")
    real_loss = T.compute_loss
    calls = {"n": 0}

    def nan_at_third_step(logits, labels):
        calls["n"] += 1
        loss = real_loss(logits, labels)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(T, "compute_loss", nan_at_third_step)
    with pytest.raises(T.TrainingDiverged, match=r"loss is nan at epoch 2, step 1/2.*latest.*\(epoch 1\)"):
        train(data, out)
    monkeypatch.setattr(T, "compute_loss", real_loss)
    first = step_losses(straight)
    assert step_losses(out) == {k: v for k, v in first.items() if k[0] == 1}  # same seed, same curve
    latest = os.path.join(out, "latest", "latest.pdparams")
    assert paddle.load(os.path.join(out, "latest", "latest.pdstates"), return_numpy=True)["epoch"] == 1
    assert json.load(open(os.path.join(out, "train_result.json")))["done_flag"] is False
    epoch1 = load_params(latest)

    # a failure in the middle of writing the next checkpoint (after .pdparams, at .pdopt)
    real_save = paddle.save

    def failing_save(obj, path, *a, **k):
        if str(path).endswith(".pdopt"):
            raise OSError("disk full (injected)")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(paddle, "save", failing_save)
    with pytest.raises(UserError, match=r"cannot write the epoch 2 checkpoint latest/.*injected.*\(epoch 1\) is left"):
        train(data, out, f"Train.resume_path={latest}")
    monkeypatch.setattr(paddle, "save", real_save)
    assert_same_weights(load_params(latest), epoch1, atol=0.0)  # untouched
    assert paddle.load(os.path.join(out, "latest", "latest.pdstates"), return_numpy=True)["epoch"] == 1
    assert sorted(os.listdir(os.path.join(out, "latest"))) == ["inference", "latest.pdopt", "latest.pdparams",
                                                               "latest.pdstates"]
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]

    assert train(data, out, f"Train.resume_path={latest}") == 0
    assert_same_weights(load_params(latest), load_params(os.path.join(straight, "latest", "latest.pdparams")))
    assert step_losses(out) == first
    result = json.load(open(os.path.join(out, "train_result.json")))
    assert result["done_flag"] is True and set(result["models"]) == {"last_1", "last_2", "best"}


def test_sigkilled_run_resumes_from_latest(straight, data, tmp_path):
    out = str(tmp_path / "out")
    cmd = [sys.executable, os.path.join(REPO_ROOT, "main.py"), "-c", CONFIG, "-o", *overrides(data, out)]
    # The MKL vendor shim changes MKL's kernels and so the last bits of the weights: the killed run
    # takes the same kernels as this process, where the reference and the resumed run train.
    env = dict(os.environ)
    mkl = fast_cpu_ops.mkl_library()
    if mkl is not None and not ctypes.CDLL(mkl).mkl_serv_intel_cpu():
        env["FACEFEAT_NO_MKL_SHIM"] = "1"
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = os.path.join(out, "train.log")
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.isfile(log) and "epoch 2/2 step 1/2" in open(log, encoding="utf-8").read():
                break  # epoch 1 is saved and epoch 2 has started
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.load(open(os.path.join(out, "train_result.json")))["done_flag"] is False
    assert train(data, out, f"Train.resume_path={os.path.join(out, 'latest', 'latest.pdparams')}") == 0
    assert json.load(open(os.path.join(out, "train_result.json")))["done_flag"] is True
    assert_same_weights(load_params(os.path.join(out, "latest", "latest.pdparams")),
                        load_params(os.path.join(straight, "latest", "latest.pdparams")))


# --------------------------------------------------------------------------- bad input
def test_unreadable_image_mid_training_names_its_path(tmp_path):
    data = make_data(tmp_path / "data", identities=4, per_identity=3)  # 12 images, 3 steps of 4
    from datasets.label_files import load_train_list

    samples = load_train_list(data)
    sampler = SeededBatchSampler(len(samples), 4, seed=42)
    sampler.set_epoch(1)
    victim = samples[list(sampler)[1][2]][0]  # an image of the 2nd batch of epoch 1
    with open(victim, "wb") as f:
        f.write(b"\xff\xd8 truncated")
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=rf"epoch 1, step 2: .*{re.escape(victim)}.*label\.txt"):
        train(data, str(tmp_path / "out"), "Train.num_workers=2")
    assert time.perf_counter() - start < 120


def test_num_classes_that_disagrees_with_the_data(data, tmp_path):
    with pytest.raises(ConfigError, match=r"Train.num_classes=7 but .*label.txt has 4 classes"):
        train(data, str(tmp_path / "out"), "Train.num_classes=7")


def test_batch_larger_than_the_dataset_cli(data, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO_ROOT, "main.py"), "-c", CONFIG, "-o",
           *overrides(data, str(out), "Train.batch_size=64", "Global.cpu_speedup=False")]  # no kernel build check
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Train.batch_size=64" in errors[0] and "8 images" in errors[0]
    assert not (out / "latest").exists()


def test_output_dir_guard_and_overwrite(tmp_path):
    from engine.training.checkpoints import prepare_output_dir

    out = tmp_path / "out"
    (out / "latest").mkdir(parents=True)
    (out / "epoch_3").mkdir()
    (out / "train_result.json").write_text("{}")
    (out / "check_dataset_result.json").write_text("{}")
    cfg = load_config(CONFIG)
    with pytest.raises(UserError, match="earlier training run"):
        prepare_output_dir(cfg, str(out), resuming=False)
    prepare_output_dir(cfg, str(out), resuming=True)  # resuming into it is fine
    cfg = load_config(CONFIG, ["Train.overwrite_output=True"])
    prepare_output_dir(cfg, str(out), resuming=False)
    assert sorted(os.listdir(out)) == ["check_dataset_result.json"]  # not ours: kept


# --------------------------------------------------------------------------- pretrained weights
def test_pretrained_weights_by_name_skip_head_and_url_errors(straight, tmp_path):
    from engine.training.builders import build_model
    from engine.training.checkpoints import fetch_weights, load_pretrained

    cfg = load_config(CONFIG)
    model = build_model(cfg, 6)  # the checkpoint's head has 4 classes
    report = load_pretrained(model, os.path.join(straight, "best_model", "best_model.pdparams"))
    assert report["skipped"] == [("head.weight", "shape [128, 4] in "
                                  f"{os.path.join(straight, 'best_model', 'best_model.pdparams')}, model has [128, 6]")]
    assert report["loaded"] and all(n.startswith("backbone.") for n in report["loaded"]) and report["missing"] == []
    ckpt = load_params(os.path.join(straight, "best_model", "best_model.pdparams"))
    name = report["loaded"][0]
    np.testing.assert_array_equal(model.state_dict()[name].numpy(), ckpt[name])
    url = "http://127.0.0.1:9/weights/MobileFaceNet_pretrained.pdparams"
    with pytest.raises(UserError, match=re.escape(url)):
        fetch_weights(url, cache_dir=str(tmp_path / "cache"))
    assert not os.listdir(tmp_path / "cache")  # no half-written download
    entry = tmp_path / "cache" / hashlib.sha256(url.encode()).hexdigest()[:16]  # the cache is keyed by the URL
    entry.mkdir()
    shutil.copy(os.path.join(straight, "best_model", "best_model.pdparams"), entry / "MobileFaceNet_pretrained.pdparams")
    assert fetch_weights(url, cache_dir=str(tmp_path / "cache")).endswith("MobileFaceNet_pretrained.pdparams")
    with pytest.raises(UserError, match="does not exist"):
        fetch_weights(str(tmp_path / "missing.pdparams"))


# --------------------------------------------------------------------------- two processes (gloo)
def test_two_cpu_processes_keep_identical_parameters(data, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO_ROOT, "main.py"), "-c", CONFIG, "-o",
           *overrides(data, str(out), "Train.cpu_processes=2", "Global.num_threads=1", "Train.epochs_iters=1")]
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    log = (out / "train.log").read_text(encoding="utf-8") if (out / "train.log").exists() else ""
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:] + log
    assert re.search(r"trainable parameters across 2 ranks: max abs difference 0\b", log), log
    assert "batch 4 x 2 processes, 1 steps/epoch" in log
    assert (out / "dist_logs" / "workerlog.1").exists()
    result = json.loads((out / "train_result.json").read_text())
    assert result["done_flag"] is True
    # rank 0 alone writes: one log line per step, not two
    assert len(STEP_LINE.findall(log)) == 1


def test_loader_workers_die_with_a_killed_trainer(tmp_path):
    """SIGKILL of the trainer runs no clean-up; its loader workers must still end (not live on
    under pid 1 holding their memory)."""
    psutil = pytest.importorskip("psutil")
    data = make_data(tmp_path / "data", identities=4, per_identity=3)
    out = str(tmp_path / "out")
    cmd = [sys.executable, os.path.join(REPO_ROOT, "main.py"), "-c", CONFIG, "-o",
           *overrides(data, out, "Train.num_workers=2", "Train.epochs_iters=50", "Global.cpu_speedup=False")]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []

    def command_line(p):  # a short-lived child (a compiler, a check worker) may be gone or a zombie by now
        try:
            return " ".join(p.cmdline() or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return ""

    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(workers) < 2:
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                       if "main.py" in command_line(c)] if psutil.pid_exists(proc.pid) else []
            time.sleep(0.1)
        assert len(workers) >= 2, "the loader workers never started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers outlived the trainer: {[p.pid for p in alive]}"
