"""Training checkpoints: the output folder's run files, saving (atomic folder swaps), pruning,
finding a checkpoint after a kill, resuming with optimizer and RNG state, pretrained weights.

A checkpoint folder (latest/, best_model/, epoch_N/) holds <name>.pdparams (model state),
<name>.pdopt (optimizer state keyed by layer path) and <name>.pdstates (epoch, step, metrics,
schedule, RNG state, model name, class count), plus inference/ where exported.
"""
import os
import random
import re
import shutil
import tempfile

import numpy as np
import paddle

from engine.config.output_folder import foreign_entries, read_manifest
from foundation.atomic_io import atomic_replace_dir, cached_download
from foundation.errors import UserError
from foundation.logger import get_logger
from foundation.progress import Progress
from foundation.runtime import cache_dir
from foundation.safe_pickle import load_file
from models import describe_report, load_backbone_weights, load_weights_by_name, read_pickled_dict, read_state_dict

KEEP_EPOCH_DIRS = 5  # matches train_result.json's last_1..last_5
WEIGHTS_CACHE = cache_dir("weights")
# What a training run writes; only these count as "an older run" and only these are removed
# by Train.overwrite_output (other files in the folder, e.g. check_dataset results, stay).
RUN_ARTIFACTS = ("train_result.json", "train.log", "config.yaml", "latest", "best_model", "vdl", "dist_logs")
EPOCH_DIR = re.compile(r"^epoch_(\d+)$")
STAGING_PREFIX = ".staging."  # temporary folders of a save in progress
# A .pdstates file also holds Paddle's RNG state objects; their pickled form is the generator's
# seed and offset, restored by the C++ class itself, so this one name is admitted for these files.
PDSTATES_GLOBALS = {("paddle.base.libpaddle", "GeneratorState"): paddle.base.libpaddle.GeneratorState}


def previous_run_items(output_dir):
    if not os.path.isdir(output_dir):
        return []
    names = sorted(os.listdir(output_dir))
    return [n for n in names if n in ("train_result.json", "latest", "best_model") or EPOCH_DIR.match(n)]


def prepare_output_dir(cfg, output_dir, resuming):
    """Refuse a folder holding a user's own files, and one holding an older run unless resuming
    or asked to replace it (then only what runs recorded as theirs is removed)."""
    foreign = foreign_entries(output_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"output folder '{output_dir}' holds files no run wrote ({shown}): training writes "
                        "config.yaml, train.log, latest/, best_model/ ... there and would mix with them. "
                        "Use an empty or new folder: -o Global.output=DIR")
    found = previous_run_items(output_dir)
    if not found or resuming:
        return
    if not cfg.Train.overwrite_output:
        shown = ", ".join(n + ("/" if os.path.isdir(os.path.join(output_dir, n)) else "") for n in found[:6])
        raise UserError(
            f"output folder '{output_dir}' holds an earlier training run ({shown}). Continue it with "
            f"-o Train.resume_path={os.path.join(output_dir, 'latest', 'latest.pdparams')}, write elsewhere with "
            "-o Global.output=DIR, or replace it with -o Train.overwrite_output=True")
    ours = read_manifest(output_dir)
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if (name in RUN_ARTIFACTS or EPOCH_DIR.match(name)) and (name in ours or not ours):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    get_logger().info(f"Train.overwrite_output=True: removed the earlier run's files from {output_dir}")


def checkpoint_files(folder, name):
    base = os.path.join(folder, name)
    return {"pdparams": base + ".pdparams", "pdopt": base + ".pdopt", "pdstates": base + ".pdstates"}


def _recorded_epoch(folder, name):
    """The epoch a complete checkpoint folder records, or None when it is incomplete or unreadable."""
    files = checkpoint_files(folder, name)
    if not all(os.path.isfile(f) for f in files.values()):
        return None
    try:
        states = load_file(files["pdstates"], "checkpoint state", extra_globals=PDSTATES_GLOBALS)
        return int(states["epoch"])
    except (UserError, KeyError, TypeError, ValueError):
        return None


def recover_interrupted_swaps(output_dir):
    """Put back checkpoint folders that a kill between the two renames of a folder swap left
    under temporary names, and remove every other leftover of a killed save.

    A swap renames latest/ to '.latest.<x>.tmp.old', then the new '.latest.<x>.tmp' to latest/.
    When latest/ is missing, the complete candidate with the highest recorded epoch wins (never
    name order); incomplete or unreadable candidates are deleted.
    """
    if not os.path.isdir(output_dir):
        return
    leftovers = {}
    for entry in os.listdir(output_dir):
        m = re.match(r"^\.(.+?)\.[^.]+\.tmp(\.old)?$", entry)
        if m and os.path.isdir(os.path.join(output_dir, entry)):
            leftovers.setdefault(m.group(1), []).append(entry)
    for name, entries in leftovers.items():
        target = os.path.join(output_dir, name)
        if not os.path.exists(target):
            epochs = {e: _recorded_epoch(os.path.join(output_dir, e), name) for e in entries}
            complete = [e for e in entries if epochs[e] is not None]
            if complete:
                best = max(complete, key=lambda e: (epochs[e], not e.endswith(".old")))
                os.rename(os.path.join(output_dir, best), target)
                entries = [e for e in entries if e != best]
                get_logger().warning(f"{target} was missing (a run was killed while saving it): restored the complete "
                                     f"copy of epoch {epochs[best]} from {best}")
        for e in entries:
            shutil.rmtree(os.path.join(output_dir, e), ignore_errors=True)


def find_checkpoint(resume_path):
    """The three files of the checkpoint that `resume_path` names (its .pdparams, or its folder).

    A kill during the two renames of a folder swap can leave the checkpoint under a temporary
    name: recover_interrupted_swaps puts the newest complete copy back first.
    """
    path = os.path.abspath(str(resume_path))
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(".pdparams"))
        if len(found) != 1:
            raise UserError(f"Train.resume_path {resume_path} is a folder with {len(found)} .pdparams files: "
                            "give the checkpoint file, e.g. output/latest/latest.pdparams")
        path = os.path.join(path, found[0])
    if not path.endswith(".pdparams"):
        path = path + ".pdparams" if os.path.isfile(path + ".pdparams") else path
    folder, fname = os.path.split(path)
    name = fname[:-len(".pdparams")] if fname.endswith(".pdparams") else fname
    if not os.path.isfile(path):
        recover_interrupted_swaps(os.path.dirname(folder))
    if not os.path.isfile(path):
        raise UserError(f"Train.resume_path {resume_path} does not exist: give a checkpoint written by "
                        "training, e.g. output/latest/latest.pdparams")
    files = checkpoint_files(folder, name)
    for kind, f in files.items():
        if not os.path.isfile(f):
            raise UserError(f"cannot resume from {resume_path}: {os.path.basename(f)} is missing next to it "
                            f"(a checkpoint needs .pdparams, .pdopt and .pdstates)")
    return files


# --------------------------------------------------------------------------- pretrained weights
def fetch_weights(path_or_url, cache_dir=WEIGHTS_CACHE, sha256=None):
    """A local .pdparams path, or the cached download of an http(s) URL (fetched once; the cache is
    keyed by the whole URL; with `sha256`, Train.pretrain_weight_sha256, the file must match it)."""
    text = str(path_or_url)
    if not re.match(r"^https?://", text, re.IGNORECASE):
        if not os.path.isfile(text):
            raise UserError(f"Train.pretrain_weight_path {text} does not exist: give a .pdparams file or an "
                            "http(s) URL, or leave it empty to train from scratch")
        return text
    get_logger().info(f"pretrained weights: {text} (cached in {cache_dir})")
    try:
        return cached_download(text, cache_dir, sha256=sha256, timeout=60,
                               progress=lambda total: Progress(total or None, desc="download", unit="B"))
    except ValueError as e:
        if "sha256" in str(e):
            raise UserError(f"Train.pretrain_weight_path: {e}; check Train.pretrain_weight_sha256 or the URL") from None
        raise UserError(f"Train.pretrain_weight_path {text} is not a valid URL: {e}") from None
    except OSError as e:  # URLError, HTTPError, timeouts and socket errors are all OSErrors
        reason = getattr(e, "reason", None) or e
        raise UserError(f"cannot download Train.pretrain_weight_path {text}: {reason}. Without network access, "
                        f"download it elsewhere and pass the local .pdparams path") from None


def load_pretrained(model, path_or_url, sha256=None):
    """Load weights by name with shape checks: a full model checkpoint (backbone.* and head.*;
    the head is skipped when its class count differs) or a bare backbone. Returns the report."""
    log = get_logger()
    path = fetch_weights(path_or_url, sha256=sha256)
    state = read_state_dict(path)
    if any(k.startswith("backbone.") for k in state):
        report = load_weights_by_name(model, state, source=path)
        if not any(n.startswith("backbone.") for n in report["loaded"]):
            raise UserError(f"{path} has no backbone tensor that fits {getattr(model.backbone, 'model_name', '')}: "
                            "is it a checkpoint of another model (Global.model / Arch.embedding_size)?")
    else:
        report = load_backbone_weights(model.backbone, state)
        report["source"] = path
    for line in describe_report(report):
        log.info(f"pretrained weights: {line}")
    return report


def _rename_optimizer_keys(state, mapping):
    """Optimizer state keys are '<parameter name>_<accumulator>_0'; swap the parameter part."""
    names = sorted(mapping, key=len, reverse=True)  # longest first: 'a.w_1' before 'a.w'
    out = {}
    for key, value in state.items():
        if key == "master_weights" and isinstance(value, dict):
            out[key] = {mapping.get(k, k): v for k, v in value.items()}
            continue
        new = key
        for name in names:
            if key == name or key.startswith(name + "_"):
                new = mapping[name] + key[len(name):]
                break
        out[new] = value
    return out


def optimizer_state_by_layer(model, optimizer):
    """optimizer.state_dict() keyed by layer paths ('backbone.conv1.conv.weight_moment1_0').

    Paddle keys the state by generated parameter names ('conv2d_17.w_0'), which depend on how
    many layers the process created before this model; layer paths do not, so a checkpoint
    resumes in any process.
    """
    return _rename_optimizer_keys(optimizer.state_dict(), {p.name: n for n, p in model.named_parameters()})


def optimizer_state_for(model, state):
    """The inverse of optimizer_state_by_layer for this process's parameter names."""
    return _rename_optimizer_keys(state, {n: p.name for n, p in model.named_parameters()})


def numpy_rng_state():
    """np.random's state with plain-Python values (paddle.load turns uint32 arrays into errors)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


# --------------------------------------------------------------------------- saving
def save_checkpoints(output_dir, folders, params, opt_state, states, export_fn=None, epoch=None,
                     last_saved_epoch=None):
    """Write one checkpoint into each of `folders` (names under output_dir: latest, epoch_N,
    best_model), each built under a temporary name and swapped in whole. With `export_fn(dir)`,
    every folder also gets inference/ (exported once, copied)."""
    written = []

    def failed(folder, e):
        if written:
            kept = f"{', '.join(f + '/' for f in written)} of epoch {epoch} {'were' if len(written) > 1 else 'was'} saved"
        elif last_saved_epoch:
            kept = f"the previous {folder}/ (epoch {last_saved_epoch}) is left as it was"
        else:
            kept = "no checkpoint was saved yet"
        return UserError(f"cannot write the epoch {epoch} checkpoint {folder}/ in {output_dir}: "
                         f"{getattr(e, 'strerror', None) or e}; {kept}. Free disk space or fix permissions, then resume")

    with tempfile.TemporaryDirectory(prefix=STAGING_PREFIX, dir=output_dir) as staging:
        inference_dir = None
        if export_fn is not None:
            inference_dir = os.path.join(staging, "inference")
            try:
                export_fn(inference_dir)
            except OSError as e:
                raise failed(folders[0], e) from None

        def build(name):
            def fill(tmp):
                files = checkpoint_files(tmp, name)
                paddle.save(params, files["pdparams"])
                paddle.save(opt_state, files["pdopt"])
                paddle.save(states, files["pdstates"])
                if inference_dir:
                    shutil.copytree(inference_dir, os.path.join(tmp, "inference"))
            return fill

        for folder in folders:
            try:
                atomic_replace_dir(build(folder), os.path.join(output_dir, folder))
            except OSError as e:
                raise failed(folder, e) from None
            written.append(folder)


def prune_epoch_dirs(output_dir, keep=KEEP_EPOCH_DIRS):
    """Delete all but the newest `keep` epoch_N/ folders (by epoch number, not name order)."""
    epochs = sorted(int(m.group(1)) for m in map(EPOCH_DIR.match, os.listdir(output_dir)) if m)
    for e in epochs[:-keep] if keep else epochs:
        shutil.rmtree(os.path.join(output_dir, f"epoch_{e}"), ignore_errors=True)


def remove_stale_staging(output_dir):
    """Temporary folders and files left by a run killed while saving (a checkpoint folder missing
    its final name is restored first, see recover_interrupted_swaps)."""
    recover_interrupted_swaps(output_dir)
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(STAGING_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
        elif re.match(r"^\..+\.tmp$", name) and os.path.isfile(path):  # an atomic file write cut short
            os.remove(path)


# --------------------------------------------------------------------------- resuming
def restore_checkpoint(files, model, optimizer, scheduler, scaler, want, steps_per_epoch):
    """Load model, optimizer, schedule, grad-scaler and RNG state from a checkpoint's files; return
    its .pdstates dict. `want` ({"model_name", "num_classes", "embedding_size"}) must match it."""
    log = get_logger()
    states = load_file(files["pdstates"], "checkpoint state", extra_globals=PDSTATES_GLOBALS,
                       fix="resume from another checkpoint (epoch_N/ or best_model/) or start a new run")
    if not isinstance(states, dict) or "epoch" not in states:
        raise UserError(f"{files['pdstates']} is not a training checkpoint's state (no epoch recorded): "
                        "resume from a checkpoint written by this project's training")
    differ = [f"{k}: checkpoint {states.get(k)!r}, this run {v!r}" for k, v in want.items() if states.get(k) != v]
    if differ:
        raise UserError(f"cannot resume from {files['pdparams']}: the run differs from the checkpoint ("
                        + "; ".join(differ) + "). Resume with the same config and data, or start a new run "
                        "(use Train.pretrain_weight_path to start from its weights)")
    report = load_weights_by_name(model, read_pickled_dict(files["pdparams"]), source=files["pdparams"])
    if report["missing"] or report["skipped"]:
        raise UserError(f"cannot resume from {files['pdparams']}: it does not fit the model "
                        f"(missing {report['missing'][:3]}, mismatched {report['skipped'][:3]})")
    opt_state = read_pickled_dict(files["pdopt"], "optimizer state")
    optimizer.set_state_dict(optimizer_state_for(model, {k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v
                                                         for k, v in opt_state.items()}))
    scheduler.set_state_dict(states["lr_scheduler"])
    if scaler is not None and states.get("grad_scaler"):
        scaler.load_state_dict(states["grad_scaler"])
    rng = states.get("rng") or {}
    if "python" in rng:
        random.setstate(rng["python"])
    if "numpy" in rng:
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "paddle" in rng:
        try:
            paddle.set_rng_state(rng["paddle"])
        except Exception as e:  # another device type: the seeded streams above still hold
            log.warning(f"could not restore the Paddle RNG state ({e}); continuing")
    if states.get("steps_per_epoch") not in (None, steps_per_epoch):
        log.warning(f"steps per epoch changed from {states['steps_per_epoch']} to {steps_per_epoch} (batch size, "
                    "data or process count differ): the schedule continues from the saved iteration count")
    return states


def carry_best_model(output_dir, files):
    """Resuming into another output folder: bring the run's best_model/ along, so the best
    checkpoint still exists here. Returns False when there is none to bring."""
    here = os.path.join(output_dir, "best_model")
    if os.path.isdir(here):
        return True
    there = os.path.join(os.path.dirname(os.path.dirname(files["pdparams"])), "best_model")
    if not os.path.isfile(os.path.join(there, "best_model.pdparams")):
        return False
    atomic_replace_dir(lambda tmp: shutil.copytree(there, tmp, dirs_exist_ok=True), here)
    get_logger().info(f"copied the run's best checkpoint {there} to {here}")
    return True
