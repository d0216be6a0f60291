"""Result objects, with the interface of PaddleX's (paddlex/inference/common/result): `json`,
`print(json_format=False, indent=4, ensure_ascii=False)`, `save_to_json(save_path)`.

A result saved into a folder is named after its input's stem (`<stem>_res.json`; the stems of one
run are made distinct by engine.inference.inputs), and the file holds the inner dict (`json["res"]`),
as PaddleX writes it. Here: the face feature predictor's FeatureResult, and Similarity.
"""
import json
import os

import numpy as np

from foundation.atomic_io import atomic_write_json


class PaddleXResult(dict):
    """A result dict with PaddleX's methods; a subclass gives `to_dict()` (JSON-ready) and `__str__`."""

    def __init__(self, data, name):
        super().__init__(data)
        self.name = name  # the stem its files take: the input's stem, or array_<i> for a numpy input

    def to_dict(self):
        return dict(self)

    @property
    def json(self):
        """{"res": the result as JSON-ready values}."""
        return {"res": self.to_dict()}

    def print(self, json_format=False, indent=4, ensure_ascii=False, format_json=None):
        """json_format=False: one short line; True: the JSON of `json`. `format_json` is the name
        PaddleX's pipeline tutorial gives the same switch; either is taken."""
        json_format = json_format if format_json is None else format_json
        text = json.dumps(self.json, indent=indent, ensure_ascii=ensure_ascii) if json_format else str(self)
        print(text, flush=True)

    def save_to_json(self, save_path, indent=4, ensure_ascii=False):
        """A path ending in .json is written as is; any other is a folder that gets <name>_res.json.
        Written atomically; returns the file's path."""
        save_path = os.fspath(save_path)
        if save_path.lower().endswith(".json") and not os.path.isdir(save_path):
            path = save_path
        else:
            path = os.path.join(save_path, f"{self.name}_res.json")
        atomic_write_json(path, self.to_dict(), indent=indent, ensure_ascii=ensure_ascii)
        return path


class FeatureResult(PaddleXResult):
    """One image's face feature, PaddleX's fields: {"input_path": str or None (numpy input),
    "page_index": None (pages are for PDFs), "feature": np.ndarray [D], L2-normalised}, plus "face"
    ({box, det_score, landmarks} of the embedded face) when the predictor detected it."""

    def __init__(self, input_path, feature, name, face=None):
        super().__init__({"input_path": input_path, "page_index": None, "feature": feature}, name)
        if face is not None:
            self["face"] = face

    @property
    def input_path(self):
        return self["input_path"]

    @property
    def feature(self):
        return self["feature"]

    def to_dict(self):
        """JSON-ready: the feature as a list of floats."""
        out = dict(self)
        out["feature"] = [float(v) for v in self["feature"]]
        return out

    def __str__(self):
        f = np.asarray(self["feature"])
        head = ", ".join(f"{v:.4f}" for v in f[:4])
        tail = ", ".join(f"{v:.4f}" for v in f[-2:])
        return f"{{'res': {{'input_path': {self['input_path']!r}, 'feature': [{head}, ..., {tail}] ({f.size}-d)}}}}"


class Similarity(float):
    """A cosine similarity in [-1, 1]; with a threshold, `is_same` says whether it reaches it."""

    def __new__(cls, value, threshold=None):
        obj = super().__new__(cls, value)
        obj.threshold = threshold
        obj.is_same = None if threshold is None else bool(value >= threshold)
        return obj

    def __repr__(self):
        if self.threshold is None:
            return f"Similarity({float(self):.4f})"
        return f"Similarity({float(self):.4f}, threshold={self.threshold}, is_same={self.is_same})"
