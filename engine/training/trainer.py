"""The trainer of Global.mode=train (engine/runners/train.py): one training run from set-up to the
run's outputs. Checkpoint files, the result file and the multi-process launch live beside it in
checkpoints.py, train_result.py and distributed.py.
"""
import math
import os
import random
import time

import numpy as np
import paddle
import paddle.distributed as dist
import paddle.nn.functional as F
from visualdl import LogWriter

from datasets.demo import resolve_dataset_dir
from datasets.face_dataset import ImageReadError, LoaderWorkerError
from datasets.recordio import RecordIOError
from engine.config.loader import save_config
from engine.config.output_folder import OutputLock, record_outputs
from engine.evaluation.verification import evaluate_pairs, score_bin, validation_source
from engine.inference.folder import export_inference, inference_files, verification_record
from engine.inference.official_models import official_weights_url
from engine.training.builders import build_model, build_optimizer, build_train_loader
from engine.training.checkpoints import (
    RUN_ARTIFACTS,
    carry_best_model,
    find_checkpoint,
    load_pretrained,
    numpy_rng_state,
    optimizer_state_by_layer,
    prepare_output_dir,
    prune_epoch_dirs,
    remove_stale_staging,
    restore_checkpoint,
    save_checkpoints,
)
from engine.training.cpu_speed import release_free_heap, setup_cpu_speed
from engine.training.distributed import LAUNCHED_ENV, world_info
from engine.training.train_result import write_train_result
from foundation.errors import DatasetError, UserError
from foundation.logger import get_logger, log_to_file
from foundation.progress import Progress, format_seconds
from foundation.runtime import num_threads_from, setup_paddle
from models import build_backbone, load_backbone_weights


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run: set-up (builders, resume or pretrained weights), the epoch loop
    (train_one_epoch, validate, save) and the run's outputs. Checkpoint files, the result file and
    the multi-process launch live in engine/training/checkpoints.py, train_result.py and distributed.py."""

    def __init__(self, cfg, speed_notes=()):
        self.cfg = cfg
        self.speed_notes = list(speed_notes)
        self.log = get_logger()
        self.rank, self.world_size = world_info()
        self.is_main = self.rank == 0
        self.output_dir = os.path.abspath(cfg.Global.output)
        self.model_name = cfg.Global.model
        self.epochs = cfg.Train.epochs_iters  # >= 1, like the intervals below: checked at load
        self.log_interval = cfg.Train.log_interval
        self.eval_interval = cfg.Train.eval_interval
        self.save_interval = cfg.Train.save_interval
        self.seed = cfg.Global.seed
        self.resume_path = cfg.Train.resume_path or None
        self.vdl = None
        self.data = None
        self.records = []  # one dict per finished epoch: epoch, loss, score, saved
        self.best_score = None
        self.best_epoch = None
        self.global_step = 0
        self.start_epoch = 1
        self.last_saved_epoch = None
        self.lock = None
        self.epoch_verification = None  # this epoch's validation, for its exported inference.yml

    # ----------------------------------------------------------------- set-up
    def setup(self):
        cfg, log = self.cfg, self.log
        resume_files = find_checkpoint(self.resume_path) if self.resume_path else None
        if self.is_main:
            if not os.environ.get(LAUNCHED_ENV):  # the launching parent already checked and holds the lock
                prepare_output_dir(cfg, self.output_dir, resuming=bool(resume_files))
                os.makedirs(self.output_dir, exist_ok=True)
                self.lock = OutputLock(self.output_dir, "training").acquire()
            os.makedirs(self.output_dir, exist_ok=True)
            record_outputs(self.output_dir, RUN_ARTIFACTS)  # epoch_N/ are recorded as they are saved
            remove_stale_staging(self.output_dir)
            log_to_file(os.path.join(self.output_dir, "train.log"))
            save_config(cfg, os.path.join(self.output_dir, "config.yaml"))
            for note in self.speed_notes:
                log.info(f"CPU speed: {note}")
        self.device = setup_paddle(cfg.Global.device, cfg.Global.num_threads, cfg.Global.seed)
        if self.world_size > 1:
            dist.init_parallel_env()
        self.amp = self.device.startswith("gpu") and cfg.Train.amp == "O1"

        self.dataset_dir = resolve_dataset_dir(cfg.Global.dataset_dir)
        self.data = build_train_loader(cfg, self.dataset_dir, rank=self.rank, world_size=self.world_size)
        self.val_pairs, self.val_bin = validation_source(self.dataset_dir) if self.is_main else (None, None)
        self.num_classes = self.data.num_classes
        self.model = build_model(cfg, self.num_classes)
        self.embedding_size = int(self.model.embedding_size)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.model, self.data.steps_per_epoch)
        self.scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15) if self.amp else None

        pretrained = cfg.Train.pretrain_weight_path or None
        if pretrained == "official":  # PaddleX's default: the official trained weights of Global.model
            pretrained = official_weights_url(self.model_name)
        if resume_files:
            if pretrained:
                log.info(f"Train.pretrain_weight_path {pretrained} is not used: resuming restores all weights")
            self.resume(resume_files)
        elif pretrained:
            load_pretrained(self.model, pretrained, sha256=cfg.Train.pretrain_weight_sha256)
        self.net = paddle.DataParallel(self.model) if self.world_size > 1 else self.model

        if self.is_main:
            self.vdl = LogWriter(logdir=os.path.join(self.output_dir, "vdl"))
            d = self.data
            log.info(f"train {self.model_name}: {d.num_samples} images, {self.num_classes} identities, "
                     f"embedding {self.embedding_size}, batch {d.batch_size}"
                     + (f" x {d.world_size} processes" if d.world_size > 1 else "")
                     + f", {d.steps_per_epoch} steps/epoch, epochs {self.start_epoch}..{self.epochs}, "
                     f"device {self.device}{' (AMP O1)' if self.amp else ''}, "
                     + (f"{len(self.val_pairs)} val pairs" if self.val_bin is None else f"val pairs of {self.val_bin}")
                     + f", output {self.output_dir}")

    def resume(self, files):
        want = {"model_name": self.model_name, "num_classes": self.num_classes, "embedding_size": self.embedding_size}
        states = restore_checkpoint(files, self.model, self.optimizer, self.scheduler, self.scaler, want,
                                    self.data.steps_per_epoch)
        self.start_epoch = int(states["epoch"]) + 1
        self.global_step = int(states["global_step"])
        self.best_score = states.get("best_metric")
        self.best_epoch = states.get("best_epoch")
        self.records = list(states.get("records") or [])
        self.last_saved_epoch = int(states["epoch"])
        if self.is_main and not carry_best_model(self.output_dir, files):
            self.best_score = self.best_epoch = None  # no best checkpoint to carry: the next evaluation starts one
        self.log.info(f"resumed from {files['pdparams']}: epoch {states['epoch']} done, global step "
                      f"{self.global_step}, lr {self.scheduler.get_lr():.3g}, best acc "
                      f"{self.best_score if self.best_score is not None else 'n/a'}; continuing at epoch {self.start_epoch}")

    # ----------------------------------------------------------------- one step
    def train_step(self, images, labels):
        """Forward, loss, check, backward, update. Returns the loss as a float."""
        x = paddle.to_tensor(images)
        y = paddle.to_tensor(labels)
        if self.amp:
            with paddle.amp.auto_cast(level="O1"):
                logits, target = self.net(x, y, return_target=True)
            loss = compute_loss(logits.astype("float32"), target)
        else:
            logits, target = self.net(x, y, return_target=True)
            loss = compute_loss(logits, target)
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

        total = loss.detach().reshape([1]).astype("float32")
        dist.all_reduce(total)
        return float(total.numpy()[0]) / self.world_size

    def diverged(self, value, epoch, step):
        where = f"epoch {epoch}, step {step}/{self.data.steps_per_epoch} (global step {self.global_step + 1})"
        kept = (f"the last good checkpoint is {os.path.join(self.output_dir, 'latest')} (epoch {self.last_saved_epoch})"
                if self.last_saved_epoch else "no checkpoint was saved yet")
        return TrainingDiverged(
            f"loss is {value} at {where}: training stopped; {kept}. Lower Train.learning_rate "
            f"(now {self.cfg.Train.learning_rate}) or check the data, then resume or restart")

    # ----------------------------------------------------------------- the loop
    def train(self):
        """The epochs, top to bottom: train one, then validate (when due), save and record it."""
        self.run_start = time.perf_counter()
        self.steps_this_run = 0
        for epoch in range(self.start_epoch, self.epochs + 1):
            mean_loss = self.train_one_epoch(epoch)
            self.end_of_epoch(epoch, mean_loss)
        if self.is_main:
            self.log.info(f"training done in {format_seconds(time.perf_counter() - self.run_start)}")

    def train_one_epoch(self, epoch):
        """One pass over the training data; returns the mean loss. Logs every Train.log_interval steps."""
        d = self.data
        total_steps = self.epochs * d.steps_per_epoch
        images_per_step = d.batch_size * d.world_size
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
                self.steps_this_run += 1
                window_images += images_per_step
                if bar is not None:
                    bar.update(images_per_step, postfix=f"loss {value:.4f} lr {lr:.3g}")
                if self.is_main and (step % self.log_interval == 0 or step == d.steps_per_epoch):
                    now = time.perf_counter()
                    ips = window_images / max(now - window_start, 1e-9)
                    per_step = (now - self.run_start) / self.steps_this_run
                    eta = per_step * (total_steps - self.global_step)
                    self.log.info(f"epoch {epoch}/{self.epochs} step {step}/{d.steps_per_epoch} "
                                  f"loss {value:.5f} lr {lr:.6g} ips {ips:.2f} img/s eta {format_seconds(eta)}")
                    self.vdl.add_scalar("train/loss", value, self.global_step)
                    self.vdl.add_scalar("train/lr", lr, self.global_step)
                    self.vdl.add_scalar("train/ips", ips, self.global_step)
                    window_start, window_images = now, 0
        except RecordIOError as e:
            raise DatasetError(f"training stopped at epoch {epoch}, step {step + 1}: {e}. Restore train.rec from "
                               "its source (or repack it), then resume from latest/") from None
        except ImageReadError as e:
            raise DatasetError(f"training stopped at epoch {epoch}, step {step + 1}: {e}. The image is listed "
                               f"in {os.path.join(self.dataset_dir, 'train', 'label.txt')}: replace the file "
                               "or remove its line, then resume from latest/") from None
        except LoaderWorkerError as e:
            raise UserError(f"training stopped at epoch {epoch}, step {step + 1}: {e}") from None
        finally:
            if bar is not None:
                bar.close()
        return float(np.mean(losses)) if losses else float("nan")

    def validate(self, epoch):
        """10-fold verification accuracy (with flip) of the val pairs, dygraph backbone in eval mode."""
        backbone = self.model.backbone
        backbone.eval()
        try:
            def extract(nchw):
                with paddle.no_grad():
                    return backbone(paddle.to_tensor(nchw)).numpy()

            opts = dict(batch_size=self.cfg.Evaluate.batch_size, flip=self.cfg.Evaluate.flip,
                        folds=self.cfg.Evaluate.folds, num_workers=2)
            if self.val_bin is not None:  # a RecordIO set without val/: its .bin
                m = score_bin(self.val_bin, extract, **opts)[0]
            else:
                m = evaluate_pairs(self.val_pairs, extract, max_pixels=self.cfg.Global.max_image_pixels, **opts)
        finally:
            backbone.train()
        self.log.info(f"epoch {epoch} eval: val verification acc {m['acc']:.4f} +- {m.get('acc_std', 0.0):.4f} "
                      f"({m.get('folds', '')}-fold, flip {'on' if self.cfg.Evaluate.flip else 'off'}, "
                      f"{m['num_pairs']} pairs), threshold "
                      f"{m.get('best_threshold', float('nan')):.2f}")
        self.vdl.add_scalar("eval/acc", m["acc"], self.global_step)
        self.epoch_verification = verification_record(m, self.val_bin or "val/pair_label.txt")
        return float(m["acc"])

    def end_of_epoch(self, epoch, mean_loss):
        if self.world_size > 1:
            self.check_ranks_agree(epoch)
        if not self.is_main:
            return
        self.check_weights_finite(epoch)
        self.log.info(f"epoch {epoch}/{self.epochs} done: mean loss {mean_loss:.5f}")
        last = epoch == self.epochs
        score = self.validate(epoch) if (epoch % self.eval_interval == 0 or last) else None
        improved = score is not None and (self.best_score is None or score > self.best_score)
        if score is None:
            self.epoch_verification = None  # not validated this epoch: its export records no threshold
        if improved:
            self.best_score, self.best_epoch = score, epoch
        save_epoch = epoch % self.save_interval == 0 or last
        self.records.append({"epoch": epoch, "loss": mean_loss, "score": score, "epoch_dir": save_epoch})
        self.save(epoch, score, improved, save_epoch)
        self.write_result(done=False)

    def check_weights_finite(self, epoch):
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
            "backbone": self.cfg.Arch.backbone,
            "num_classes": self.num_classes,
            "embedding_size": self.embedding_size,
            "steps_per_epoch": self.data.steps_per_epoch,
            "batch_size": self.data.batch_size,
            "world_size": self.world_size,
            "records": list(self.records),
        }

    def save(self, epoch, score, improved, save_epoch):
        """latest/ (always), epoch_N/ (when due, with its inference model) and best_model/ (when improved)."""
        folders = ["latest"] + ([f"epoch_{epoch}"] if save_epoch else []) + (["best_model"] if improved else [])
        release_free_heap()  # the export's child process and the heap's kept blocks would peak together
        record_outputs(self.output_dir, folders)  # before they exist: a kill mid-save leaves nothing unrecorded
        save_checkpoints(self.output_dir, folders, self.model.state_dict(),
                         optimizer_state_by_layer(self.model, self.optimizer), self.state_payload(epoch, score),
                         export_fn=self.export if save_epoch else None, epoch=epoch,
                         last_saved_epoch=self.last_saved_epoch)
        self.last_saved_epoch = epoch
        self.log.info(f"saved {', '.join(f + '/' for f in folders)} (epoch {epoch}"
                      + (f", acc {score:.4f}" if score is not None else "") + ")")
        prune_epoch_dirs(self.output_dir)

    def export(self, save_dir):
        """This epoch's inference model, with the thresholds its validation just measured."""
        export_inference(self.model.backbone, save_dir, self.model_name, image_size=self.cfg.Arch.image_size,
                         verification=self.epoch_verification)

    def export_final(self):
        """best_model/inference and latest/inference from their own weights, when not there yet."""
        for folder in ("latest", "best_model"):
            ckpt = os.path.join(self.output_dir, folder, f"{folder}.pdparams")
            target = os.path.join(self.output_dir, folder, "inference")
            if not os.path.isfile(ckpt) or inference_files(target):
                continue
            backbone = build_backbone(self.cfg.Arch.backbone, embedding_size=self.cfg.Arch.embedding_size)
            load_backbone_weights(backbone, ckpt, strict=True)
            export_inference(backbone, target, self.model_name, image_size=self.cfg.Arch.image_size)
            self.log.info(f"exported {folder}/inference")

    # ----------------------------------------------------------------- train_result.json
    def write_result(self, done):
        vdl_file = getattr(self.vdl, "file_name", "") if self.vdl is not None else ""
        write_train_result(self.output_dir, done, model_name=self.model_name, dataset_dir=self.dataset_dir,
                           num_classes=self.num_classes, epochs=self.epochs, records=self.records,
                           best_score=self.best_score, best_epoch=self.best_epoch, vdl_file=vdl_file)

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
            if self.lock is not None:
                self.lock.release()


def compute_loss(logits, labels):
    """Cross-entropy of the margin logits (module-level so tests can inject a NaN)."""
    return F.cross_entropy(logits, labels.reshape([-1, 1]))


def cpu_speed_notes(cfg):
    """Apply the CPU speed settings of Global.cpu_speedup; their status lines for the log.

    Train.recompute is there for memory, so it leaves the allocator as it is: the heap setting
    keeps freed blocks (about 1 GB more at batch 128) for speed.
    """
    report = setup_cpu_speed(enabled=cfg.Global.cpu_speedup, allocator=not cfg.Train.recompute,
                             threads=num_threads_from(cfg.Global.num_threads))
    if cfg.Train.recompute and report["allocator"].endswith("(not requested)"):
        report["allocator"] = ("allocator: unchanged (Train.recompute: freed blocks go back to the system; the heap "
                               "setting would keep about 1 GB more)")
    return list(report.values())
