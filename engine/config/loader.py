"""Config loading: a YAML file and `-o Key.sub=value` overrides, merged into the typed schema.

Both are read with one YAML reader, so `1e-3` is a number in the file as on the command line
(PyYAML alone reads it as text in the file). Every key must exist in the schema
(engine/config/schema.py): a typo is an error naming the nearest valid keys. Every value is
checked against its field's type and limits: a wrong one is one line naming the key, the value,
where it came from (file and line, or the -o) and what is allowed. Nothing here imports Paddle,
so a bad config exits (code 2) before Paddle loads.

The result is an OmegaConf DictConfig backed by the schema: runners read typed attributes
(`cfg.Train.batch_size`), and an unknown attribute is an error rather than a silent None.
"""
import difflib
import os
import re
from typing import Any, get_args, get_origin

import yaml
from omegaconf import OmegaConf

from engine.config.schema import (
    MOVED_KEYS,
    PipelineConfig,
    allowed_text,
    default_of,
    leaf_fields,
    schema_for,
    section_keys,
    type_name,
)
from foundation.atomic_io import atomic_write_text
from foundation.errors import ConfigError
from foundation.runtime import PACKAGES_ROOT

CONFIG_DIR = os.path.join(PACKAGES_ROOT, "configs", "face_recognition")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads YAML 1.2 floats (1e-3, 5E+2) as numbers, as users mean them."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def nearest(word, choices, n=3):
    """The closest few of `choices` to `word`, for 'did you mean' messages."""
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if not close:
        # Fall back to keys sharing the section, which is usually what was meant.
        section = word.split(".")[0]
        close = [c for c in choices if c.split(".")[0] == section][:n]
    return close


def _did_you_mean(word, choices):
    close = nearest(str(word), [str(c) for c in choices])
    return f" Did you mean: {', '.join(close)}?" if close else ""


def pipeline_config_path(pipeline):
    """PaddleX's pipeline argument: a pipeline name ("face_recognition", the bundled pipeline.yaml)
    or the path of a pipeline YAML; ConfigError for anything else."""
    text = os.fspath(pipeline)
    if text == "face_recognition":
        return os.path.join(CONFIG_DIR, "pipeline.yaml")
    if text.lower().endswith((".yaml", ".yml")):
        if not os.path.isfile(text):
            raise ConfigError(f"pipeline config {text} does not exist")
        return text
    raise ConfigError(f"unknown pipeline '{text}': give 'face_recognition' or the path of a pipeline .yaml")


# --------------------------------------------------------------------------- reading
def parse_override(text):
    """'Key.sub=value' -> ('Key.sub', value typed the way the YAML file types it)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form Key.sub=value (e.g. -o Global.mode=train)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key (e.g. -o Global.mode=train)")
    if raw.strip() == "":
        return key, ""
    try:
        return key, yaml.load(raw, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return key, raw  # not valid YAML on its own (e.g. an unbalanced bracket): keep the text


def _key_lines(node, prefix=""):
    """{dotted key: 1-based line} for every mapping key of a composed YAML node."""
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key))
    return lines


def _refuse_aliases(path, text):
    """ConfigError at the first YAML alias (*name): a config needs none, and nested aliases expand
    exponentially ("billion laughs"). The event stream is read without building anything, so this
    takes time in proportion to the file, whatever it would expand to."""
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(f"{path}:{event.start_mark.line + 1}: YAML alias '*{event.anchor}' is not allowed in a "
                              "config (write the value out instead of referring to an anchor)")


def read_yaml(path):
    """(mapping, {dotted key: line}) of a config file; ConfigError when it cannot be used."""
    if not path:
        raise ConfigError("no config file given: pass -c configs/face_recognition/MobileFaceNet.yaml")
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        names = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml")) if os.path.isdir(CONFIG_DIR) else []
        hint = (" Available configs: " + ", ".join(os.path.join(CONFIG_DIR, n) for n in names)) if names else ""
        raise ConfigError(f"config file '{path}' {what}.{hint}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        _refuse_aliases(path, text)  # before anything expands them
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        lines = _key_lines(yaml.compose(text, Loader=_Loader))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{path}' is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{path}'{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (Global, Train, ...)")
    return data, lines


# --------------------------------------------------------------------------- checking one value
def _coerce(value, tp):
    """`value` as type `tp`, or raise ValueError saying why not. Strict: 16.5 is no int, 1 no bool."""
    if tp is Any:  # Predict.input: a string or a list of strings
        if isinstance(value, (list, tuple)):
            return [_coerce(v, str) for v in value]
        return _coerce(value, str)
    if tp is dict:  # Cluster.names / Cluster.move: a mapping, or the path of a file holding one
        if isinstance(value, dict):
            return {str(k): _coerce(v, Any) for k, v in value.items()}
        return _coerce(value, str)
    origin = get_origin(tp)
    if origin is list:
        (inner,) = get_args(tp)
        items = value if isinstance(value, (list, tuple)) else ([] if value in (None, "") else [value])
        return [_coerce(v, inner) for v in items]
    if origin is not None and type(None) in get_args(tp):  # Optional[X]
        if value is None:
            return None
        return _coerce(value, [a for a in get_args(tp) if a is not type(None)][0])
    if value is None:
        raise ValueError("null is not allowed")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError("not True or False")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError("not a whole number")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError("not a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a folder called 2024
        raise ValueError("not text")
    raise TypeError(f"unsupported schema type {tp}")


def _check_limits(value, meta):
    """'' when `value` is within the field's limits, else what is allowed."""
    if value is None:
        return ""
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        return "one of " + ", ".join(str(c) for c in choices)
    lo, hi, gt = meta.get("min"), meta.get("max"), meta.get("greater_than")
    if meta.get("per_core"):
        cores = os.cpu_count() or 1
        if isinstance(value, int) and not isinstance(value, bool) and value > meta["per_core"] * cores:
            return f"at most {meta['per_core'] * cores} ({meta['per_core']} per core on this machine's {cores} cores)"
    numbers = value if isinstance(value, list) else [value]
    for v in numbers:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if v != v:  # NaN is never within limits
            return "a number (not NaN)"
        if gt is not None and not v > gt:
            return f"greater than {gt:g}"
        if lo is not None and v < lo:
            return f"at least {lo:g}" if hi is None else f"from {lo:g} to {hi:g}"
        if hi is not None and v > hi:
            return f"at most {hi:g}" if lo is None else f"from {lo:g} to {hi:g}"
    return ""


def _checked(key, f, value, where):
    """`value` typed and within the limits of field `f`, or a one-line ConfigError."""
    try:
        typed = _coerce(value, f.type)
    except ValueError as e:
        allowed = allowed_text(f)
        detail = f" ({e})" if isinstance(value, (list, tuple)) else ""
        raise ConfigError(f"{where}: {key} must be {type_name(f.type)}" + (f" ({allowed})" if allowed else "")
                          + f", got {value!r}{detail}") from None
    problem = _check_limits(typed, f.metadata)
    if problem:
        choices = f.metadata.get("choices")
        hint = _did_you_mean(typed, choices) if choices and isinstance(typed, str) else ""
        raise ConfigError(f"{where}: {key} must be {problem}, got {typed!r}.{hint}".rstrip("."))
    return typed


# --------------------------------------------------------------------------- merging
def _flatten(data, prefix=""):
    """{dotted key: value} of a nested mapping (leaves only; sections recurse)."""
    out = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _unknown_key(key, where, known, schema):
    """The error for a key the schema does not have: 'renamed' for an old pipeline key."""
    if schema is PipelineConfig and key in MOVED_KEYS:
        return ConfigError(f"{where}: '{key}' is now '{MOVED_KEYS[key]}' (pipeline.yaml follows PaddleX's "
                           f"face_recognition layout); rename it")
    return ConfigError(f"{where}: unknown config key '{key}'.{_did_you_mean(key, known)}")


def load_config(path, overrides=()):
    """Read `path`, apply `overrides` ('Key.sub=value' strings), check every value; a DictConfig."""
    data, lines = read_yaml(path)
    schema = schema_for(data)
    leaves = dict(leaf_fields(schema))
    sections = set(section_keys(schema))
    known = list(leaves) + sorted(sections)

    values = {}  # dotted key -> (value, where it came from)
    for key, value in _flatten(data).items():
        where = f"config file '{path}' line {lines.get(key, '?')}"
        if key in sections:  # an empty section ('Export:' with nothing under it)
            if value is not None:
                raise ConfigError(f"{where}: '{key}' is a section; give its fields, not a value")
            continue
        if key not in leaves:
            raise _unknown_key(key, where, known, schema)
        values[key] = (value, where)
    for text in overrides:
        key, value = parse_override(text)
        where = f"-o {text}"
        if key in sections:
            if isinstance(value, dict):
                for sub, v in _flatten(value, key).items():
                    if sub not in leaves:
                        raise _unknown_key(sub, where, known, schema)
                    values[sub] = (v, where)
                continue
            raise ConfigError(f"config key '{key}' is a section; set one of its fields, e.g. '{key}.<field>=...'")
        if key not in leaves:
            raise _unknown_key(key, where, known, schema)
        values[key] = (value, where)

    cfg = OmegaConf.structured(schema)
    for key, f in leaves.items():
        value, where = values.get(key, (default_of(f), "default"))
        OmegaConf.update(cfg, key, _checked(key, f, value, where), merge=False)
    return cfg


def get(cfg, key, default=None):
    """cfg value at a dotted key, or `default` when the key is absent or null."""
    value = OmegaConf.select(cfg, key, default=None)
    return default if value is None else value


def save_config(cfg, path):
    """Write the full merged config (atomically) so a run can be reproduced."""
    atomic_write_text(path, OmegaConf.to_yaml(cfg))
