"""The typed config schema: every key's type and limits checked at load, one line and exit 2
before Paddle loads; YAML and -o read numbers alike; the shipped configs match the schema."""
import os
import subprocess
import sys
import time

import pytest

from engine.config.loader import load_config
from engine.config.schema import ModelConfig, PipelineConfig, leaf_fields
from foundation.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "face_recognition")
MODEL = os.path.join(CONFIGS, "MobileFaceNet.yaml")
PIPELINE = os.path.join(CONFIGS, "pipeline.yaml")

BAD_VALUES = [
    ("Train.batch_size=abc", "int"), ("Train.batch_size=0", "at least 1"), ("Train.batch_size=16.5", "int"),
    ("Train.num_workers=-3", "at least 0"), ("Train.warmup_steps=-1", "at least 0"),
    ("Evaluate.batch_size=0", "at least 1"), ("Arch.embedding_size=0", "at least 1"),
    ("Arch.image_size=7", "one of 112"), ("Train.learning_rate=0", "greater than 0"),
    ("Train.transforms.random_flip=1.5", "from 0 to 1"), ("Evaluate.flip=maybe", "bool"),
    ("Global.num_threads=-1", "at least 0"), ("Evaluate.folds=1", "at least 2"),
]


@pytest.mark.parametrize("override,allowed", BAD_VALUES)
def test_bad_value_is_one_line_exit_2_before_paddle(override, allowed):
    """Through main.py: exit 2, one line naming the key, the value and what is allowed, no
    traceback, fast (Paddle is never imported: the check runs first)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "import sys, main; code = main.main(sys.argv[1:]); "
                           "assert 'paddle' not in sys.modules; sys.exit(code)",
                           "-c", MODEL, "-o", "Global.mode=train", "-o", override],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    key, value = override.split("=", 1)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert key in lines[0] and value in lines[0] and allowed in lines[0], lines[0]
    assert seconds < 3.0, f"{seconds:.1f} s"


def test_yaml_and_override_read_numbers_the_same_way(tmp_path):
    text = open(MODEL, encoding="utf-8").read().replace("learning_rate: 0.002", "learning_rate: 1e-3")
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    from_file = load_config(str(path)).Train.learning_rate
    from_cli = load_config(MODEL, ["Train.learning_rate=1e-3"]).Train.learning_rate
    assert from_file == from_cli == 0.001 and isinstance(from_file, float)


def test_unknown_key_in_the_file_names_file_and_line(tmp_path):
    text = open(MODEL, encoding="utf-8").read().replace("  epochs_iters: 25", "  epochs_iter: 25")
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    line = text.splitlines().index("  epochs_iter: 25") + 1
    with pytest.raises(ConfigError, match=rf"line {line}: unknown config key 'Train.epochs_iter'.*Train.epochs_iters"):
        load_config(str(path))


def test_bad_value_in_the_file_names_file_and_line(tmp_path):
    text = open(MODEL, encoding="utf-8").read().replace("  batch_size: 128", "  batch_size: many")
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    line = text.splitlines().index("  batch_size: many") + 1
    with pytest.raises(ConfigError, match=rf"m.yaml' line {line}: Train.batch_size must be int"):
        load_config(str(path))


def test_a_folder_as_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_config(str(tmp_path))


def test_pipeline_lists_and_choices():
    cfg = load_config(PIPELINE, ["Index.remove_ids=[3,7]", "Index.index_type=HNSW"])
    assert list(cfg.Index.remove_ids) == [3, 7] and cfg.Index.index_type == "HNSW"
    with pytest.raises(ConfigError, match=r"Index.remove_ids must be list of int, got \[1, 'x'\]"):
        load_config(PIPELINE, ["Index.remove_ids=[1,x]"])
    with pytest.raises(ConfigError, match="SubModules.Detection.model_name must be one of YuNet, BlazeFace"):
        load_config(PIPELINE, ["SubModules.Detection.model_name=yolo"])


def test_typed_attributes_and_unknown_attributes():
    cfg = load_config(MODEL)
    assert isinstance(cfg.Train.batch_size, int) and isinstance(cfg.Train.warmup_steps, float)
    with pytest.raises(Exception):
        cfg.Train.no_such_key  # noqa: B018 - a typo in code is an error, not None


@pytest.mark.parametrize("name,schema", [("MobileFaceNet.yaml", ModelConfig), ("ResNet50_face.yaml", ModelConfig),
                                         ("pipeline.yaml", PipelineConfig)])
def test_shipped_configs_spell_out_every_key(name, schema):
    """Each shipped YAML holds every key of its schema, so it reads as the full reference."""
    import yaml

    with open(os.path.join(CONFIGS, name), encoding="utf-8") as f:
        data = yaml.safe_load(f)

    def has(key):
        node = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    missing = [key for key, _ in leaf_fields(schema) if not has(key)]
    assert not missing, f"{name} lacks {missing}"
    load_config(os.path.join(CONFIGS, name))
