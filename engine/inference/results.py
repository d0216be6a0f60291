"""Result objects of the face feature predictor: a feature per image, a similarity per pair.

Saving into a folder names each file after its input (`<name>_res.json`); inputs with the same
stem get distinct names (engine.inference.inputs.unique_names), so none overwrites another.
"""
import json
import os

import numpy as np

from foundation.atomic_io import atomic_write_json


class FeatureResult(dict):
    """One image's result: {"input_path": str or None (numpy input), "feature": np.ndarray [D]},
    plus "face" ({box, det_score, landmarks} of the embedded face) when predict detected it."""

    def __init__(self, input_path, feature, name, face=None):
        super().__init__(input_path=input_path, feature=feature)
        if face is not None:
            self["face"] = face
        self.name = name  # file stem for save_to_json: the image's stem, or array_<i>

    @property
    def input_path(self):
        return self["input_path"]

    @property
    def feature(self):
        return self["feature"]

    def to_dict(self):
        """JSON-ready: the feature as a list of floats."""
        out = {"input_path": self["input_path"], "feature": [float(v) for v in self["feature"]]}
        if "face" in self:
            out["face"] = self["face"]
        return out

    @property
    def json(self):
        return {"res": self.to_dict()}

    def __str__(self):
        f = np.asarray(self["feature"])
        head = ", ".join(f"{v:.4f}" for v in f[:4])
        tail = ", ".join(f"{v:.4f}" for v in f[-2:])
        return f"{{'res': {{'input_path': {self['input_path']!r}, 'feature': [{head}, ..., {tail}] ({f.size}-d)}}}}"

    def print(self, json_format=False, indent=4):
        """json_format=False: one short line (the feature abbreviated); True: the full JSON."""
        print(json.dumps(self.json, indent=indent, ensure_ascii=False) if json_format else str(self), flush=True)

    def save_to_json(self, save_path):
        """A folder (existing, or a path without .json) gets <name>_res.json, name = the image's stem
        (images found in a folder: their path inside it, sub/x.jpg -> sub_x; numpy inputs: array_<i>);
        a .json path is written as is."""
        save_path = str(save_path)
        if save_path.lower().endswith(".json") and not os.path.isdir(save_path):
            path = save_path
        else:
            path = os.path.join(save_path, f"{self.name}_res.json")
        atomic_write_json(path, self.to_dict())
        return path


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
