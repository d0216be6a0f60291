"""Face verification of image pairs: embed each distinct image once (with its flip), score the pairs.

Shared by the evaluate mode (an exported model through paddle.inference) and by training's
per-epoch validation (the dygraph backbone): both pass an `extract_fn(nchw float32) -> [N, D]`.
The metrics themselves are engine/evaluation/metrics.py (plain numpy).
"""
import os
import time

import numpy as np

from datasets.bin_file import decode_image, read_bin
from datasets.label_files import PAIR_LABEL, load_pair_list
from datasets.prefetch import extract_features
from datasets.recordio import REC_NAME, find_bins, is_recordio_dir
from datasets.transforms import DEFAULT_MAX_PIXELS, ImageReadError, preprocess, read_image
from engine.evaluation import metrics as M
from foundation.errors import DatasetError
from foundation.progress import Progress

# Paddle's PIR executor runs MobileFaceNet about 2x slower per image at batch 64 than at batch 16 on
# the CPU (the old format is flat), so Evaluate.batch_size images are decoded together but forwarded
# in slices of at most this many.
FORWARD_CHUNK = 16


def chunked(extract_fn, size=FORWARD_CHUNK):
    """extract_fn applied to slices of at most `size` rows of a batch, results concatenated."""
    def run(batch):
        if len(batch) <= size:
            return extract_fn(batch)
        return np.concatenate([np.asarray(extract_fn(batch[i:i + size])) for i in range(0, len(batch), size)])

    return run


# --------------------------------------------------------------------------- scoring
def pair_image_reader(max_pixels=DEFAULT_MAX_PIXELS):
    """load_fn for score_pairs: a val pair image, decoded; DatasetError naming the file and the fix."""
    def read(path):
        try:
            return read_image(path, max_pixels)
        except ImageReadError as e:
            raise DatasetError(f"{e}; fix the image or remove its pair from val/pair_label.txt") from None
    return read


def aligned_face_loader(cropper, fallbacks, max_pixels=DEFAULT_MAX_PIXELS):
    """load_fn for score_pairs on raw photos: the main face of each image aligned by `cropper`
    (models.face_detector.MainFaceCropper); an image without a face is used whole and its path is
    appended to `fallbacks` (so every pair is still scored and the count is reported)."""
    read = pair_image_reader(max_pixels)

    def load(path):
        img = read(path)
        chip, _, _ = cropper.main(img)
        if chip is None:
            fallbacks.append(path)
            return img
        return chip
    return load


def unique_images(pairs):
    """(distinct image paths in first-seen order, index_a, index_b) of (path_a, path_b, label) pairs."""
    index = {}
    for a, b, _ in pairs:
        for p in (a, b):
            if p not in index:
                index[p] = len(index)
    ia = np.array([index[a] for a, _, _ in pairs], dtype=np.int64)
    ib = np.array([index[b] for _, b, _ in pairs], dtype=np.int64)
    return list(index), ia, ib


def score_pairs(images, index_a, index_b, labels, extract_fn, load_fn=None, batch_size=64, flip=True,
                folds=10, num_workers=2, desc="evaluate", preprocess_fn=preprocess):
    """Embed each distinct image once (with its flip), then score the pairs. `preprocess_fn` turns
    a BGR image into the model's input (an InferenceModel's, from its inference.yml).

    Returns (metrics dict, cosine per pair, squared L2 distance per pair).
    """
    labels = np.asarray(labels).astype(int)
    if len(labels) < folds:  # checked before the slow part
        raise DatasetError(f"{desc}: {len(labels)} pairs cannot be split into {folds} folds; add pairs "
                           f"(at least {folds}, a few hundred for a meaningful figure) or lower -o Evaluate.folds")
    with Progress(len(images), desc=desc, unit="img") as bar:
        bar.postfix = "(x2 forward passes: flip)" if flip else ""
        feats = extract_features(images, load_fn or pair_image_reader(), extract_fn, batch_size=batch_size, flip=flip,
                                 num_workers=num_workers, progress=bar, preprocess_fn=preprocess_fn)
    cosine, sq_dist = M.pair_scores(feats[index_a], feats[index_b])
    metrics = M.metrics_from_scores(cosine, sq_dist, labels, folds=folds, flip=bool(flip))
    metrics["num_images"] = len(images)
    metrics["seconds"] = round(time.perf_counter() - bar.start, 2)
    return metrics, cosine, sq_dist


def evaluate_pairs(pairs, extract_fn, batch_size=64, flip=True, folds=10, num_workers=2, max_pixels=DEFAULT_MAX_PIXELS):
    """Verification metrics of `pairs` [(path_a, path_b, label)] with `extract_fn(nchw) -> [N, D]`.

    Each distinct image is decoded and embedded once; decoding runs in `num_workers` threads
    while the model works. Used by training's validation (dygraph extract_fn).
    """
    if not pairs:
        raise DatasetError("no pairs to evaluate: val/pair_label.txt is empty")
    images, ia, ib = unique_images(pairs)
    labels = [int(lbl) for _, _, lbl in pairs]
    metrics, _, _ = score_pairs(images, ia, ib, labels, extract_fn, pair_image_reader(max_pixels),
                                batch_size=batch_size, flip=flip, folds=folds, num_workers=num_workers)
    return metrics


def score_bin(path, extract_fn, batch_size=64, flip=True, folds=10, num_workers=2, preprocess_fn=preprocess):
    """(metrics, cosine, sq_dist, labels) of an insightface .bin file (pairs are images 2i, 2i+1)."""
    images, issame = read_bin(path)
    n = len(issame)
    items = list(range(len(images)))

    def load(i):
        return decode_image(images[i], f"{path} image #{i}")

    metrics, cosine, sq_dist = score_pairs(items, np.arange(n) * 2, np.arange(n) * 2 + 1, issame.astype(int),
                                           extract_fn, load_fn=load, batch_size=batch_size, flip=flip, folds=folds,
                                           num_workers=num_workers, desc=os.path.basename(path),
                                           preprocess_fn=preprocess_fn)
    return metrics, cosine, sq_dist, issame.astype(int)


def validation_source(dataset_dir):
    """(pairs, None) from val/pair_label.txt, or (None, .bin path) for a RecordIO folder without val/:
    its first verification .bin (lfw, cfp_fp, agedb_30, then others by name)."""
    if is_recordio_dir(dataset_dir) and not os.path.isfile(os.path.join(str(dataset_dir), PAIR_LABEL)):
        bins = find_bins(dataset_dir)
        if not bins:
            raise DatasetError(f"{dataset_dir} has {REC_NAME} but neither val/pair_label.txt nor a verification "
                               ".bin file (lfw.bin, cfp_fp.bin, ...) beside it: add one to validate on")
        return None, bins[0]
    # every val image's header is read too: a missing or corrupt one stops the run before epoch 1
    return load_pair_list(dataset_dir, check_images=True), None
