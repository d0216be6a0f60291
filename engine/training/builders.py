"""Builders shared by the runners: the model, the training data loader, the optimizer and schedule.

Each reads its part of the config and fails with a ConfigError / DatasetError that names the
setting and the fix, before any long work starts.
"""
import math
from dataclasses import dataclass

import paddle
from paddle.optimizer.lr import LRScheduler

from datasets.face_dataset import BatchLoader, FaceTrainDataset, SeededBatchSampler
from datasets.label_files import load_train_list
from datasets.recordio import REC_NAME, RecordIOSet, RecordIOTrainDataset, is_recordio_dir, read_property
from foundation.errors import ConfigError, DatasetError
from foundation.logger import get_logger
from models import ArcMargin, FaceRecModel, build_backbone


# --------------------------------------------------------------------------- model
def model_name_of(cfg):
    return cfg.Global.model


def build_model(cfg, num_classes):
    """FaceRecModel: the Arch.backbone network + an ArcMargin head over `num_classes` identities."""
    # Arch.head.name (ArcMargin) and Arch.loss (CELoss) have a single choice, checked at load.
    backbone = build_backbone(cfg.Arch.backbone, embedding_size=cfg.Arch.embedding_size, recompute=cfg.Train.recompute)
    if int(num_classes) < 2:
        raise DatasetError(f"training needs at least 2 identities, the training list has {num_classes}: "
                           "add images of more people to train/label.txt")
    head = ArcMargin(
        backbone.embedding_size,
        int(num_classes),
        margin=cfg.Arch.head.margin,
        scale=cfg.Arch.head.scale,
        easy_margin=cfg.Arch.head.easy_margin,
        sample_rate=cfg.Arch.head.sample_rate,
    )
    return FaceRecModel(backbone, head)


# --------------------------------------------------------------------------- data
@dataclass
class TrainData:
    loader: object  # datasets.face_dataset.BatchLoader
    dataset: object  # datasets.face_dataset.FaceTrainDataset or datasets.recordio.RecordIOTrainDataset
    num_classes: int
    num_samples: int
    batch_size: int  # per process
    world_size: int
    steps_per_epoch: int


def check_num_classes(cfg, num_classes, label_file="train/label.txt"):
    """Train.num_classes, when set, must equal the class count of the data (max id + 1)."""
    configured = cfg.Train.num_classes
    if configured is not None and configured != int(num_classes):
        raise ConfigError(
            f"Train.num_classes={configured} but {label_file} has {num_classes} classes (ids 0..{num_classes - 1}): "
            f"set -o Train.num_classes={num_classes}, or leave it null to take the count from the data")
    return int(num_classes)


def check_batch_size(batch_size, num_samples, world_size=1):
    """Refuse a batch that no process can fill: with drop_last it would train zero steps.

    An error rather than a silent clamp, because the learning rate is tuned to the batch size
    and a smaller batch changes the recipe.
    """
    if batch_size < 1:
        raise ConfigError(f"Train.batch_size must be at least 1, got {batch_size}")
    per_process = num_samples // world_size
    if batch_size > per_process:
        where = f" per process ({num_samples} images over {world_size} processes)" if world_size > 1 else ""
        raise ConfigError(
            f"Train.batch_size={batch_size} is larger than the training set: {per_process} images{where}, so "
            f"no full batch can be formed. Use -o Train.batch_size={max(1, per_process)} or less, or add images")


def recordio_classes(recset):
    """The class count of a RecordIO set (max label + 1), checked against its `property` file."""
    num_classes = recset.num_classes
    prop = read_property(recset.folder)
    if prop is not None and prop[0] != num_classes:
        raise DatasetError(f"{recset.folder}/property says {prop[0]} classes but the labels in {REC_NAME} give "
                           f"{num_classes} (ids 0..{num_classes - 1}): correct the first number of property, "
                           "or check that train.rec and property come from the same set")
    return num_classes


def build_train_loader(cfg, dataset_dir, rank=0, world_size=1):
    """The training data: seeded shuffle and flip, drop_last, sharded by rank when world_size > 1.

    A folder with train.rec is read as a RecordIO set (datasets/recordio.py), else train/label.txt."""
    seed = cfg.Global.seed
    flip, size = cfg.Train.transforms.random_flip, cfg.Arch.image_size
    if is_recordio_dir(dataset_dir):
        recset = RecordIOSet(dataset_dir)
        if not len(recset):
            raise DatasetError(f"{dataset_dir}/{REC_NAME} holds no image records")
        num_classes = check_num_classes(cfg, recordio_classes(recset), label_file=REC_NAME)
        dataset = RecordIOTrainDataset(recset, flip_prob=flip, seed=seed, image_size=size)
    else:
        samples = load_train_list(dataset_dir)
        if not samples:
            raise DatasetError(f"{dataset_dir}/train/label.txt lists no images: add lines '<image path> <identity id>'")
        num_classes = check_num_classes(cfg, max(label for _, label in samples) + 1)
        dataset = FaceTrainDataset(samples, flip_prob=flip, seed=seed, image_size=size,
                                   max_pixels=cfg.Global.max_image_pixels)
    num_samples = len(dataset)
    batch_size = cfg.Train.batch_size
    check_batch_size(batch_size, num_samples, world_size)
    sampler = SeededBatchSampler(num_samples, batch_size, seed=seed, rank=rank, world_size=world_size,
                                 shuffle=True, drop_last=True)
    # workers forked now, from a trainer without a model yet, stay small (BatchLoader.start)
    loader = BatchLoader(dataset, sampler, num_workers=cfg.Train.num_workers).start()
    steps = len(sampler)
    dropped = sampler.per_rank - steps * batch_size
    if dropped and rank == 0:
        where = " per process" if world_size > 1 else ""
        get_logger().info(f"{dropped} of {sampler.per_rank} images{where} are left out of each epoch "
                          f"(incomplete last batch; the shuffle changes which ones every epoch)")
    return TrainData(loader, dataset, num_classes, num_samples, batch_size, world_size, steps)


# --------------------------------------------------------------------------- optimizer and schedule
class WarmupCosineLR(LRScheduler):
    """Linear warm-up from 0 to `learning_rate` over `warmup_iters`, then cosine decay to `eta_min`
    at `total_iters`; stepped once per iteration.

    The same curve as PaddleClas' LinearWarmup + CosineAnnealingDecay, but computed in closed
    form from the iteration count, so the state to save for a resume is just `last_epoch`
    (iterations done) and a resumed run reproduces the rate exactly.
    """

    def __init__(self, learning_rate, total_iters, warmup_iters=0, eta_min=0.0, last_epoch=-1):
        self.total_iters = max(1, int(total_iters))
        self.warmup_iters = min(max(0, int(warmup_iters)), self.total_iters)
        self.eta_min = float(eta_min)
        super().__init__(learning_rate=float(learning_rate), last_epoch=last_epoch)

    def lr_at(self, it):
        base = self.base_lr
        if it < self.warmup_iters:
            return base * it / self.warmup_iters
        decay_iters = self.total_iters - self.warmup_iters
        if decay_iters <= 0:
            return base
        t = min(it - self.warmup_iters, decay_iters) / decay_iters
        return self.eta_min + (base - self.eta_min) * 0.5 * (1.0 + math.cos(math.pi * t))

    def get_lr(self):
        return self.lr_at(self.last_epoch)


def no_decay_param_names(model):
    """Names of 1-D parameters (BN scale/shift, PReLU slopes, biases): no weight decay on them."""
    return {p.name for p in model.parameters() if len(p.shape) <= 1 and not p.stop_gradient}


def build_optimizer(cfg, model, steps_per_epoch):
    """(AdamW, WarmupCosineLR) from Train.*; weight decay only on parameters with 2+ dimensions."""
    # Train.optimizer.name (AdamW only), epochs_iters >= 1 and learning_rate > 0 are checked at load.
    epochs = cfg.Train.epochs_iters
    lr = cfg.Train.learning_rate
    warmup_epochs = cfg.Train.warmup_steps
    scheduler = WarmupCosineLR(
        lr,
        total_iters=epochs * steps_per_epoch,
        warmup_iters=int(round(warmup_epochs * steps_per_epoch)),
        eta_min=cfg.Train.eta_min,
    )
    no_decay = no_decay_param_names(model)
    optimizer = paddle.optimizer.AdamW(
        learning_rate=scheduler,
        parameters=model.parameters(),
        beta1=cfg.Train.optimizer.beta1,
        beta2=cfg.Train.optimizer.beta2,
        epsilon=cfg.Train.optimizer.epsilon,
        weight_decay=cfg.Train.optimizer.weight_decay,
        apply_decay_param_fun=lambda param_name: param_name not in no_decay,
    )
    return optimizer, scheduler
