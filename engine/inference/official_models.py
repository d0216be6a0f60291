"""The official PaddleX models by name: downloaded once into the cache, checked, unpacked.

    official_model_dir("MobileFaceNet")   -> ~/.cache/facefeat/official_models/<key>/MobileFaceNet_infer
    official_weights_url("ResNet50_face") -> the trained weights (.pdparams) URL

The inference model is a tar of one folder (inference.json, inference.pdiparams, inference.yml),
as PaddleX publishes it (SPEC.md, "Official models"). The cache is keyed by the whole URL; the tar
is unpacked under a temporary name and renamed, after checking every member (regular files and
folders only, nothing outside the folder). Without network access the error names the URL and how
to pass a local folder instead.

FACEFEAT_OFFICIAL_MODELS_URL replaces the download root (a local mirror, or a loopback server
in the tests: the same code path as the real download).
"""
import os
import shutil
import tarfile

from engine.inference.folder import has_inference_model
from foundation.atomic_io import atomic_replace_dir, cached_download
from foundation.errors import UserError
from foundation.logger import get_logger
from foundation.progress import Progress
from foundation.runtime import cache_dir

OFFICIAL_ROOT = "https://paddle-model-ecology.bj.bcebos.com/paddlex"
ROOT_ENV = "FACEFEAT_OFFICIAL_MODELS_URL"
FEATURE_MODELS = ("MobileFaceNet", "ResNet50_face")


def _root():
    return (os.environ.get(ROOT_ENV) or OFFICIAL_ROOT).rstrip("/")


def official_inference_url(name):
    return f"{_root()}/official_inference_model/paddle3.0.0/{name}_infer.tar"


def official_weights_url(name):
    return f"{_root()}/official_pretrained_model/{name}_pretrained.pdparams"


def _check_members(tar, path):
    """The tar's members, refused unless each is a plain file or folder inside the archive."""
    members = tar.getmembers()
    for m in members:
        parts = m.name.replace("\\", "/").split("/")
        if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise UserError(f"{path}: refused to unpack member '{m.name}' (a link, device or a path outside the "
                            "archive); an official model archive holds only its folder and files")
    return members


def unpack_model_tar(tar_path, target):
    """Unpack an inference model tar into `target` (atomically) and return the folder holding the model."""
    def build(tmp):
        try:
            with tarfile.open(tar_path) as tar:
                tar.extractall(tmp, members=_check_members(tar, tar_path))  # noqa: S202 - members checked above
        except (tarfile.TarError, EOFError, OSError) as e:
            raise UserError(f"{tar_path} is not a readable tar archive ({e}); delete it to download it again") from None

    atomic_replace_dir(build, target)
    found = _model_folder(target)
    if found:
        return found
    shutil.rmtree(target, ignore_errors=True)
    raise UserError(f"{tar_path} holds no inference model (inference.json or inference.pdmodel with "
                    "inference.pdiparams); delete it to download it again")


def official_model_dir(name, cache=None, setting="model_dir"):
    """The local folder of an official inference model, downloading and unpacking it on first use.
    `setting` names where a user would give a local folder instead (for the offline message)."""
    if name not in FEATURE_MODELS:
        raise UserError(f"'{name}' is not an official face feature model; official models: {', '.join(FEATURE_MODELS)}")
    url = official_inference_url(name)
    cache = cache or cache_dir("official_models")
    log = get_logger()
    try:
        tar_path = cached_download(url, cache, timeout=60,
                                   progress=lambda total: Progress(total or None, desc=f"download {name}", unit="B"))
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"cannot download the official {name} model from {url}: {reason}. Without network access, "
                        f"use a model of your own (-o {setting}=output/best_model/inference after training), or "
                        f"download and unpack the official one elsewhere and pass its folder (-o {setting}=DIR, "
                        "create_model(model_dir=DIR))") from None
    target = os.path.join(os.path.dirname(tar_path), f"{name}_infer")
    found = _model_folder(target)
    if found:
        return found
    log.info(f"unpacking {os.path.basename(tar_path)} into {target}")
    return unpack_model_tar(tar_path, target)


def feature_model_dir(model_dir, model_name, setting):
    """The inference folder a mode runs: `model_dir` when set (it must exist), else the official
    model of `model_name`, downloaded once (PaddleX's behaviour when no model_dir is given)."""
    if model_dir:
        if not os.path.isdir(str(model_dir)):
            what = "is a file, not a folder" if os.path.exists(str(model_dir)) else "does not exist"
            raise UserError(f"{setting} {model_dir} {what}: train (it exports best_model/inference), export a "
                            f"checkpoint (-o Global.mode=export), or set {setting}=null to use the official "
                            f"{model_name} model")
        return str(model_dir)
    get_logger().info(f"{setting} is not set: using the official {model_name} model")
    return official_model_dir(model_name, setting=setting)


def _model_folder(root):
    """The first folder under `root` (itself included) that holds an inference model, or None."""
    for folder, _, _ in os.walk(root):
        if has_inference_model(folder):
            return folder
    return None
