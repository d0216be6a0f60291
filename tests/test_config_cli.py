"""The command line: typed -o overrides, config errors with exit code 2 and nearest names, mode dispatch."""
import os
import subprocess
import sys

import pytest

from engine import runners
from engine.config.loader import get, load_config, parse_override
from foundation.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [os.path.join(REPO, "configs", "face_recognition", n) for n in ("MobileFaceNet.yaml", "ResNet50_face.yaml")]
CONFIG = CONFIGS[0]


def run_main(*args):
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- typing
@pytest.mark.parametrize("text,key,value", [
    ("Train.epochs_iters=10", "Train.epochs_iters", 10),
    ("Global.device=gpu:0,1", "Global.device", "gpu:0,1"),
    ("Global.device=cpu", "Global.device", "cpu"),
    ("Train.learning_rate=0.001", "Train.learning_rate", 0.001),
    ("Evaluate.flip=False", "Evaluate.flip", False),
    ("Train.resume_path=null", "Train.resume_path", None),
    ("Evaluate.bin_paths=[a.bin,b.bin]", "Evaluate.bin_paths", ["a.bin", "b.bin"]),
    ("Global.dataset_dir=./data/x=y", "Global.dataset_dir", "./data/x=y"),  # only the first '=' splits
])
def test_override_values_are_typed_like_yaml(text, key, value):
    assert parse_override(text) == (key, value)


def test_overrides_reach_the_config():
    cfg = load_config(CONFIG, ["Train.epochs_iters=10", "Global.device=gpu:0,1", "Train.batch_size=4"])
    assert cfg.Train.epochs_iters == 10 and isinstance(cfg.Train.epochs_iters, int)
    assert cfg.Global.device == "gpu:0,1" and isinstance(cfg.Global.device, str)
    assert get(cfg, "Train.batch_size") == 4
    assert get(cfg, "Train.num_classes", "default") == "default"  # null -> default


@pytest.mark.parametrize("config", CONFIGS)
def test_configs_carry_the_module_fields(config):
    cfg = load_config(config)
    for key in ["Global.model", "Global.mode", "Global.dataset_dir", "Global.device", "Global.output",
                "CheckDataset.convert.enable", "CheckDataset.convert.src_dataset_type", "CheckDataset.split.enable",
                "CheckDataset.split.train_percent", "CheckDataset.split.val_percent", "Train.num_classes",
                "Train.epochs_iters", "Train.batch_size", "Train.learning_rate", "Train.pretrain_weight_path",
                "Train.warmup_steps", "Train.resume_path", "Train.log_interval", "Train.eval_interval",
                "Train.save_interval", "Evaluate.weight_path", "Evaluate.log_interval", "Export.weight_path",
                "Predict.batch_size", "Predict.model_dir", "Predict.input", "Predict.kernel_option.run_mode"]:
        section, _, leaf = key.rpartition(".")
        node = cfg
        for part in section.split("."):
            node = node[part]
        assert leaf in node, f"{key} missing from {config}"
    assert cfg.Global.model == os.path.basename(config)[:-5]
    assert cfg.CheckDataset.convert.enable is False and cfg.CheckDataset.split.enable is False


# --------------------------------------------------------------------------- errors, in process
def test_unknown_key_names_the_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'Train.epoch_iters'.*Train.epochs_iters"):
        load_config(CONFIG, ["Train.epoch_iters=3"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="Key.sub=value"):
        load_config(CONFIG, ["Global.mode"])


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    """Nine levels of nested aliases (a "billion laughs") would expand to 10^9 items: refused at the
    first alias, in well under a second, naming the file and line."""
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines + ["Global: {mode: train}"]) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml:2: YAML alias '\*a0' is not allowed"):
        load_config(str(path))
    assert time.perf_counter() - start < 1.0


def test_thread_counts_are_bounded_by_the_cores():
    cores = os.cpu_count() or 1
    with pytest.raises(ConfigError, match=rf"Global.num_threads.*at most {4 * cores} \(4 per core"):
        load_config(CONFIG, [f"Global.num_threads={4 * cores + 1}"])
    assert load_config(CONFIG, [f"Global.num_threads={4 * cores}"]).Global.num_threads == 4 * cores


def test_section_cannot_be_replaced_by_a_scalar():
    with pytest.raises(ConfigError, match="is a section"):
        load_config(CONFIG, ["Train=3"])


def test_unknown_mode_names_the_nearest():
    with pytest.raises(ConfigError, match=r"unknown mode 'trian'.*train"):
        runners.runner_for("trian")


def test_mode_not_implemented_is_non_zero(monkeypatch):
    import main

    monkeypatch.setitem(runners.MODULES, "check_dataset", "no_such_module_yet")
    assert main.main(["-c", CONFIG, "-o", "Global.mode=check_dataset"]) == 3


def test_every_mode_has_a_runner_module():
    for mode in runners.MODES:
        assert os.path.isfile(os.path.join(REPO, "engine", "runners", runners.MODULES[mode] + ".py")), mode


# --------------------------------------------------------------------------- exit codes through main.py
def test_cli_unknown_key_exit_2():
    proc = run_main("-c", CONFIG, "-o", "Global.mode=check_dataset", "-o", "Global.outptu=x")
    assert proc.returncode == 2
    assert "Global.output" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_missing_config_exit_2():
    proc = run_main("-c", "configs/face_recognition/NoSuchModel.yaml", "-o", "Global.mode=train")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "MobileFaceNet.yaml" in proc.stderr


def test_cli_unknown_mode_exit_2():
    proc = run_main("-c", CONFIG, "-o", "Global.mode=evalute")
    assert proc.returncode == 2
    assert "evaluate" in proc.stderr


def test_cli_check_dataset_verbatim_command(tmp_path, capsys, monkeypatch):
    """The seed's command (MobileFaceNet and ResNet50_face) on a small generated dataset: through
    main.py in a subprocess for the first config, through main.main in this process for the second
    (the same entry, without a second interpreter start)."""
    import main
    from datasets.demo import generate_demo

    data = str(tmp_path / "data")
    generate_demo(data, train_identities=4, images_per_identity=2, val_identities=2, val_pairs=2, workers=1)
    monkeypatch.chdir(REPO)  # the command's relative config path, as typed in the repository
    for config in CONFIGS:
        out = str(tmp_path / ("out_" + os.path.basename(config)))
        args = ["-c", os.path.relpath(config, REPO), "-o", "Global.mode=check_dataset",
                "-o", f"Global.dataset_dir={data}", "-o", f"Global.output={out}"]
        if config == CONFIGS[0]:
            proc = run_main(*args)
            code, stdout, said = proc.returncode, proc.stdout, proc.stdout + proc.stderr
        else:
            capsys.readouterr()
            code = main.main(args)
            captured = capsys.readouterr()
            stdout, said = captured.out, captured.out + captured.err
        assert code == 0, said
        assert "Check dataset passed !" in stdout
        assert os.path.isfile(os.path.join(out, "check_dataset_result.json"))


def test_cli_convert_enable_exit_2(tmp_path):
    proc = run_main("-c", CONFIG, "-o", "Global.mode=check_dataset", "-o", "CheckDataset.convert.enable=True",
                    "-o", f"Global.output={tmp_path}")
    assert proc.returncode == 2
    assert "not supported for face features" in proc.stderr
