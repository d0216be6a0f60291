"""Import a folder-per-identity photo collection into the train/val layout.

    SRC/person_a/*.jpg, SRC/person_b/*.jpg, ...   ->   DST/train/label.txt, DST/val/pair_label.txt

    python -m datasets.import_folders SRC DST --val-identities 10 [--pairs N] [--seed 0] [--copy | --link]

The split is by identity: the --val-identities people (chosen with the seed) appear only in the
validation pairs, everyone else only in training, so validation measures how the model does on
people it has never seen. Pairs are balanced (half same person, half different people), never
repeated, and alternate same/different so every fold of the 10-fold protocol holds both kinds.

Images keep their format and bytes (the loaders read JPEG, PNG, BMP and PGM through
datasets/transforms.read_image, so e.g. the ORL faces' PGM files are used as they are); --link
makes symbolic links instead of copies. Folder and file names with spaces are written with '_'
because the label files are space-separated. The output is built in a temporary folder and
renamed into place, so a failed import leaves no half-written dataset.

Raw photos (several faces, background, any size) can be detected and aligned on the way in:
`python -m engine.align_folders SRC DST ...` (same options) passes a `convert` callable that turns
each photo into its aligned 112x112 face. That command lives in engine because this package may
not import the detector (models); `import_folders(..., convert=f)` is the hook it uses.
"""
import argparse
import os
import re
import shutil
import sys

import cv2
import numpy as np

from datasets.transforms import IMAGE_EXTENSIONS, list_images
from foundation.atomic_io import make_temp_dir, move_dir_into_place
from foundation.errors import DatasetError


def scan_identities(src):
    """{identity folder name: [image paths, sorted]} for every sub-folder of `src` (recursive inside)."""
    if not os.path.isdir(src):
        raise DatasetError(f"source folder '{src}' does not exist (expected SRC/<person>/<images>)")
    people = {}
    for name in sorted(os.listdir(src)):
        folder = os.path.join(src, name)
        if not os.path.isdir(folder) or name.startswith("."):
            continue
        people[name] = list_images(folder)
    return people


def _safe(name):
    return re.sub(r"\s+", "_", name.strip()) or "_"


def _same_pairs_possible(counts):
    return sum(c * (c - 1) // 2 for c in counts)


def _diff_pairs_possible(counts):
    total = sum(counts)
    return (total * total - sum(c * c for c in counts)) // 2


def make_pairs(val_people, num_pairs, seed):
    """Balanced pairs [(path a, path b, label)] from {name: [images]}; alternating same/different."""
    names = sorted(val_people)
    counts = [len(val_people[n]) for n in names]
    half = num_pairs // 2
    max_same, max_diff = _same_pairs_possible(counts), _diff_pairs_possible(counts)
    single = sum(1 for c in counts if c == 1)
    if half > max_same:
        raise DatasetError(
            f"{num_pairs} balanced pairs need {half} same-person pairs, but the {len(names)} validation identities "
            f"allow only {max_same} ({single} of them have a single image, which can only be in different-person "
            f"pairs): use --pairs {2 * max_same} or fewer, or more --val-identities")
    if half > max_diff:
        raise DatasetError(f"{num_pairs} balanced pairs need {half} different-person pairs, but only {max_diff} "
                           f"are possible: use --pairs {2 * max_diff} or fewer")
    rng = np.random.default_rng([seed, 1])
    # enumerate the same-person candidates when there are few, sample when there are many
    multi = [i for i, c in enumerate(counts) if c >= 2]
    seen, same, diff = set(), [], []
    if max_same <= 4 * half + 1000:
        cands = [(i, a, i, b) for i in multi for a in range(counts[i]) for b in range(a + 1, counts[i])]
        same = [cands[k] for k in rng.permutation(len(cands))[:half]]
    else:
        weights = np.array([counts[i] * (counts[i] - 1) / 2 for i in multi], np.float64)
        weights /= weights.sum()
        while len(same) < half:
            i = multi[int(rng.choice(len(multi), p=weights))]
            a, b = sorted(int(v) for v in rng.choice(counts[i], 2, replace=False))
            if (i, a, i, b) not in seen:
                seen.add((i, a, i, b))
                same.append((i, a, i, b))
    owner = np.repeat(np.arange(len(names)), counts)
    index_in = np.concatenate([np.arange(c) for c in counts]) if counts else np.zeros(0, np.int64)
    if max_diff <= 4 * half + 1000:
        cands = [(int(owner[x]), int(index_in[x]), int(owner[y]), int(index_in[y]))
                 for x in range(len(owner)) for y in range(x + 1, len(owner)) if owner[x] != owner[y]]
        diff = [cands[k] for k in rng.permutation(len(cands))[:half]]
    else:
        while len(diff) < half:
            x, y = sorted(int(v) for v in rng.choice(len(owner), 2, replace=False))
            if owner[x] == owner[y]:
                continue
            key = (int(owner[x]), int(index_in[x]), int(owner[y]), int(index_in[y]))
            if key not in seen:
                seen.add(key)
                diff.append(key)
    pairs = []
    for s, d in zip(same, diff):
        for (i, a, j, b), label in ((s, 1), (d, 0)):
            pairs.append((names[i], a, names[j], b, label))
    return pairs


def _place(src, dst, mode):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if mode == "link":
        os.symlink(os.path.abspath(src), dst)
    else:
        shutil.copyfile(src, dst)


CONVERT_REPORT = "convert_report.txt"


def _convert_all(people, convert, staging, log):
    """Run `convert` over every image: {source path: staged .png}, [(path, note) dropped], [(path, note) kept
    with a note]. convert(path) -> (BGR image or None, note)."""
    staged, dropped, noted = {}, [], []
    total = sum(len(v) for v in people.values())
    done = 0
    os.makedirs(staging)
    for name in sorted(people):
        for path in people[name]:
            img, note = convert(path)
            if img is None:
                dropped.append((path, note or "dropped"))
            else:
                out = os.path.join(staging, f"{len(staged)}.png")
                ok, data = cv2.imencode(".png", img)
                if not ok:
                    raise DatasetError(f"cannot encode the converted image of {path}")
                data.tofile(out)
                staged[path] = out
                if note:
                    noted.append((path, note))
            done += 1
            if done % 500 == 0 or done == total:
                log(f"converted {done}/{total} images ({len(dropped)} dropped so far)")
    return staged, dropped, noted


def import_folders(src, dst, val_identities=10, pairs=None, seed=0, mode="copy", overwrite=False, log=print,
                   convert=None):
    """Build DST/train and DST/val from SRC/<identity>/<images>; returns a summary dict.

    convert: None (the files are copied or linked as they are) or a callable path -> (BGR image or
    None, note) applied to every image first; its images are written as PNG, an image it returns
    None for is left out, and every such image and every non-empty note is listed in
    DST/convert_report.txt (and in the summary: "dropped", "noted")."""
    if convert is not None and mode == "link":
        raise DatasetError("--link cannot be used when images are converted (aligned faces are new files)")
    people = scan_identities(src)
    empty = [n for n, imgs in people.items() if not imgs]
    people = {n: imgs for n, imgs in people.items() if imgs}
    if not people:
        raise DatasetError(f"source folder '{src}' has no identity folders with images "
                           f"(expected SRC/<person>/<image files {', '.join(IMAGE_EXTENSIONS)}>)")
    if empty:
        log(f"Skipping {len(empty)} folders without images: {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}")
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)) and not overwrite:
        raise DatasetError(f"destination '{dst}' already exists and is not empty: choose a new folder or pass --overwrite")
    if os.path.abspath(src) == dst or dst.startswith(os.path.abspath(src) + os.sep):
        raise DatasetError("destination must not be inside the source folder")
    tmp = make_temp_dir(dst)
    try:
        summary = _build(src, dst, tmp, people, empty, val_identities, pairs, seed, mode, log, convert)
        move_dir_into_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _build(src, dst, tmp, people, empty, val_identities, pairs, seed, mode, log, convert):
    """Everything of import_folders after the checks of SRC and DST, written into `tmp`."""
    staged, dropped, noted = {}, [], []
    if convert is not None:
        staged, dropped, noted = _convert_all(people, convert, os.path.join(tmp, ".convert"), log)
        lost = [n for n in people if not any(p in staged for p in people[n])]
        people = {n: [p for p in imgs if p in staged] for n, imgs in people.items() if n not in lost}
        if lost:
            log(f"Skipping {len(lost)} folders with no image left after conversion: "
                f"{', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}")
        empty = empty + lost
        if not people:
            raise DatasetError(f"no image of '{src}' was kept by the conversion ({len(dropped)} dropped, e.g. "
                               f"{dropped[0][0]}: {dropped[0][1]})" if dropped else f"no image in '{src}'")
    names = sorted(people)
    safe = {}
    for n in names:  # label files are space-separated: no whitespace in written paths
        s = _safe(n)
        while s in safe.values():
            s += "_"
        safe[n] = s
    if val_identities < 0 or val_identities >= len(names):
        raise DatasetError(f"--val-identities {val_identities} must be between 0 and {len(names) - 1} "
                           f"(the source has {len(names)} identities and training needs at least one)")
    if val_identities == 1:
        raise DatasetError("--val-identities 1 cannot make different-person pairs: use 0 or at least 2")
    rng = np.random.default_rng([seed, 0])
    order = [names[i] for i in rng.permutation(len(names))]
    val_names = sorted(order[:val_identities])
    train_names = sorted(order[val_identities:])
    val_people = {n: people[n] for n in val_names}
    if val_identities:
        counts = [len(people[n]) for n in val_names]
        max_same = _same_pairs_possible(counts)
        default = min(600, 2 * max_same, 2 * _diff_pairs_possible(counts))
        num_pairs = default if pairs is None else int(pairs)
        if num_pairs % 2 or num_pairs <= 0:
            raise DatasetError(f"--pairs {num_pairs} must be a positive even number (half same, half different)"
                               + (f"; {max_same} same-person pairs are possible from the validation identities"
                                  if num_pairs <= 0 else ""))
        pair_list = make_pairs(val_people, num_pairs, seed)
    else:
        pair_list = []

    def rel_name(name, path):
        inner = os.path.relpath(path, os.path.join(src, name))
        if convert is not None:  # converted images are PNG files
            inner = os.path.splitext(inner)[0] + ".png"
        return "/".join(["images", safe[name]] + [_safe(part) for part in inner.split(os.sep)])

    def place(path, dst_path):
        if convert is not None:
            os.makedirs(os.path.dirname(dst_path), exist_ok=True)
            os.replace(staged[path], dst_path)
        else:
            _place(path, dst_path, mode)

    how = "converted by engine/align_folders.py" if convert is not None else "by datasets/import_folders.py"
    lines = [f"# imported from {os.path.abspath(src)} {how} (seed {seed}): "
             "<image path relative to train/> <identity id>"]
    id_lines = ["# <identity id> <source folder name>"]
    for ident, name in enumerate(train_names):
        id_lines.append(f"{ident} {name}")
        for path in people[name]:
            rel = rel_name(name, path)
            place(path, os.path.join(tmp, "train", *rel.split("/")))
            lines.append(f"{rel} {ident}")
    os.makedirs(os.path.join(tmp, "train"), exist_ok=True)
    with open(os.path.join(tmp, "train", "label.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(tmp, "train", "identities.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(id_lines) + "\n")
    os.makedirs(os.path.join(tmp, "val"), exist_ok=True)
    for name in val_names:
        for path in people[name]:
            place(path, os.path.join(tmp, "val", *rel_name(name, path).split("/")))
    lines = [f"# imported from {os.path.abspath(src)} {how} (seed {seed}): "
             "<image a> <image b> <1 same person | 0 different>"]
    for na, a, nb, b, label in pair_list:
        lines.append(f"{rel_name(na, people[na][a])} {rel_name(nb, people[nb][b])} {label}")
    with open(os.path.join(tmp, "val", "pair_label.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    report = None
    if convert is not None:
        shutil.rmtree(os.path.join(tmp, ".convert"), ignore_errors=True)  # images of dropped people
        report = os.path.join(dst, CONVERT_REPORT)
        with open(os.path.join(tmp, CONVERT_REPORT), "w", encoding="utf-8") as f:
            f.write("# <source image>\t<what happened>: dropped images first, then images kept with a note\n")
            f.writelines(f"{p}\tdropped: {note}\n" for p, note in dropped)
            f.writelines(f"{p}\tkept: {note}\n" for p, note in noted)
    counts = [len(people[n]) for n in val_names]
    return {
        "train_identities": len(train_names), "train_images": sum(len(people[n]) for n in train_names),
        "val_identities": len(val_names), "val_images": sum(counts), "pairs": len(pair_list),
        "same_pairs": sum(p[4] for p in pair_list), "same_pairs_possible": _same_pairs_possible(counts),
        "val_single_image_identities": sum(1 for c in counts if c == 1),
        "val_names": val_names, "train_names": train_names, "skipped_empty": empty, "dst": dst,
        "dropped": dropped, "noted": noted, "report": report,
    }


def build_parser(prog="python -m datasets.import_folders",
                 description="Folder per identity -> train/label.txt + val/pair_label.txt, split by identity."):
    """The command line of the importer (engine/align_folders.py adds its detector options to it)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("src", help="folder with one sub-folder of images per person")
    parser.add_argument("dst", help="dataset folder to create (train/ and val/ inside)")
    parser.add_argument("--val-identities", type=int, default=10, help="people held out for validation pairs (default 10)")
    parser.add_argument("--pairs", type=int, default=None,
                        help="validation pairs, even, half same / half different (default: up to 600 as the data allows)")
    parser.add_argument("--seed", type=int, default=0)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--copy", dest="mode", action="store_const", const="copy", help="copy the images (default)")
    group.add_argument("--link", dest="mode", action="store_const", const="link", help="symbolic links to the images")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    parser.set_defaults(mode="copy")
    return parser


def run_import(args, convert=None, show=5):
    """Import as `args` (from build_parser) say, print the summary; returns the exit code."""
    try:
        s = import_folders(args.src, args.dst, args.val_identities, args.pairs, args.seed, args.mode, args.overwrite,
                           convert=convert)
    except DatasetError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    how = "converted" if convert is not None else args.mode
    print(f"Imported {s['train_images']} train images of {s['train_identities']} identities and "
          f"{s['val_images']} val images of {s['val_identities']} identities into {s['dst']} ({how})")
    if s["val_identities"]:
        print(f"Validation pairs: {s['pairs']} ({s['same_pairs']} same, {s['pairs'] - s['same_pairs']} different; "
              f"{s['same_pairs_possible']} same-person pairs were possible"
              + (f", {s['val_single_image_identities']} val identities have a single image" if s['val_single_image_identities'] else "")
              + ")")
    for what, rows in (("left out", s["dropped"]), ("kept with a note", s["noted"])):
        if rows:
            shown = "; ".join(f"{p} ({note})" for p, note in rows[:show])
            print(f"{len(rows)} image(s) {what}: {shown}{' ...' if len(rows) > show else ''}")
    if s["report"]:
        print(f"Every image left out or noted is listed in {s['report']}")
    print(f"Next: python main.py -c configs/face_recognition/MobileFaceNet.yaml -o Global.mode=check_dataset "
          f"-o Global.dataset_dir={args.dst}")
    return 0


def main(argv=None):
    parser = build_parser()
    parser.add_argument("--align", action="store_true",
                        help="detect and align faces: run python -m engine.align_folders with the same arguments")
    args = parser.parse_args(argv)
    if args.align:  # the detector is in models/, which this package may not import
        parser.error("--align: run `python -m engine.align_folders SRC DST ...` (same options): it detects and "
                     "aligns the faces; this command copies images as they are")
    return run_import(args)


if __name__ == "__main__":
    sys.exit(main())
