"""Face feature models: backbones, the ArcFace head, the training wrapper and weight loading.

    backbone = build_backbone("MobileFaceNet")          # or "ResNet50_face"
    model = FaceRecModel(backbone, ArcMargin(backbone.embedding_size, num_classes))
    logits = model(images, labels)                       # training
    features = model(images)                             # [N, D] raw features

Checkpoint keys are `backbone.*` and `head.*`, as in PaddleClas' RecModel.
"""
import os

import numpy as np
import paddle
import paddle.nn as nn

from foundation.errors import ConfigError, UserError
from foundation.safe_pickle import load_file
from models.arcmargin import ArcMargin
from models.mobilefacenet import MobileFaceNet
from models.resnet_face import ResNet50Face

BACKBONES = {
    "MobileFaceNet": MobileFaceNet,
    "ResNet50_face": ResNet50Face,
}

__all__ = [
    "ArcMargin", "BACKBONES", "FaceRecModel", "MobileFaceNet", "ResNet50Face", "build_backbone",
    "count_parameters", "count_multiply_adds", "load_backbone_weights", "load_weights_by_name", "read_pickled_dict",
    "read_state_dict",
]


def build_backbone(name, embedding_size=None, recompute=False):
    """A backbone by its config name; `embedding_size` overrides the model's default (128 / 512);
    `recompute` recomputes the activations of its stages in the backward pass (less memory)."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'. Valid names: {', '.join(BACKBONES)}")
    cls = BACKBONES[name]
    kwargs = {"recompute": bool(recompute)}
    if embedding_size is not None:
        kwargs["embedding_size"] = int(embedding_size)
    model = cls(**kwargs)
    model.model_name = name
    return model


class FaceRecModel(nn.Layer):
    """Backbone + margin head. forward(x) -> features; forward(x, label) -> margin logits."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def embedding_size(self):
        return self.backbone.embedding_size

    def forward(self, x, label=None, return_target=False):
        """Features; with `label`, the head's margin logits; with return_target too, (logits,
        target) where target is what the loss compares with (the label's position among the
        classes the head scored: Partial FC samples them)."""
        features = self.backbone(x)
        if label is None:
            return features
        if return_target:
            return self.head.margin_logits(features, label)
        return self.head(features, label)


def count_parameters(layer, trainable_only=False):
    """Number of scalar parameters (BatchNorm running statistics are buffers, not counted)."""
    return int(sum(int(np.prod(p.shape)) for p in layer.parameters() if not (trainable_only and p.stop_gradient)))


def count_multiply_adds(layer, image_size=112):
    """Multiply-adds of one forward pass on a single image (convolutions and linear layers only,
    the usual convention for FLOPs tables; BN, activations and additions are left out)."""
    total = [0]

    def conv_hook(module, inputs, output):
        w = module.weight.shape  # [out, in/groups, kh, kw]
        total[0] += int(np.prod(output.shape[1:])) * int(w[1] * w[2] * w[3])

    def linear_hook(module, inputs, output):
        w = module.weight.shape  # [in, out]
        total[0] += int(np.prod(output.shape[:-1])) * int(w[0] * w[1])

    handles = []
    for sub in layer.sublayers(include_self=True):
        if isinstance(sub, nn.Conv2D):
            handles.append(sub.register_forward_post_hook(conv_hook))
        elif isinstance(sub, nn.Linear):
            handles.append(sub.register_forward_post_hook(linear_hook))
    was_training = layer.training
    layer.eval()
    try:
        with paddle.no_grad():
            layer(paddle.zeros([1, 3, image_size, image_size], dtype="float32"))
    finally:
        for h in handles:
            h.remove()
        if was_training:
            layer.train()
    return total[0]


# Keys paddle.save adds beside the tensors: a map of structured to parameter names, and the
# slices of arrays above 4 GB (saved with pickle protocol < 4).
_STRUCTURE_KEY = "StructuredToParameterName@@"
_BIG_PARAM_KEY = "UnpackBigParamInfor@@"  # sic: Paddle's spelling


def read_pickled_dict(path, what="weights file"):
    """A dict saved by paddle.save (.pdparams, .pdopt), read by the restricted unpickler
    (foundation.safe_pickle: numpy arrays and plain data only, nothing that runs code), with
    Paddle's bookkeeping keys undone. UserError naming the file when it cannot be used."""
    if not os.path.isfile(str(path)) and os.path.isdir(str(path)):
        raise UserError(f"{what} not found: {path} (it is a directory: give the .pdparams file inside it)")
    state = load_file(path, what, fix="expected a file saved by paddle.save; copy it again or re-create it")
    if not isinstance(state, dict):
        raise UserError(f"{what} {path} holds a {type(state).__name__}, not a state dict of named tensors")
    for key, info in list(state.pop(_BIG_PARAM_KEY, {}).items()):
        state[key] = np.concatenate([state.pop(part) for part in info["slices"]]).reshape(info["OriginShape"])
    state.pop(_STRUCTURE_KEY, None)
    return state


def read_state_dict(path_or_state_dict):
    """A state dict from a .pdparams file (or a dict passed through); UserError when unreadable."""
    if isinstance(path_or_state_dict, dict):
        return path_or_state_dict
    return read_pickled_dict(path_or_state_dict)


def _as_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray(value)


def load_weights_by_name(layer, state_dict, strip_prefix=None, source="state dict"):
    """Copy every tensor of `state_dict` into `layer` whose name and shape match.

    `strip_prefix` (e.g. "backbone.") is removed from checkpoint keys first; keys without it are
    then ignored. Returns {"loaded": [...], "skipped": [(name, reason)], "missing": [...],
    "unexpected": [...]} so callers can log exactly what happened; nothing is raised for
    mismatches (see load_backbone_weights(strict=True) for that).
    """
    if strip_prefix:
        picked = {k[len(strip_prefix):]: v for k, v in state_dict.items() if k.startswith(strip_prefix)}
        ignored = sorted(k for k in state_dict if not k.startswith(strip_prefix))
    else:
        picked, ignored = dict(state_dict), []
    own = layer.state_dict()
    report = {"loaded": [], "skipped": [], "missing": [], "unexpected": sorted(k for k in picked if k not in own),
              "ignored": ignored, "source": source}
    for name, target in own.items():
        if name not in picked:
            report["missing"].append(name)
            continue
        value = _as_numpy(picked[name])
        if tuple(value.shape) != tuple(target.shape):
            report["skipped"].append((name, f"shape {list(value.shape)} in {source}, model has {list(target.shape)}"))
            continue
        # cast through paddle so an fp16 (AMP) checkpoint fills fp32 tensors and vice versa
        target.set_value(paddle.to_tensor(value).astype(target.dtype))
        report["loaded"].append(name)
    return report


def describe_report(report, limit=5):
    """One line per category for logs: counts plus the first few names."""
    def names(items):
        shown = [i if isinstance(i, str) else f"{i[0]} ({i[1]})" for i in items[:limit]]
        more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
        return ", ".join(shown) + more

    lines = [f"loaded {len(report['loaded'])} tensors from {report.get('source', 'state dict')}"]
    for key in ("skipped", "missing", "unexpected"):
        if report[key]:
            lines.append(f"{key} {len(report[key])}: {names(report[key])}")
    return lines


def load_backbone_weights(backbone, path_or_state_dict, strict=False):
    """Load backbone weights from a full FaceRecModel checkpoint (keys `backbone.*`; the head is
    ignored) or from a bare backbone state dict. Matching is by name with shape checks.

    Returns the report of load_weights_by_name. With strict=True a checkpoint that leaves any
    backbone tensor missing or mismatched raises UserError saying what differs; in any mode a
    checkpoint sharing no tensor with the backbone raises UserError (it is for another model).
    """
    source = path_or_state_dict if isinstance(path_or_state_dict, str) else "state dict"
    state = read_state_dict(path_or_state_dict)
    prefix = "backbone." if any(k.startswith("backbone.") for k in state) else None
    report = load_weights_by_name(backbone, state, strip_prefix=prefix, source=str(source))
    model_name = getattr(backbone, "model_name", type(backbone).__name__)
    if not report["loaded"]:
        sample = ", ".join(sorted(state)[:3])
        raise UserError(f"{source} has no tensor that fits {model_name} (its keys look like: {sample}); "
                        "is it a checkpoint of another model?")
    if strict and (report["missing"] or report["skipped"]):
        details = describe_report(report)[1:]
        raise UserError(f"{source} does not fit {model_name}: " + "; ".join(details)
                        + ". Was it trained with another Global.model / Arch.embedding_size?")
    return report
