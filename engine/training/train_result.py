"""train_result.json: what a training run produced, in the PaddleX layout (paths relative to the
output folder), rewritten after every epoch; `done_flag` is true only after a clean end."""
import os

from engine.inference.folder import inference_files
from engine.training.checkpoints import KEEP_EPOCH_DIRS, checkpoint_files
from foundation.atomic_io import atomic_write_json


def relpath(path, root):
    return os.path.relpath(path, root).replace(os.sep, "/") if path else ""


def model_entry(root, folder, score):
    """One checkpoint folder's entry: its score and the paths of its files."""
    files = checkpoint_files(os.path.join(root, folder), folder)
    inf = inference_files(os.path.join(root, folder, "inference"))
    return {
        "score": score,
        "pdparams": relpath(files["pdparams"], root),
        "pdema": "",
        "pdopt": relpath(files["pdopt"], root),
        "pdstates": relpath(files["pdstates"], root),
        "inference_config": relpath(inf.get("config"), root),
        "pdmodel": relpath(inf.get("model"), root),
        "pdiparams": relpath(inf.get("params"), root),
    }


def write_train_result(root, done, *, model_name, dataset_dir, num_classes, epochs, records, best_score, best_epoch,
                       vdl_file=""):
    """Write <root>/train_result.json atomically. `records`: one dict per finished epoch
    (epoch, loss, score, epoch_dir); models.last_1 is the newest epoch_N/ still on disk."""
    models = {}
    kept = [r for r in records if r.get("epoch_dir") and os.path.isdir(os.path.join(root, f"epoch_{r['epoch']}"))]
    for i, r in enumerate(reversed(kept[-KEEP_EPOCH_DIRS:]), start=1):
        models[f"last_{i}"] = model_entry(root, f"epoch_{r['epoch']}", r["score"])
    if os.path.isdir(os.path.join(root, "best_model")):
        models["best"] = model_entry(root, "best_model", best_score)
    result = {
        "model_name": model_name,
        "label_dict": "",  # face ids have no names; the identities are train/label.txt's ids
        "train_log": "train.log",
        "visualdl_log": relpath(vdl_file, root) if vdl_file else "",
        "config": "config.yaml",
        "models": models,
        "done_flag": bool(done),
        "dataset_dir": dataset_dir,
        "num_classes": num_classes,
        "epochs": epochs,
        "epochs_done": records[-1]["epoch"] if records else 0,
        "best_epoch": best_epoch,
        "best_metric": {"name": "val verification acc (10-fold, flip)", "value": best_score},
        "history": records,
    }
    atomic_write_json(os.path.join(root, "train_result.json"), result)
