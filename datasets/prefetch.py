"""Decode and pre-process images in worker threads while the model runs on the previous batch.

OpenCV's decode and resize release the GIL, and so does paddle.inference, so threads are enough
to keep the model busy. Batches come out in input order. Shared by evaluate and predict.
"""
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from datasets.transforms import hflip_chw, preprocess


class ItemError(Exception):
    """An item that could not be loaded; `index` is its position in the input list."""

    def __init__(self, index, error):
        super().__init__(str(error))
        self.index = index
        self.error = error


def _load_chunk(items, start, load_fn, skip_errors, preprocess_fn=preprocess):
    arrays, indices, failures = [], [], []
    for offset, item in enumerate(items):
        index = start + offset
        try:
            arrays.append(preprocess_fn(load_fn(item)))
            indices.append(index)
        except Exception as e:  # noqa: BLE001 - reported per item or re-raised below
            if not skip_errors:
                raise
            failures.append(ItemError(index, e))
    batch = np.stack(arrays) if arrays else None
    return indices, batch, failures


def prefetch_batches(items, load_fn, batch_size=64, num_workers=2, skip_errors=False, preprocess_fn=preprocess):
    """Yield (indices, NCHW float32 batch or None, failures) for consecutive chunks of `items`.

    `load_fn(item)` returns a BGR uint8 image; `preprocess_fn` makes it the model's CHW input
    (an InferenceModel's `preprocess`, from its inference.yml). With skip_errors, an item whose load_fn raises is
    returned in `failures` (ItemError) instead of stopping the run. At most num_workers + 1
    batches are decoded ahead, so memory stays bounded on large sets.
    """
    batch_size = max(1, int(batch_size))
    starts = range(0, len(items), batch_size)
    if num_workers <= 0:
        for s in starts:
            yield _load_chunk(items[s:s + batch_size], s, load_fn, skip_errors, preprocess_fn)
        return
    with ThreadPoolExecutor(max_workers=int(num_workers), thread_name_prefix="decode") as pool:
        pending = deque()
        it = iter(starts)
        try:
            for s in it:
                pending.append(pool.submit(_load_chunk, items[s:s + batch_size], s, load_fn, skip_errors, preprocess_fn))
                if len(pending) > num_workers:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(_load_chunk, items[nxt:nxt + batch_size], nxt, load_fn, skip_errors,
                                                 preprocess_fn))
                yield result
        finally:
            for f in pending:  # stop early (error, generator closed): drop queued work
                f.cancel()


def extract_features(items, load_fn, extract_fn, batch_size=64, flip=True, num_workers=2, progress=None,
                     preprocess_fn=preprocess):
    """Raw features [N, D] float32 of every item; with flip, feature(x) + feature(flipped x).

    `extract_fn(nchw float32) -> [n, D]`; `progress` (foundation.progress.Progress) is advanced by
    images done. Errors from load_fn propagate (the caller names the item).
    """
    feats = None
    for indices, batch, _ in prefetch_batches(items, load_fn, batch_size, num_workers, preprocess_fn=preprocess_fn):
        out = np.asarray(extract_fn(batch), dtype=np.float32)
        if flip:
            out = out + np.asarray(extract_fn(hflip_chw(batch)), dtype=np.float32)
        if feats is None:
            feats = np.zeros((len(items), out.shape[1]), dtype=np.float32)
        feats[indices[0]:indices[-1] + 1] = out
        if progress is not None:
            progress.update(len(indices))
    if feats is None:
        feats = np.zeros((0, 0), dtype=np.float32)
    return feats
