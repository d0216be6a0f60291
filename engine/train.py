"""Global.mode=train: train a face feature model with an ArcFace head, as the PaddleX module does.

Outputs under Global.output (SPEC.md "Training outputs"):
    config.yaml            the full merged config of the run
    train.log              every log line (appended across resumes)
    vdl/                   VisualDL scalars: train/loss, train/lr, train/ips, eval/acc
    train_result.json      model_name, paths (relative to the output dir), models{last_1..last_5, best},
                           done_flag (true only after a clean end)
    latest/                latest.pdparams, .pdopt, .pdstates (+ inference/ at the end)
    best_model/            the checkpoint with the best val accuracy (+ inference/)
    epoch_N/               every Train.save_interval epochs, with inference/; the newest 5 are kept
Every checkpoint folder is built under a temporary name and swapped in whole, so a kill at any
moment leaves the previous checkpoint complete.

Several devices (Global.device=gpu:0,1,... or Train.cpu_processes > 1 on CPU) re-launch this
mode through `python -m paddle.distributed.launch`; rank 0 alone writes logs and checkpoints.
"""
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

import numpy as np

from engine.config import REPO_ROOT, get, save_config
from foundation.errors import ConfigError, DatasetError, UserError
from foundation.atomic_io import atomic_replace_dir, atomic_write_json, download_file
from foundation.logger import get_logger, log_to_file
from foundation.progress import Progress, format_seconds
from foundation.runtime import cache_dir

KEEP_EPOCH_DIRS = 5  # matches train_result.json's last_1..last_5
LAUNCHED_ENV = "FACEFEAT_LAUNCHED"  # set by the parent of a multi-process run
WEIGHTS_CACHE = cache_dir("weights")
# What a training run writes; only these count as "an older run" and only these are removed
# by Train.overwrite_output (other files in the folder, e.g. check_dataset results, stay).
RUN_ARTIFACTS = ("train_result.json", "train.log", "config.yaml", "latest", "best_model", "vdl", "dist_logs")
EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------- small helpers
def world_info():
    """(rank, world size) of this process; (0, 1) outside a distributed launch."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")), int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def requested_processes(cfg):
    """How many training processes Global.device / Train.cpu_processes ask for."""
    from foundation.runtime import parse_device

    kind, ids = parse_device(get(cfg, "Global.device", "cpu"))
    if kind == "gpu":
        return kind, ids, len(ids)
    n = int(get(cfg, "Train.cpu_processes", 1))
    if n < 1:
        raise ConfigError(f"Train.cpu_processes must be at least 1, got {n}")
    return kind, ids, n


def relpath(path, root):
    return os.path.relpath(path, root).replace(os.sep, "/") if path else ""


def previous_run_items(output_dir):
    if not os.path.isdir(output_dir):
        return []
    names = sorted(os.listdir(output_dir))
    return [n for n in names if n in ("train_result.json", "latest", "best_model") or EPOCH_DIR.match(n)]


def prepare_output_dir(cfg, output_dir, resuming):
    """Refuse to mix a new run into a folder holding an older one, unless asked to."""
    found = previous_run_items(output_dir)
    if not found or resuming:
        return
    if not bool(get(cfg, "Train.overwrite_output", False)):
        shown = ", ".join(n + ("/" if os.path.isdir(os.path.join(output_dir, n)) else "") for n in found[:6])
        raise UserError(
            f"output folder '{output_dir}' holds an earlier training run ({shown}). Continue it with "
            f"-o Train.resume_path={os.path.join(output_dir, 'latest', 'latest.pdparams')}, write elsewhere with "
            "-o Global.output=DIR, or replace it with -o Train.overwrite_output=True")
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name in RUN_ARTIFACTS or EPOCH_DIR.match(name):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    get_logger().info(f"Train.overwrite_output=True: removed the earlier run's files from {output_dir}")


def checkpoint_files(folder, name):
    base = os.path.join(folder, name)
    return {"pdparams": base + ".pdparams", "pdopt": base + ".pdopt", "pdstates": base + ".pdstates"}


def find_checkpoint(resume_path):
    """The three files of the checkpoint that `resume_path` names (its .pdparams, or its folder).

    A kill during the two renames of a folder swap can leave the complete old folder under
    its temporary '.<name>.*.tmp.old' name; it is picked up from there.
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
        parent, dname = os.path.split(folder)
        leftovers = sorted(d for d in (os.listdir(parent) if os.path.isdir(parent) else [])
                           if d.startswith(f".{dname}.") and d.endswith(".tmp.old"))
        for d in leftovers:
            if os.path.isfile(os.path.join(parent, d, fname)):
                get_logger().warning(f"{folder} is missing (killed during a checkpoint swap); "
                                     f"using the complete previous copy {os.path.join(parent, d)}")
                folder = os.path.join(parent, d)
                break
        else:
            raise UserError(f"Train.resume_path {resume_path} does not exist: give a checkpoint written by "
                            "training, e.g. output/latest/latest.pdparams")
    files = checkpoint_files(folder, name)
    for kind, f in files.items():
        if not os.path.isfile(f):
            raise UserError(f"cannot resume from {resume_path}: {os.path.basename(f)} is missing next to it "
                            f"(a checkpoint needs .pdparams, .pdopt and .pdstates)")
    return files


# --------------------------------------------------------------------------- pretrained weights
def fetch_weights(path_or_url, cache_dir=WEIGHTS_CACHE):
    """A local .pdparams path, or the cached download of an http(s) URL (fetched once)."""
    text = str(path_or_url)
    if not re.match(r"^https?://", text, re.IGNORECASE):
        if not os.path.isfile(text):
            raise UserError(f"Train.pretrain_weight_path {text} does not exist: give a .pdparams file or an "
                            "http(s) URL, or leave it empty to train from scratch")
        return text
    name = os.path.basename(urllib.parse.urlparse(text).path) or "weights.pdparams"
    target = os.path.join(cache_dir, name)
    if os.path.isfile(target):
        get_logger().info(f"pretrained weights: using the cached download {target}")
        return target
    get_logger().info(f"downloading pretrained weights {text} -> {target}")

    try:
        download_file(text, target, timeout=60)
    except OSError as e:  # URLError, HTTPError, timeouts and socket errors are all OSErrors
        reason = getattr(e, "reason", None) or e
        raise UserError(f"cannot download Train.pretrain_weight_path {text}: {reason}. Without network access, "
                        f"download it elsewhere and pass the local .pdparams path") from None
    return target


def load_pretrained(model, path_or_url):
    """Load weights by name with shape checks: a full model checkpoint (backbone.* and head.*;
    the head is skipped when its class count differs) or a bare backbone. Returns the report."""
    from models import describe_report, load_backbone_weights, load_weights_by_name, read_state_dict

    log = get_logger()
    path = fetch_weights(path_or_url)
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


# --------------------------------------------------------------------------- the trainer
class Trainer:
    def __init__(self, cfg, speed_notes=()):
        self.cfg = cfg
        self.speed_notes = list(speed_notes)
        self.log = get_logger()
        self.rank, self.world_size = world_info()
        self.is_main = self.rank == 0
        self.output_dir = os.path.abspath(str(get(cfg, "Global.output", "output")))
        self.model_name = str(get(cfg, "Global.model") or get(cfg, "Arch.backbone"))
        self.epochs = int(get(cfg, "Train.epochs_iters", 25))
        self.log_interval = max(1, int(get(cfg, "Train.log_interval", 10)))
        self.eval_interval = max(1, int(get(cfg, "Train.eval_interval", 1)))
        self.save_interval = max(1, int(get(cfg, "Train.save_interval", 1)))
        self.seed = int(get(cfg, "Global.seed", 42))
        self.resume_path = get(cfg, "Train.resume_path")
        self.vdl = None
        self.data = None
        self.records = []  # one dict per finished epoch: epoch, loss, score, saved
        self.best_score = None
        self.best_epoch = None
        self.global_step = 0
        self.start_epoch = 1
        self.last_saved_epoch = None

    # ----------------------------------------------------------------- set-up
    def setup(self):
        import paddle

        from engine.builders import build_model, build_optimizer, build_train_loader
        from foundation.runtime import setup_paddle

        cfg, log = self.cfg, self.log
        if self.epochs < 1:
            raise ConfigError(f"Train.epochs_iters must be at least 1, got {self.epochs}")
        resume_files = find_checkpoint(self.resume_path) if self.resume_path else None
        if self.is_main:
            if not os.environ.get(LAUNCHED_ENV):  # the launching parent already checked
                prepare_output_dir(cfg, self.output_dir, resuming=bool(resume_files))
            os.makedirs(self.output_dir, exist_ok=True)
            for stale in os.listdir(self.output_dir):  # left by a run killed while saving
                if stale.startswith(".staging."):
                    shutil.rmtree(os.path.join(self.output_dir, stale), ignore_errors=True)
            log_to_file(os.path.join(self.output_dir, "train.log"))
            save_config(cfg, os.path.join(self.output_dir, "config.yaml"))
            for note in self.speed_notes:
                log.info(f"CPU speed: {note}")
        self.device = setup_paddle(get(cfg, "Global.device", "cpu"), get(cfg, "Global.num_threads", 0), get(cfg, "Global.seed", 42))
        if self.world_size > 1:
            import paddle.distributed as dist

            dist.init_parallel_env()
        self.amp = self.device.startswith("gpu") and str(get(cfg, "Train.amp", "O1") or "").upper() == "O1"

        from datasets.demo import resolve_dataset_dir
        from datasets.label_files import load_pair_list

        self.dataset_dir = resolve_dataset_dir(get(cfg, "Global.dataset_dir"))
        self.data = build_train_loader(cfg, self.dataset_dir, rank=self.rank, world_size=self.world_size)
        self.val_pairs = load_pair_list(self.dataset_dir) if self.is_main else None
        self.num_classes = self.data.num_classes
        self.model = build_model(cfg, self.num_classes)
        self.embedding_size = int(self.model.embedding_size)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.model, self.data.steps_per_epoch)
        self.scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15) if self.amp else None

        pretrained = get(cfg, "Train.pretrain_weight_path")
        if resume_files:
            if pretrained:
                log.info(f"Train.pretrain_weight_path {pretrained} is not used: resuming restores all weights")
            self.resume(resume_files)
        elif pretrained:
            load_pretrained(self.model, pretrained)
        self.net = paddle.DataParallel(self.model) if self.world_size > 1 else self.model

        if self.is_main:
            from visualdl import LogWriter

            self.vdl = LogWriter(logdir=os.path.join(self.output_dir, "vdl"))
            d = self.data
            log.info(f"train {self.model_name}: {d.num_samples} images, {self.num_classes} identities, "
                     f"embedding {self.embedding_size}, batch {d.batch_size}"
                     + (f" x {d.world_size} processes" if d.world_size > 1 else "")
                     + f", {d.steps_per_epoch} steps/epoch, epochs {self.start_epoch}..{self.epochs}, "
                     f"device {self.device}{' (AMP O1)' if self.amp else ''}, "
                     f"{len(self.val_pairs)} val pairs, output {self.output_dir}")

    def resume(self, files):
        import paddle

        from models import load_weights_by_name

        states = paddle.load(files["pdstates"], return_numpy=True)
        want = {"model_name": self.model_name, "num_classes": self.num_classes,
                "embedding_size": self.embedding_size}
        differ = [f"{k}: checkpoint {states.get(k)!r}, this run {v!r}" for k, v in want.items() if states.get(k) != v]
        if differ:
            raise UserError(f"cannot resume from {files['pdparams']}: the run differs from the checkpoint ("
                            + "; ".join(differ) + "). Resume with the same config and data, or start a new run "
                            "(use Train.pretrain_weight_path to start from its weights)")
        report = load_weights_by_name(self.model, paddle.load(files["pdparams"]), source=files["pdparams"])
        if report["missing"] or report["skipped"]:
            raise UserError(f"cannot resume from {files['pdparams']}: it does not fit the model "
                            f"(missing {report['missing'][:3]}, mismatched {report['skipped'][:3]})")
        self.optimizer.set_state_dict(optimizer_state_for(self.model, paddle.load(files["pdopt"])))
        self.scheduler.set_state_dict(states["lr_scheduler"])
        if self.scaler is not None and states.get("grad_scaler"):
            self.scaler.load_state_dict(states["grad_scaler"])
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
                self.log.warning(f"could not restore the Paddle RNG state ({e}); continuing")
        if states.get("steps_per_epoch") not in (None, self.data.steps_per_epoch):
            self.log.warning(f"steps per epoch changed from {states['steps_per_epoch']} to "
                             f"{self.data.steps_per_epoch} (batch size, data or process count differ): "
                             "the schedule continues from the saved iteration count")
        self.start_epoch = int(states["epoch"]) + 1
        self.global_step = int(states["global_step"])
        self.best_score = states.get("best_metric")
        self.best_epoch = states.get("best_epoch")
        self.records = list(states.get("records") or [])
        self.last_saved_epoch = int(states["epoch"])
        if self.is_main:
            self.carry_best_model(files)
        self.log.info(f"resumed from {files['pdparams']}: epoch {states['epoch']} done, global step "
                      f"{self.global_step}, lr {self.scheduler.get_lr():.3g}, best acc "
                      f"{self.best_score if self.best_score is not None else 'n/a'}; continuing at epoch {self.start_epoch}")

    def carry_best_model(self, files):
        """Resuming into another output folder: bring the run's best_model/ along, so the best
        checkpoint still exists here; without one, the next evaluation starts a new best."""
        here = os.path.join(self.output_dir, "best_model")
        if os.path.isdir(here):
            return
        there = os.path.join(os.path.dirname(os.path.dirname(files["pdparams"])), "best_model")
        if os.path.isfile(os.path.join(there, "best_model.pdparams")):
            atomic_replace_dir(lambda tmp: shutil.copytree(there, tmp, dirs_exist_ok=True), here)
            self.log.info(f"copied the run's best checkpoint {there} to {here}")
        else:
            self.best_score = self.best_epoch = None

    # ----------------------------------------------------------------- one step
    def train_step(self, images, labels):
        """Forward, loss, check, backward, update. Returns the loss as a float."""
        import paddle

        x = paddle.to_tensor(images)
        y = paddle.to_tensor(labels)
        if self.amp:
            with paddle.amp.auto_cast(level="O1"):
                logits = self.net(x, y)
            loss = compute_loss(logits.astype("float32"), y)
        else:
            loss = compute_loss(self.net(x, y), y)
        value = self.mean_over_ranks(loss)
        if not math.isfinite(value):
            return value  # the caller stops before this step touches the weights
        if self.scaler is not None:
            scaled = self.scaler.scale(loss)
            scaled.backward()
            self.scaler.minimize(self.optimizer, scaled)
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.scheduler.step()
        self.global_step += 1
        return value

    def mean_over_ranks(self, loss):
        """The loss averaged over the data-parallel ranks, so every rank logs the same number and
        they all stop together on a NaN (a rank stopping alone would leave the others waiting)."""
        if self.world_size == 1:
            return float(loss)
        import paddle.distributed as dist

        total = loss.detach().reshape([1]).astype("float32")
        dist.all_reduce(total)
        return float(total.numpy()[0]) / self.world_size

    def diverged(self, value, epoch, step):
        where = f"epoch {epoch}, step {step}/{self.data.steps_per_epoch} (global step {self.global_step + 1})"
        kept = (f"the last good checkpoint is {os.path.join(self.output_dir, 'latest')} (epoch {self.last_saved_epoch})"
                if self.last_saved_epoch else "no checkpoint was saved yet")
        return TrainingDiverged(
            f"loss is {value} at {where}: training stopped; {kept}. Lower Train.learning_rate "
            f"(now {get(self.cfg, 'Train.learning_rate')}) or check the data, then resume or restart")

    # ----------------------------------------------------------------- the loop
    def train(self):
        d = self.data
        total_steps = self.epochs * d.steps_per_epoch
        images_per_step = d.batch_size * d.world_size
        run_start = time.perf_counter()
        steps_this_run = 0
        for epoch in range(self.start_epoch, self.epochs + 1):
            d.loader.set_epoch(epoch)
            self.model.train()
            losses = []
            bar = Progress(d.steps_per_epoch * images_per_step, desc=f"epoch {epoch}/{self.epochs}", unit="img") \
                if self.is_main else None
            window_start, window_images = time.perf_counter(), 0
            step = 0
            try:
                for step, (images, labels) in enumerate(d.loader, start=1):
                    lr = self.scheduler.get_lr()
                    value = self.train_step(images, labels)
                    if not math.isfinite(value):
                        raise self.diverged(value, epoch, step)
                    losses.append(value)
                    steps_this_run += 1
                    window_images += images_per_step
                    if bar is not None:
                        bar.update(images_per_step, postfix=f"loss {value:.4f} lr {lr:.3g}")
                    if self.is_main and (step % self.log_interval == 0 or step == d.steps_per_epoch):
                        now = time.perf_counter()
                        ips = window_images / max(now - window_start, 1e-9)
                        per_step = (now - run_start) / steps_this_run
                        eta = per_step * (total_steps - self.global_step)
                        self.log.info(f"epoch {epoch}/{self.epochs} step {step}/{d.steps_per_epoch} "
                                      f"loss {value:.5f} lr {lr:.6g} ips {ips:.2f} img/s eta {format_seconds(eta)}")
                        self.vdl.add_scalar("train/loss", value, self.global_step)
                        self.vdl.add_scalar("train/lr", lr, self.global_step)
                        self.vdl.add_scalar("train/ips", ips, self.global_step)
                        window_start, window_images = now, 0
            except Exception as e:
                from datasets.face_dataset import ImageReadError, LoaderWorkerError

                if isinstance(e, ImageReadError):
                    raise DatasetError(f"training stopped at epoch {epoch}, step {step + 1}: {e}. The image is listed "
                                       f"in {os.path.join(self.dataset_dir, 'train', 'label.txt')}: replace the file "
                                       "or remove its line, then resume from latest/") from None
                if isinstance(e, LoaderWorkerError):
                    raise UserError(f"training stopped at epoch {epoch}, step {step + 1}: {e}") from None
                raise
            finally:
                if bar is not None:
                    bar.close()
            self.end_of_epoch(epoch, float(np.mean(losses)) if losses else float("nan"))
        if self.is_main:
            self.log.info(f"training done in {format_seconds(time.perf_counter() - run_start)}")

    def evaluate(self, epoch):
        """10-fold verification accuracy (with flip) of the val pairs, dygraph backbone in eval mode."""
        import paddle

        from engine.evaluate import evaluate_pairs

        backbone = self.model.backbone
        backbone.eval()
        try:
            def extract(nchw):
                with paddle.no_grad():
                    return backbone(paddle.to_tensor(nchw)).numpy()

            m = evaluate_pairs(self.val_pairs, extract, batch_size=int(get(self.cfg, "Evaluate.batch_size", 64)),
                               flip=bool(get(self.cfg, "Evaluate.flip", True)),
                               folds=int(get(self.cfg, "Evaluate.folds", 10)), num_workers=2)
        finally:
            backbone.train()
        self.log.info(f"epoch {epoch} eval: val verification acc {m['acc']:.4f} +- {m.get('acc_std', 0.0):.4f} "
                      f"({m.get('folds', '')}-fold, flip {'on' if get(self.cfg, 'Evaluate.flip', True) else 'off'}, "
                      f"{m.get('num_pairs', len(self.val_pairs))} pairs), threshold "
                      f"{m.get('best_threshold', float('nan')):.2f}")
        self.vdl.add_scalar("eval/acc", m["acc"], self.global_step)
        return float(m["acc"])

    def end_of_epoch(self, epoch, mean_loss):
        if self.world_size > 1:
            self.check_ranks_agree(epoch)
        if not self.is_main:
            return
        self.check_weights_finite(epoch)
        self.log.info(f"epoch {epoch}/{self.epochs} done: mean loss {mean_loss:.5f}")
        last = epoch == self.epochs
        score = self.evaluate(epoch) if (epoch % self.eval_interval == 0 or last) else None
        improved = score is not None and (self.best_score is None or score > self.best_score)
        if improved:
            self.best_score, self.best_epoch = score, epoch
        save_epoch = epoch % self.save_interval == 0 or last
        self.records.append({"epoch": epoch, "loss": mean_loss, "score": score, "epoch_dir": save_epoch})
        self.save(epoch, score, improved, save_epoch)
        self.write_result(done=False)

    def check_weights_finite(self, epoch):
        import paddle

        for name, p in self.model.named_parameters():
            if not bool(paddle.isfinite(p).all()):
                raise TrainingDiverged(
                    f"parameter {name} holds NaN/inf after epoch {epoch}: training stopped without saving it; the "
                    f"last good checkpoint is {os.path.join(self.output_dir, 'latest')} (epoch {self.last_saved_epoch}). "
                    "Lower Train.learning_rate and resume or restart")

    def check_ranks_agree(self, epoch):
        """Data-parallel replicas must hold the same trainable weights: compare every rank with rank 0.

        BatchNorm running statistics are left out: each rank accumulates them from its own
        batches (no SyncBN, as in PaddleClas); rank 0's are the ones saved.
        """
        import paddle
        import paddle.distributed as dist

        flat = paddle.concat([p.detach().flatten().astype("float32") for p in self.model.parameters()
                              if not p.stop_gradient])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        diff = (flat - ref).abs().max().reshape([1])
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        self.rank_max_diff = float(diff.numpy()[0])
        if self.is_main:
            self.log.info(f"epoch {epoch}: trainable parameters across {self.world_size} ranks: max abs difference "
                          f"{self.rank_max_diff:.3g}")

    # ----------------------------------------------------------------- checkpoints
    def state_payload(self, epoch, score):
        import paddle

        return {
            "epoch": epoch,
            "global_step": self.global_step,
            "metric": score,
            "best_metric": self.best_score,
            "best_epoch": self.best_epoch,
            "lr_scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {"seed": self.seed, "python": random.getstate(), "numpy": numpy_rng_state(),
                    "paddle": paddle.get_rng_state()},
            "model_name": self.model_name,
            "backbone": str(get(self.cfg, "Arch.backbone", self.model_name)),
            "num_classes": self.num_classes,
            "embedding_size": self.embedding_size,
            "steps_per_epoch": self.data.steps_per_epoch,
            "batch_size": self.data.batch_size,
            "world_size": self.world_size,
            "records": list(self.records),
        }

    def save(self, epoch, score, improved, save_epoch):
        """Write latest/ (always), epoch_N/ and best_model/ as due; each folder swapped in whole."""
        import paddle

        params = self.model.state_dict()
        opt_state = optimizer_state_by_layer(self.model, self.optimizer)
        states = self.state_payload(epoch, score)
        export_now = save_epoch  # epoch_N folders carry their inference model; latest/best get one at the end

        with tempfile.TemporaryDirectory(prefix=".staging.", dir=self.output_dir) as staging:
            inference_dir = None
            if export_now:
                inference_dir = os.path.join(staging, "inference")
                self.export(inference_dir)

            def build(name):
                def fill(tmp):
                    files = checkpoint_files(tmp, name)
                    paddle.save(params, files["pdparams"])
                    paddle.save(opt_state, files["pdopt"])
                    paddle.save(states, files["pdstates"])
                    if inference_dir:
                        shutil.copytree(inference_dir, os.path.join(tmp, "inference"))
                return fill

            targets = [("latest", "latest")]
            if save_epoch:
                targets.append((f"epoch_{epoch}", f"epoch_{epoch}"))
            if improved:
                targets.append(("best_model", "best_model"))
            for folder, name in targets:
                try:
                    atomic_replace_dir(build(name), os.path.join(self.output_dir, folder))
                except OSError as e:
                    kept = (f"the previous {folder}/ (epoch {self.last_saved_epoch}) is left as it was"
                            if self.last_saved_epoch else "nothing was saved")
                    raise UserError(f"cannot write the epoch {epoch} checkpoint {folder}/ in {self.output_dir}: "
                                    f"{e}; {kept}. Free disk space or fix permissions, then resume") from e
        self.last_saved_epoch = epoch
        self.log.info(f"saved {', '.join(f + '/' for f, _ in targets)} (epoch {epoch}"
                      + (f", acc {score:.4f}" if score is not None else "") + ")")
        self.prune_epoch_dirs()

    def prune_epoch_dirs(self):
        epochs = sorted(int(m.group(1)) for m in map(EPOCH_DIR.match, os.listdir(self.output_dir)) if m)
        for e in epochs[:-KEEP_EPOCH_DIRS]:
            shutil.rmtree(os.path.join(self.output_dir, f"epoch_{e}"), ignore_errors=True)

    def export(self, save_dir):
        from engine.export import export_inference

        export_inference(self.model.backbone, save_dir, self.model_name,
                         image_size=int(get(self.cfg, "Arch.image_size", 112)))

    def export_final(self):
        """best_model/inference and latest/inference from their own weights, when not there yet."""
        import paddle

        from models import build_backbone, load_backbone_weights

        for folder in ("latest", "best_model"):
            ckpt = os.path.join(self.output_dir, folder, f"{folder}.pdparams")
            target = os.path.join(self.output_dir, folder, "inference")
            if not os.path.isfile(ckpt) or inference_files(target):
                continue
            backbone = build_backbone(get(self.cfg, "Arch.backbone", self.model_name),
                                      embedding_size=get(self.cfg, "Arch.embedding_size"))
            load_backbone_weights(backbone, paddle.load(ckpt), strict=True)
            from engine.export import export_inference

            export_inference(backbone, target, self.model_name, image_size=int(get(self.cfg, "Arch.image_size", 112)))
            self.log.info(f"exported {folder}/inference")

    # ----------------------------------------------------------------- train_result.json
    def model_entry(self, folder, score):
        root = self.output_dir
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

    def write_result(self, done):
        root = self.output_dir
        models = {}
        kept = [r for r in self.records if r.get("epoch_dir") and os.path.isdir(os.path.join(root, f"epoch_{r['epoch']}"))]
        for i, r in enumerate(reversed(kept[-KEEP_EPOCH_DIRS:]), start=1):  # last_1 is the newest
            models[f"last_{i}"] = self.model_entry(f"epoch_{r['epoch']}", r["score"])
        if os.path.isdir(os.path.join(root, "best_model")):
            models["best"] = self.model_entry("best_model", self.best_score)
        vdl_file = getattr(self.vdl, "file_name", "") if self.vdl is not None else ""
        result = {
            "model_name": self.model_name,
            "label_dict": "",  # face ids have no names; the identities are train/label.txt's ids
            "train_log": "train.log",
            "visualdl_log": relpath(vdl_file, root) if vdl_file else "",
            "config": "config.yaml",
            "models": models,
            "done_flag": bool(done),
            "dataset_dir": self.dataset_dir,
            "num_classes": self.num_classes,
            "epochs": self.epochs,
            "epochs_done": self.records[-1]["epoch"] if self.records else 0,
            "best_epoch": self.best_epoch,
            "best_metric": {"name": "val verification acc (10-fold, flip)", "value": self.best_score},
            "history": self.records,
        }
        atomic_write_json(os.path.join(root, "train_result.json"), result)

    # ----------------------------------------------------------------- entry
    def run(self):
        try:
            self.setup()
            if self.start_epoch > self.epochs:
                self.log.info(f"all {self.epochs} epochs are done in the checkpoint; finishing the outputs")
            self.train()
            if self.is_main:
                self.export_final()
                self.write_result(done=True)
                best = f"{self.best_score:.4f} (epoch {self.best_epoch})" if self.best_score is not None else "n/a"
                self.log.info(f"best val acc {best}; outputs in {self.output_dir}")
                print(f"Train done: {self.output_dir} (best val acc {best})")
            return 0
        finally:
            if self.data is not None:
                self.data.loader.close()
            if self.vdl is not None:
                self.vdl.close()


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


def compute_loss(logits, labels):
    """Cross-entropy of the margin logits (module-level so tests can inject a NaN)."""
    import paddle.nn.functional as F

    return F.cross_entropy(logits, labels.reshape([-1, 1]))


def inference_files(folder):
    """{"model", "params", "config"} of an exported folder, or {} when it holds none."""
    if not os.path.isdir(folder):
        return {}
    model = next((os.path.join(folder, n) for n in ("inference.json", "inference.pdmodel")
                  if os.path.isfile(os.path.join(folder, n))), None)
    if not model:
        return {}
    return {"model": model, "params": os.path.join(folder, "inference.pdiparams"),
            "config": os.path.join(folder, "inference.yml")}


# --------------------------------------------------------------------------- multi-process launch
def launch_command(cfg, config_path, kind, ids, nprocs, log_dir):
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", log_dir]
    if kind == "gpu":
        cmd += ["--devices", ",".join(str(i) for i in ids)]
    else:
        cmd += ["--nproc_per_node", str(nprocs)]
    cmd += [os.path.join(REPO_ROOT, "main.py"), "-c", config_path]
    return cmd


def launch_distributed(cfg, kind, ids, nprocs):
    """Re-run this mode in `nprocs` processes through paddle.distributed.launch; returns its exit code."""
    log = get_logger()
    output_dir = os.path.abspath(str(get(cfg, "Global.output", "output")))
    resume_files = find_checkpoint(get(cfg, "Train.resume_path")) if get(cfg, "Train.resume_path") else None
    prepare_output_dir(cfg, output_dir, resuming=bool(resume_files))
    log_dir = os.path.join(output_dir, "dist_logs")
    os.makedirs(log_dir, exist_ok=True)
    config_path = os.path.join(log_dir, "launch_config.yaml")
    # the children read the fully merged config (with every -o applied) from this file
    save_config(cfg, config_path)
    cmd = launch_command(cfg, config_path, kind, ids, nprocs, log_dir)
    env = dict(os.environ, **{LAUNCHED_ENV: "1"})
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log.info(f"launching {nprocs} training processes ({'GPUs ' + ','.join(map(str, ids)) if kind == 'gpu' else 'CPU, gloo'}); "
             f"per-rank logs in {log_dir}: {' '.join(cmd)}")
    code = subprocess.call(cmd, env=env, cwd=os.getcwd())
    if code != 0:
        log.error(f"distributed training failed with exit code {code}; see {log_dir}/workerlog.* "
                  f"and {os.path.join(output_dir, 'train.log')}")
    return code


def run(cfg):
    kind, ids, nprocs = requested_processes(cfg)
    speed_notes = []
    if kind == "cpu":
        # First, before any output exists: the MKL shim may restart this process once.
        from engine.cpu_speed import setup_cpu_speed
        from foundation.runtime import num_threads_from, set_threads

        set_threads(num_threads_from(get(cfg, "Global.num_threads", 0)))  # before the fused kernels load
        speed_notes = list(setup_cpu_speed(enabled=bool(get(cfg, "Global.cpu_speedup", True))).values())
    _, world = world_info()
    if nprocs > 1 and world == 1:
        return launch_distributed(cfg, kind, ids, nprocs)
    return Trainer(cfg, speed_notes).run()
