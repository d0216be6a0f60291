"""Config loading: a YAML file merged with `-o Key.sub=value` overrides.

Override values are typed the way YAML types them (`10` is an int, `gpu:0,1` a string,
`null` is None, `[a,b]` a list), so a value from the command line behaves exactly as the
same value written in the file. Only keys that exist in the file may be overridden: a typo
is an error that names the nearest valid keys instead of a silently ignored setting.
"""
import difflib
import os
import re

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from foundation.errors import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flat_keys(node, prefix=""):
    """All dotted key paths in a config, leaves and sections alike."""
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            path = f"{prefix}.{k}" if prefix else str(k)
            keys.append(path)
            keys.extend(flat_keys(node._get_node(k), path))
    return keys


def nearest(word, choices, n=3):
    """The closest few of `choices` to `word`, for 'did you mean' messages."""
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if not close:
        # Fall back to keys sharing the section, which is usually what was meant.
        section = word.split(".")[0]
        close = [c for c in choices if c.split(".")[0] == section][:n]
    return close


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def parse_override(text):
    """'Key.sub=value' -> ('Key.sub', typed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form Key.sub=value (e.g. -o Global.mode=train)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key (e.g. -o Global.mode=train)")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw  # not valid YAML on its own (e.g. an unbalanced bracket): keep the text
    if isinstance(value, str) and _FLOAT_RE.match(value):
        value = float(value)  # PyYAML (YAML 1.1) reads 1e-3 as text; users mean a number
    return key, value


def load_config(path, overrides=()):
    """Read `path` and apply overrides; returns a DictConfig."""
    if not path:
        raise ConfigError("no config file given: pass -c configs/face_recognition/MobileFaceNet.yaml")
    if not os.path.isfile(path):
        hint = ""
        folder = os.path.join(REPO_ROOT, "configs", "face_recognition")
        if os.path.isdir(folder):
            names = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
            hint = " Available configs: " + ", ".join(f"configs/face_recognition/{n}" for n in names)
        raise ConfigError(f"config file '{path}' does not exist.{hint}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{path}'{where} is not valid YAML: {getattr(e, 'problem', e)}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (Global, Train, ...)")
    cfg = OmegaConf.create(data)
    apply_overrides(cfg, overrides, source=path)
    return cfg


def apply_overrides(cfg, overrides, source="config"):
    valid = flat_keys(cfg)
    for text in overrides:
        key, value = parse_override(text)
        if key not in valid:
            close = nearest(key, valid)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key '{key}' (not in {source}).{hint}")
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        current = parent._get_node(leaf)
        if isinstance(current, (DictConfig, ListConfig)) and not isinstance(value, (dict, list)) and value is not None:
            raise ConfigError(f"config key '{key}' is a section; set one of its fields, e.g. '{key}.<field>=...'")
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def get(cfg, key, default=None):
    """cfg value at a dotted key, or `default` when the key is absent or null."""
    value = OmegaConf.select(cfg, key, default=None)
    return default if value is None else value


def save_config(cfg, path):
    """Write the full merged config (atomically) so a run can be reproduced."""
    from foundation.atomic_io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg))
