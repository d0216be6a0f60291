"""Check a face dataset folder and describe it (the check_dataset mode, engine/runners/check_dataset.py).

check() writes <Global.output>/check_dataset_result.json (the reference's fields plus val_sample_paths,
with `analysis` filled), <output>/check_dataset/demo_img/ (10 train images with their id drawn,
10 validation pairs side by side with their label) and <output>/check_dataset/histogram.png.

How images are checked, so that 100,000 listed files take seconds: every listed file is opened
and its header read (format, width, height, and for PNG/JPEG/BMP/PGM whether the file is as long
as its header says), which finds missing, empty, non-image and truncated files; then a fixed
sample (CheckDataset.decode_sample, default 2000; all images when there are fewer, or when
CheckDataset.decode_all is True) is fully decoded in parallel threads to catch corrupt pixel data,
and any file in a format the header reader does not know is decoded too.

A RecordIO folder (train.rec + train.idx, datasets/recordio.py) is checked by check_recordio:
every record is read (framing, IRHeader, label), the same sample is decoded, and a corrupt record
is an error whose file is train.rec and whose line is the record index.
"""
import os
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import matplotlib
import numpy as np

from datasets.bin_file import decode_image, read_bin
from datasets.demo import ensure_demo
from datasets.image_headers import HeaderError, image_header
from datasets.label_files import (
    ERROR,
    PAIR_LABEL,
    WARNING,
    ProblemList,
    format_problem,
    parse_pair_labels,
    parse_train_labels,
)
from datasets.recordio import (
    PROPERTY_NAME,
    REC_NAME,
    RecordIOError,
    RecordIOSet,
    find_bins,
    is_recordio_dir,
    read_property,
)
from datasets.transforms import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from foundation.atomic_io import atomic_replace_dir
from foundation.errors import DatasetError
from foundation.logger import get_logger
from foundation.progress import Progress

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from matplotlib.ticker import MaxNLocator  # noqa: E402

RESULT_NAME = "check_dataset_result.json"
NUM_DEMO = 10


# --------------------------------------------------------------------------- image checks
def _fix_for_header(message, abs_path):
    if message == "file not found":
        return f"put the image at {abs_path} or delete this line"
    if "truncated" in message:
        return "copy the file again from its source (it is cut short), or delete this line"
    return "replace it with a JPEG/PNG/BMP/PGM image, or delete this line"


def check_images(refs, problems, decode_sample=2000, decode_all=False, workers=2, log=None,
                 max_pixels=DEFAULT_MAX_PIXELS):
    """Open every listed image's header and decode a sample; add problems; return size stats.

    refs: {abs_path: (label file shown, line, rel path)} for the first line naming each file.
    """
    paths = list(refs)
    sizes = {}
    to_decode = []
    bad = set()
    start = time.perf_counter()
    for path in paths:
        try:
            kind, w, h, note = image_header(path)
        except HeaderError as e:
            shown, line, rel = refs[path]
            problems.add(ERROR, shown, line, f"image '{rel}': {e}", _fix_for_header(str(e), path))
            bad.add(path)
            continue
        if note:
            shown, line, rel = refs[path]
            problems.add(WARNING, shown, line, f"image '{rel}': {note}",
                         "open it to check; copy it again from its source if its bottom is missing")
            to_decode.append(path)  # and decode it: a cut file usually fails here
            continue
        if kind is None:
            to_decode.append(path)  # a format the header reader does not know: decode it
        elif w * h > max_pixels:
            shown, line, rel = refs[path]
            problems.add(ERROR, shown, line, f"image '{rel}' is {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit "
                         f"of {max_pixels / 1e6:g} (Global.max_image_pixels); it is not decoded",
                         "resize it (faces need about 112x112), or raise -o Global.max_image_pixels")
            bad.add(path)
        elif w <= 0 or h <= 0:
            shown, line, rel = refs[path]
            problems.add(ERROR, shown, line, f"image '{rel}' has an empty size {w}x{h} in its header",
                         "replace it with a valid image, or delete this line")
            bad.add(path)
        else:
            if w * h <= 1:
                shown, line, rel = refs[path]
                problems.add(WARNING, shown, line, f"image '{rel}' is only {w}x{h} pixels",
                             "check it: a face image this small holds nothing to learn from")
            sizes[path] = (w, h)
    header_seconds = time.perf_counter() - start

    good = [p for p in paths if p in sizes]
    if decode_all or len(good) <= decode_sample:
        sample = good
    else:
        rng = np.random.default_rng(0)
        sample = [good[i] for i in sorted(rng.choice(len(good), decode_sample, replace=False))]
    forced = set(to_decode)
    to_decode = to_decode + [p for p in sample if p not in forced]

    def decode(path):
        try:
            img = read_image(path, max_pixels)
        except ImageReadError:
            return path, None
        return path, (img.shape[1], img.shape[0])

    start = time.perf_counter()
    progress = Progress(len(to_decode), desc="decoding images", unit="img", every_seconds=5.0) if len(to_decode) > 2000 else None
    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV releases the GIL while decoding
        for path, size in pool.map(decode, to_decode):
            if progress:
                progress.update(1)
            if size is None:
                shown, line, rel = refs[path]
                problems.add(ERROR, shown, line, f"image '{rel}' does not decode as an image (corrupt or not an image file)",
                             "replace it with a JPEG/PNG/BMP/PGM image, or delete this line")
                bad.add(path)
                sizes.pop(path, None)
            else:
                sizes[path] = size
    if progress:
        progress.close()
    decode_seconds = time.perf_counter() - start
    return {
        "sizes": sizes,
        "bad": bad,
        "listed_files": len(paths),
        "headers_read": len(paths),
        "decoded": len(to_decode),
        "header_seconds": round(header_seconds, 3),
        "decode_seconds": round(decode_seconds, 3),
    }


# --------------------------------------------------------------------------- pictures
def _fit(img, height):
    scale = height / img.shape[0]
    return cv2.resize(img, (max(1, int(round(img.shape[1] * scale))), height),
                      interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)


def _banner(img, text, color):
    out = np.full((img.shape[0] + 26, img.shape[1], 3), 255, np.uint8)
    out[:img.shape[0]] = img
    out[img.shape[0]:] = color
    cv2.putText(out, text, (4, img.shape[0] + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def save_demo_images(train_entries, pair_entries, bad, demo_dir, max_pixels=DEFAULT_MAX_PIXELS):
    """10 train images with their id and 10 val pairs with their label; returns the file names."""
    os.makedirs(demo_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    train = [e for e in train_entries if e.abs_path not in bad]
    train_names = []
    for k, i in enumerate(sorted(rng.choice(len(train), min(NUM_DEMO, len(train)), replace=False))):
        e = train[i]
        img = _banner(_fit(read_image(e.abs_path, max_pixels), 160), f"id {e.identity}", (90, 60, 20))
        name = f"train_{k:02d}_id{e.identity}.jpg"
        cv2.imwrite(os.path.join(demo_dir, name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        train_names.append(name)
    # half same-person, half different-person pairs when the file has both
    pairs = [e for e in pair_entries if e.abs_a not in bad and e.abs_b not in bad]
    chosen = []
    for label in (1, 0):
        group = [e for e in pairs if e.label == label]
        take = min(len(group), NUM_DEMO // 2)
        chosen += [group[i] for i in sorted(rng.choice(len(group), take, replace=False))] if take else []
    rest = [e for e in pairs if e not in chosen]
    if len(chosen) < NUM_DEMO and rest:
        extra = min(NUM_DEMO - len(chosen), len(rest))
        chosen += [rest[i] for i in sorted(rng.choice(len(rest), extra, replace=False))]
    val_names = [_save_pair(demo_dir, k, read_image(e.abs_a, max_pixels), read_image(e.abs_b, max_pixels), e.label)
                 for k, e in enumerate(chosen)]
    return train_names, val_names


def _save_pair(demo_dir, k, img_a, img_b, label):
    """The two images of a pair side by side with their label; returns the file name."""
    a, b = _fit(img_a, 160), _fit(img_b, 160)
    gap = np.full((160, 6, 3), 255, np.uint8)
    text = "same person (1)" if label == 1 else "different (0)"
    img = _banner(np.hstack([a, gap, b]), text, (40, 140, 40) if label == 1 else (40, 40, 170))
    name = f"val_pair_{k:02d}_label{label}.jpg"
    cv2.imwrite(os.path.join(demo_dir, name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return name


def save_histogram(counts, path, title):
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    lo, hi = int(counts.min()), int(counts.max())
    bins = np.arange(lo, hi + 2) - 0.5 if hi - lo <= 60 else 60
    ax.hist(counts, bins=bins, color="#3a7bd5", edgecolor="white")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if hi - lo < 4:
        ax.set_xlim(lo - 2.5, hi + 2.5)
    ax.set_xlabel("images per identity")
    ax.set_ylabel("identities")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- the check
def _relative(path, start):
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive on Windows
        return path


def check(dataset_dir, output_dir, max_errors=50, expected_num_classes=None, decode_sample=2000, decode_all=False,
          workers=2, log=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Validate `dataset_dir`; write the pictures; return (result dict, ProblemList).

    The result dict is what goes to check_dataset_result.json; the caller writes it.
    """

    log = log or get_logger()
    shown_root = str(dataset_dir)
    root = os.path.abspath(os.path.expanduser(shown_root))
    output_dir = os.path.abspath(output_dir)
    ensure_demo(root)  # generates the demo dataset on first use
    problems = ProblemList(max_errors)
    train_entries, pair_entries = [], []
    result = {
        "done_flag": True,
        "check_pass": False,
        "attributes": {
            "train_label_file": _relative(os.path.join(root, "train", "label.txt"), output_dir),
            "train_num_classes": 0,
            "train_samples": 0,
            "train_sample_paths": [],
            "val_label_file": _relative(os.path.join(root, "val", "pair_label.txt"), output_dir),
            "val_num_classes": 2,
            "val_samples": 0,
            "val_sample_paths": [],
        },
        "analysis": {},
        "dataset_path": shown_root,
        "show_type": "image",
        "dataset_type": "ClsDataset",
    }
    analysis = result["analysis"]
    image_stats = None
    rec_ids, recordio_demo = None, None
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        problems.add(ERROR, shown_root, None, f"the dataset folder {what} ({root})",
                     "pass the folder that holds train/ and val/ with -o Global.dataset_dir=DIR")
    elif is_recordio_dir(root):
        rec_ids, recordio_demo = check_recordio(root, shown_root, output_dir, result, problems, expected_num_classes,
                                                decode_sample, decode_all, workers, log, max_pixels)
    else:
        start = time.perf_counter()
        train_entries, train_problems = parse_train_labels(root, cap=max_errors, shown_root=shown_root)
        pair_entries, pair_problems = parse_pair_labels(root, cap=max_errors, shown_root=shown_root)
        problems.extend(train_problems)
        problems.extend(pair_problems)
        train_entries, pair_entries = train_entries or [], pair_entries or []
        log.info(f"Parsed {len(train_entries)} train lines and {len(pair_entries)} pairs in "
                 f"{time.perf_counter() - start:.2f} s")
        refs = {}
        train_shown = os.path.join(shown_root, "train", "label.txt")
        pair_shown = os.path.join(shown_root, "val", "pair_label.txt")
        for e in train_entries:
            refs.setdefault(e.abs_path, (train_shown, e.line, e.rel_path))
        val_paths = set()
        for e in pair_entries:
            refs.setdefault(e.abs_a, (pair_shown, e.line, e.rel_a))
            refs.setdefault(e.abs_b, (pair_shown, e.line, e.rel_b))
            val_paths.update((e.abs_a, e.abs_b))
        shared = len(val_paths & {e.abs_path for e in train_entries})
        if shared:
            problems.add(WARNING, pair_shown, None, f"{shared} validation images are also training images",
                         "use separate people for validation, or the accuracy will be optimistic")
        if refs:
            image_stats = check_images(refs, problems, decode_sample, decode_all, workers, log, max_pixels)
            log.info(f"Checked {image_stats['headers_read']} image headers in {image_stats['header_seconds']:.2f} s, "
                     f"decoded {image_stats['decoded']} images in {image_stats['decode_seconds']:.2f} s")
        if train_entries and expected_num_classes not in (None, "", 0):
            found = max(e.identity for e in train_entries) + 1
            if int(expected_num_classes) != found:
                problems.add(ERROR, "config Train.num_classes", None,
                             f"Train.num_classes is {expected_num_classes} but train/label.txt has ids 0..{found - 1} "
                             f"({found} classes)",
                             f"set -o Train.num_classes={found}, or leave it null to take it from the data")

    ids = rec_ids if rec_ids is not None else np.array([e.identity for e in train_entries], np.int64)
    counts = np.bincount(ids)[np.unique(ids)] if ids.size else np.zeros(0, np.int64)
    attrs = result["attributes"]
    attrs["train_num_classes"] = int(ids.max()) + 1 if ids.size else 0
    attrs["train_samples"] = int(ids.size)
    if recordio_demo is None:
        attrs["val_samples"] = len(pair_entries)
    if ids.size:
        analysis["train"] = {
            "identities": int(counts.size),
            "num_classes": int(ids.max()) + 1,
            "unused_ids": int(ids.max()) + 1 - int(counts.size),
            "images": int(ids.size),
            "images_per_identity": {"min": int(counts.min()), "median": float(np.median(counts)),
                                    "max": int(counts.max()), "mean": round(float(counts.mean()), 2)},
            "identities_with_one_image": int((counts == 1).sum()),
        }
    if pair_entries:
        same = sum(e.label for e in pair_entries)
        analysis["val"] = {
            "pairs": len(pair_entries), "same_pairs": same, "different_pairs": len(pair_entries) - same,
            "images": len({p for e in pair_entries for p in (e.abs_a, e.abs_b)}),
        }
    if image_stats and image_stats["sizes"]:
        ws = np.array([s[0] for s in image_stats["sizes"].values()])
        hs = np.array([s[1] for s in image_stats["sizes"].values()])
        values, freq = np.unique(ws * 100000 + hs, return_counts=True)
        common = int(values[freq.argmax()])
        analysis["image_size"] = {
            "min_width": int(ws.min()), "max_width": int(ws.max()),
            "min_height": int(hs.min()), "max_height": int(hs.max()),
            "most_common": f"{common // 100000}x{common % 100000}",
            "not_112x112": int(((ws != 112) | (hs != 112)).sum()),
        }
    if image_stats:
        analysis["image_check"] = {
            "listed_files": image_stats["listed_files"], "headers_read": image_stats["headers_read"],
            "decoded": image_stats["decoded"],
            "method": "every header read (existence, format, size, truncation); a fixed sample fully decoded",
            "seconds": round(image_stats["header_seconds"] + image_stats["decode_seconds"], 2),
        }

    passed = problems.num_errors() == 0
    result["check_pass"] = passed
    if passed:
        bad = image_stats["bad"] if image_stats else set()

        def build(tmp_dir):
            demo_dir = os.path.join(tmp_dir, "demo_img")
            names = (recordio_demo(demo_dir) if recordio_demo is not None
                     else save_demo_images(train_entries, pair_entries, bad, demo_dir, max_pixels))
            save_histogram(counts, os.path.join(tmp_dir, "histogram.png"),
                           f"{counts.size} identities, {ids.size} images (median {np.median(counts):g} per identity)")
            return names

        holder = {}
        atomic_replace_dir(lambda tmp: holder.setdefault("names", build(tmp)), os.path.join(output_dir, "check_dataset"))
        train_names, val_names = holder["names"]
        attrs["train_sample_paths"] = [f"check_dataset/demo_img/{n}" for n in train_names]
        attrs["val_sample_paths"] = [f"check_dataset/demo_img/{n}" for n in val_names]
        analysis["histogram"] = "check_dataset/histogram.png"
    analysis["errors"] = [dict(p._asdict()) for p in problems.errors]
    analysis["warnings"] = [dict(p._asdict()) for p in problems.warnings]
    analysis["num_errors"] = problems.num_errors()
    analysis["num_warnings"] = problems.num_warnings()
    return result, problems


# --------------------------------------------------------------------------- RecordIO folders
def _recordio_val(root, shown_root, problems, max_errors, workers, log, max_pixels):
    """(pair entries or None, bin pairs [(img a, img b, label)] or None, val analysis) of a RecordIO folder."""
    if os.path.isfile(os.path.join(root, PAIR_LABEL)):
        pair_entries, pair_problems = parse_pair_labels(root, cap=max_errors, shown_root=shown_root)
        problems.extend(pair_problems)
        pair_entries = pair_entries or []
        pair_shown = os.path.join(shown_root, "val", "pair_label.txt")
        refs = {}
        for e in pair_entries:
            refs.setdefault(e.abs_a, (pair_shown, e.line, e.rel_a))
            refs.setdefault(e.abs_b, (pair_shown, e.line, e.rel_b))
        stats = check_images(refs, problems, workers=workers, log=log, max_pixels=max_pixels) if refs else {"bad": set()}
        same = sum(e.label for e in pair_entries)
        val = {"source": "val/pair_label.txt", "pairs": len(pair_entries), "same_pairs": same,
               "different_pairs": len(pair_entries) - same,
               "images": len({p for e in pair_entries for p in (e.abs_a, e.abs_b)})} if pair_entries else None
        return [e for e in pair_entries if e.abs_a not in stats["bad"] and e.abs_b not in stats["bad"]], None, val
    bins = find_bins(root)
    if not bins:
        problems.add(ERROR, os.path.join(shown_root, REC_NAME), None,
                     "no validation data: neither val/pair_label.txt nor a verification .bin beside train.rec",
                     "put lfw.bin (or cfp_fp.bin, agedb_30.bin) beside train.rec, or add val/ with pair_label.txt")
        return None, None, None
    shown_pairs, val = None, None
    for path in bins:
        shown = os.path.join(shown_root, os.path.basename(path))
        try:
            images, issame = read_bin(path)
        except DatasetError as e:
            problems.add(ERROR, shown, None, str(e), "replace the file with a good copy from its source")
            continue
        if shown_pairs is None:
            shown_pairs = []
            for i in range(min(NUM_DEMO, len(issame))):
                try:
                    a = decode_image(images[2 * i], f"{shown} image #{2 * i}")
                    b = decode_image(images[2 * i + 1], f"{shown} image #{2 * i + 1}")
                except DatasetError as e:
                    problems.add(ERROR, shown, None, str(e), "replace the file with a good copy from its source")
                    break
                shown_pairs.append((a, b, int(issame[i])))
            same = int(issame.sum())
            val = {"source": os.path.basename(path), "pairs": int(len(issame)), "same_pairs": same,
                   "different_pairs": int(len(issame)) - same, "images": len(images),
                   "bin_files": [os.path.basename(p) for p in bins]}
    return None, shown_pairs, val


def check_recordio(root, shown_root, output_dir, result, problems, expected_num_classes=None, decode_sample=2000,
                   decode_all=False, workers=2, log=None, max_pixels=DEFAULT_MAX_PIXELS):
    """The RecordIO part of `check`: every record read (framing, header, label), a sample decoded,
    the val pairs or .bin files checked; fills `result`; returns (counts, demo writer or None)."""
    log = log or get_logger()
    rec_shown = os.path.join(shown_root, REC_NAME)
    attrs, analysis = result["attributes"], result["analysis"]
    attrs["train_label_file"] = _relative(os.path.join(root, REC_NAME), output_dir)
    start = time.perf_counter()
    recset = None
    try:
        recset = RecordIOSet(root, strict=False)
    except RecordIOError as e:
        problems.add(ERROR, rec_shown, e.key, str(e), "restore train.rec and train.idx from their source")
    except DatasetError as e:
        problems.add(ERROR, rec_shown, None, str(e), "restore train.rec and train.idx from their source")
    good, sizes = [], {}
    if recset is not None:
        for i in range(len(recset)):
            try:
                if i in recset.unreadable:
                    raise recset.unreadable[i]
                recset.image_bytes(i)
                good.append(i)
            except RecordIOError as e:
                problems.add(ERROR, rec_shown, e.key, str(e).split(": ", 1)[-1],
                             "restore train.rec from its source, or repack the set")
        read_seconds = time.perf_counter() - start
        if decode_all or len(good) <= decode_sample:
            sample = good
        else:
            rng = np.random.default_rng(0)
            sample = [good[i] for i in sorted(rng.choice(len(good), decode_sample, replace=False))]
        start = time.perf_counter()
        for i in sample:
            try:
                img, _ = recset.decode(i)
                sizes[i] = (img.shape[1], img.shape[0])
            except RecordIOError as e:
                problems.add(ERROR, rec_shown, e.key, str(e).split(": ", 1)[-1],
                             "restore train.rec from its source, or repack the set")
        decode_seconds = time.perf_counter() - start
        log.info(f"Read {len(recset)} image records of {recset.reader.rec_path} ({recset.layout} layout) in "
                 f"{read_seconds:.2f} s, decoded {len(sample)} in {decode_seconds:.2f} s")
        prop = read_property_problem(root, shown_root, recset, problems)
        analysis["recordio"] = {"layout": recset.layout, "records": len(recset.reader.keys),
                                "image_records": len(recset), "property": prop,
                                "identity_records": len(recset.identity_ranges or [])}
        analysis["image_check"] = {"listed_files": len(recset), "headers_read": len(recset), "decoded": len(sample),
                                   "method": "every record read (framing, header, label); a fixed sample fully decoded",
                                   "seconds": round(read_seconds + decode_seconds, 2)}
        if expected_num_classes not in (None, "", 0) and int(expected_num_classes) != recset.num_classes:
            problems.add(ERROR, "config Train.num_classes", None,
                         f"Train.num_classes is {expected_num_classes} but train.rec has ids 0..{recset.num_classes - 1} "
                         f"({recset.num_classes} classes)",
                         f"set -o Train.num_classes={recset.num_classes}, or leave it null to take it from the data")
    pair_entries, bin_pairs, val = _recordio_val(root, shown_root, problems, problems.cap, workers, log, max_pixels)
    if val:
        analysis["val"] = val
        attrs["val_samples"] = val["pairs"]
        if val["source"].endswith(".bin"):
            attrs["val_label_file"] = _relative(os.path.join(root, val["source"]), output_dir)
    ids = recset.labels[recset.labels >= 0] if recset is not None else np.zeros(0, np.int64)
    if sizes:
        ws = np.array([s[0] for s in sizes.values()])
        hs = np.array([s[1] for s in sizes.values()])
        values, freq = np.unique(ws * 100000 + hs, return_counts=True)
        common = int(values[freq.argmax()])
        analysis["image_size"] = {"min_width": int(ws.min()), "max_width": int(ws.max()),
                                  "min_height": int(hs.min()), "max_height": int(hs.max()),
                                  "most_common": f"{common // 100000}x{common % 100000}",
                                  "not_112x112": int(((ws != 112) | (hs != 112)).sum()), "of_decoded": len(sizes)}

    def demo(demo_dir):
        os.makedirs(demo_dir, exist_ok=True)
        rng = np.random.default_rng(0)
        decoded = sorted(sizes)
        train_names = []
        for k, j in enumerate(sorted(rng.choice(len(decoded), min(NUM_DEMO, len(decoded)), replace=False))):
            img, label = recset.decode(decoded[j])
            name = f"train_{k:02d}_id{label}_record{recset.keys[decoded[j]]}.jpg"
            cv2.imwrite(os.path.join(demo_dir, name), _banner(_fit(img, 160), f"id {label}", (90, 60, 20)),
                        [cv2.IMWRITE_JPEG_QUALITY, 92])
            train_names.append(name)
        if pair_entries is not None:
            _, val_names = save_demo_images([], pair_entries, set(), demo_dir, max_pixels=max_pixels)
        else:
            val_names = [_save_pair(demo_dir, k, a, b, label) for k, (a, b, label) in enumerate(bin_pairs or [])]
        return train_names, val_names

    return ids, demo


def read_property_problem(root, shown_root, recset, problems):
    try:
        prop = read_property(root)
    except DatasetError as e:
        problems.add(ERROR, os.path.join(shown_root, PROPERTY_NAME), 1, str(e), "write 'num_classes,112,112' in it")
        return None
    if prop is not None and prop[0] != recset.num_classes:
        problems.add(ERROR, os.path.join(shown_root, PROPERTY_NAME), 1,
                     f"property says {prop[0]} classes but the labels in train.rec give {recset.num_classes}",
                     f"correct its first number to {recset.num_classes}, or check that it belongs to this train.rec")
    return list(prop) if prop else None


def failure_message(problems):
    """The reference's message shape, listing every kept problem with its file, line and fix."""
    errors = problems.errors
    lines = ["Check dataset failed. We encountered the following error:"]
    for i, p in enumerate(errors, 1):
        lines.append(f"  [{i}] {format_problem(p)}")
    more = problems.num_errors() - len(errors)
    if more > 0:
        lines.append(f"  ... and {more} more errors (raise CheckDataset.max_errors to list them)")
    lines.append("Please try to resolve the issue as follows:")
    for i, p in enumerate(errors, 1):
        lines.append(f"  [{i}] {p.fix}")
    return "\n".join(lines)
