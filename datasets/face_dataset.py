"""The training dataset (images + identity ids) and its seeded batch sampler.

Randomness here never touches global RNG state: the shuffle order is a function of
(seed, epoch) and each sample's flip a function of (seed, epoch, index). So the stream of
batches is the same with 0 or N loader workers, on every rank, and after a resume.
"""
import ctypes
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import cv2
import numpy as np
import paddle

from datasets.transforms import DEFAULT_MAX_PIXELS, IMAGE_SIZE, ImageReadError, hflip_chw, preprocess, read_image


def flip_decision(seed, epoch, index, prob):
    """Whether sample `index` is flipped in `epoch`: a pure function of its arguments."""
    if prob <= 0:
        return False
    if prob >= 1:
        return True
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])
    return bool(rng.random() < prob)


class TrainImageDataset(paddle.io.Dataset):
    """(CHW float32 image normalised to [-1, 1], int64 identity id) per training sample, with the
    seeded flip of flip_decision(seed, epoch, index). Subclasses say where samples come from:
    `load(index) -> (BGR image, label)`, `__len__` and `num_classes`. Call set_epoch(e) before
    iterating an epoch so the flips differ between epochs (workers are forked per epoch and copy
    the current value)."""

    def __init__(self, flip_prob=0.5, seed=0, image_size=IMAGE_SIZE):
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def load(self, index):
        raise NotImplementedError

    def __getitem__(self, index):
        img, label = self.load(index)
        img = preprocess(img, self.image_size)
        if flip_decision(self.seed, self.epoch, index, self.flip_prob):
            img = hflip_chw(img)
        return img, np.int64(label)


class FaceTrainDataset(TrainImageDataset):
    """The samples of train/label.txt (the list from datasets.label_files.load_train_list)."""

    def __init__(self, samples, flip_prob=0.5, seed=0, image_size=IMAGE_SIZE, max_pixels=DEFAULT_MAX_PIXELS):
        super().__init__(flip_prob, seed, image_size)
        self.samples = list(samples)
        self.max_pixels = max_pixels  # travels to the loader workers with the dataset

    def __len__(self):
        return len(self.samples)

    def load(self, index):
        path, label = self.samples[index]
        # read_image raises ImageReadError whose message names the path; it travels back
        # from a loader worker to the training loop, which reports it and stops.
        return read_image(path, self.max_pixels), label

    @property
    def num_classes(self):
        return max(label for _, label in self.samples) + 1 if self.samples else 0


class SeededBatchSampler:
    """Shuffled, rank-sharded batches of indices, reproducible from (seed, epoch).

    Like paddle.io.DistributedBatchSampler (which shuffles with the epoch number alone and
    ignores the seed), the permutation is padded so every rank gets the same number of
    batches; rank r takes every world_size-th index. Incomplete last batches are dropped
    when drop_last is set.
    """

    def __init__(self, num_samples, batch_size, seed=0, rank=0, world_size=1, shuffle=True, drop_last=True):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.per_rank = -(-self.num_samples // self.world_size)  # ceil

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def epoch_indices(self):
        """This rank's indices for the current epoch, in order."""
        if self.shuffle:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, 0x5A3])
            order = rng.permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        pad = self.per_rank * self.world_size - self.num_samples
        if pad:
            order = np.concatenate([order, order[:pad]])
        return order[self.rank::self.world_size].tolist()

    def __iter__(self):
        indices = self.epoch_indices()
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start:start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch

    def __len__(self):
        full, rest = divmod(self.per_rank, self.batch_size)
        return full if (self.drop_last or rest == 0) else full + 1


class LoaderWorkerError(RuntimeError):
    """A loader worker died (killed, out of memory) or stopped answering."""


def load_batch(dataset, indices):
    """Stack the samples of `indices` into (NCHW float32, int64 [N]) numpy arrays."""
    items = [dataset[i] for i in indices]
    images = np.stack([img for img, _ in items])
    labels = np.asarray([label for _, label in items], dtype=np.int64)
    return images, labels


# The dataset of a worker process: set once by the pool initializer (inherited through fork,
# not pickled per task); each task carries only (epoch, indices, file name).
_WORKER_DATASET = None


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent_pid):
    """Ask Linux to kill this worker when the trainer dies (even by SIGKILL, which runs no clean-up);
    without it, workers of a killed trainer lived on, re-parented to pid 1, holding their memory."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux/glibc: close() and the parent's exit still end the workers
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(dataset, parent_pid=None):
    global _WORKER_DATASET
    _WORKER_DATASET = dataset
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    # Paddle's fatal-signal handlers are inherited through fork and print a C++ "crash" report when
    # close() terminates a worker; a worker should just end. Ctrl-C is for the main process to handle.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)  # workers decode one image at a time; more OpenCV threads would fight the trainer's


def _worker_load(epoch, indices, path):
    """Load a batch and write it to `path` (images then labels, two .npy records); return `path`.

    Batches travel through a file, not the result pipe: a worker killed while writing a large
    pickled result into the pipe would leave a partial message there, and the pool's reader
    would wait for the rest of it forever. The short path string is written to the pipe in one
    atomic write.
    """
    _WORKER_DATASET.set_epoch(epoch)
    images, labels = load_batch(_WORKER_DATASET, indices)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        np.save(f, images)
        np.save(f, labels)
    os.replace(tmp, path)
    return path


def _read_batch(path):
    with open(path, "rb") as f:
        images = np.load(f)
        labels = np.load(f)
    os.remove(path)
    return images, labels


SPOOL_PREFIX = "facefeat-batches-"


def _make_spool_dir():
    """A private folder for batches in flight; folders left by killed runs are removed."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if name.startswith(SPOOL_PREFIX):
            pid = name[len(SPOOL_PREFIX):].split("-")[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=base)


class BatchLoader:
    """Batches of a FaceTrainDataset in sampler order, decoded in `num_workers` processes.

    Why not paddle.io.DataLoader: in Paddle 3.3 an exception in __getitem__ kills its blocking
    queue and the main process sees only "SystemError: Blocking queue is killed" (the path of the
    bad image is lost), and with num_workers=0 its reader thread swallows the exception and the
    loop hangs. Here an exception raised in a worker (e.g. ImageReadError naming the image)
    re-raises unchanged in the training loop; a worker that dies (killed, out of memory) raises
    LoaderWorkerError within a second instead of hanging; `timeout` bounds the wait for one batch.

    The worker pool lives across epochs (like persistent_workers); close() stops it.
    num_workers=0 loads in the calling process.
    """

    def __init__(self, dataset, batch_sampler, num_workers=0, prefetch=2, timeout=600.0):
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.num_workers = max(0, int(num_workers))
        self.prefetch = max(1, int(prefetch))
        self.timeout = timeout
        self._pool = None
        self._spool = None
        self._seq = 0

    def __len__(self):
        return len(self.batch_sampler)

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)
        self.batch_sampler.set_epoch(epoch)

    def _get_pool(self):
        if self._pool is None:
            self._spool = _make_spool_dir()
            # fork: workers inherit the dataset (and the sample list) without pickling it
            ctx = multiprocessing.get_context("fork")
            self._pool = ProcessPoolExecutor(max_workers=self.num_workers, mp_context=ctx,
                                             initializer=_init_worker, initargs=(self.dataset, os.getpid()))
        return self._pool

    def start(self):
        """Fork the worker processes now rather than at the first batch. A forked worker keeps every
        page the trainer held at the fork as its own copy once the trainer writes to it (copy on
        write), so workers forked before the model, its activations and the allocator's kept blocks
        exist stay small (forked late from a large trainer, each worker's copy grows as large)."""
        if self.num_workers > 0:
            pool = self._get_pool()
            for future in [pool.submit(os.getpid) for _ in range(self.num_workers)]:  # every worker forks at once
                future.result(timeout=self.timeout)
        return self

    def _submit(self, pool, epoch, indices):
        self._seq += 1
        return pool.submit(_worker_load, epoch, indices, os.path.join(self._spool, f"{self._seq}.npy"))

    def _dead_worker(self):
        procs = (getattr(self._pool, "_processes", None) or {}).values()
        return next((p for p in list(procs) if p.exitcode is not None), None)

    def _wait(self, future, epoch):
        """The future's batch; LoaderWorkerError when a worker dies or the wait exceeds the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return _read_batch(future.result(timeout=1.0))
            except FutureTimeout:
                pass
            except BrokenProcessPool:
                dead = None
                break
            dead = self._dead_worker()
            if dead is not None:
                break
            if time.monotonic() > deadline:
                self.close()
                raise LoaderWorkerError(
                    f"no batch from the data loader workers within {self.timeout:.0f} s (epoch {epoch}); "
                    "a worker is stuck (slow or unresponsive disk?)")
        code = f" (exit code {dead.exitcode})" if dead is not None else ""
        self.close()
        raise LoaderWorkerError(
            f"a data loader worker process died{code} while loading epoch {epoch}: killed, or out of memory? "
            "Try fewer Train.num_workers, or 0 to load in the main process")

    def __iter__(self):
        epoch = self.dataset.epoch
        if self.num_workers == 0:
            for indices in self.batch_sampler:
                yield load_batch(self.dataset, indices)
            return
        pool = self._get_pool()
        pending = deque()
        batches = iter(self.batch_sampler)
        try:
            for indices in batches:
                pending.append(self._submit(pool, epoch, indices))
                if len(pending) >= self.num_workers * self.prefetch:
                    break
            while pending:
                result = self._wait(pending.popleft(), epoch)
                nxt = next(batches, None)
                if nxt is not None:
                    pending.append(self._submit(pool, epoch, nxt))
                yield result
        finally:
            for future in pending:
                future.cancel()

    def close(self, grace_seconds=5.0):
        """Stop the workers: each finishes its current batch; any still busy after
        `grace_seconds` (stuck on a slow disk, say) is terminated so shutdown never hangs."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            procs = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + grace_seconds
            for proc in procs:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.terminate()
                    proc.join(1.0)
        if self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


__all__ = ["BatchLoader", "FaceTrainDataset", "LoaderWorkerError", "SeededBatchSampler", "flip_decision",
           "ImageReadError", "load_batch"]
