"""Parsing of the two label files of a face dataset, with line numbers.

    <root>/train/label.txt        <path relative to train/> <identity id>
    <root>/val/pair_label.txt     <path a> <path b> <1 same person | 0 different>

One parser serves both users: the loaders (`load_train_list`, `load_pair_list`), which raise
on the first batch of errors, and `check_dataset`, which wants every problem (up to a cap) as
records it can print and save. Parsing never opens an image, so it stays fast on large lists;
whether the listed files exist and decode is the checker's job (engine/runners/check_dataset.py).

Blank lines and lines starting with '#' are skipped. Fields are separated by whitespace, so a
path cannot contain spaces (the reference format has the same limit).
"""
import os
from collections import Counter, namedtuple

from datasets.image_headers import HeaderError, image_header
from foundation.errors import DatasetError

TRAIN_LABEL = os.path.join("train", "label.txt")
PAIR_LABEL = os.path.join("val", "pair_label.txt")

ERROR = "error"
WARNING = "warning"

# One finding. `file` is the path as the user would type it, `line` is 1-based or None when the
# problem is about the whole file or folder, `fix` says what to change.
Problem = namedtuple("Problem", "level file line message fix")

TrainEntry = namedtuple("TrainEntry", "line rel_path abs_path identity")
PairEntry = namedtuple("PairEntry", "line rel_a rel_b abs_a abs_b label")


class ProblemList:
    """Problems in the order found, keeping at most `cap` of each level but counting all."""

    def __init__(self, cap=50):
        self.cap = cap
        self.items = []
        self.counts = Counter()
        self.kept = Counter()

    def add(self, level, file, line, message, fix):
        self.counts[level] += 1
        if self.kept[level] < self.cap:
            self.kept[level] += 1
            self.items.append(Problem(level, file, line, message, fix))

    def extend(self, other):
        for p in other.items:
            self.add(*p)
        # problems beyond the other list's cap were counted there but not kept
        for level, n in other.counts.items():
            self.counts[level] += n - other.kept[level]

    @property
    def errors(self):
        return [p for p in self.items if p.level == ERROR]

    @property
    def warnings(self):
        return [p for p in self.items if p.level == WARNING]

    def num_errors(self):
        return self.counts[ERROR]

    def num_warnings(self):
        return self.counts[WARNING]


def format_problem(p):
    where = f"{p.file}:{p.line}" if p.line is not None else f"{p.file}"
    return f"{where}: {p.message}"


def check_utf8(path, raw):
    """DatasetError naming the encoding (UTF-16/32 by their byte-order mark or NUL bytes) or the
    first line that is not UTF-8; label files must be UTF-8 text."""
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                      (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if raw.startswith(bom):
            raise DatasetError(f"{path} is {name} text (it starts with a {name} byte-order mark), not UTF-8: save it "
                               "as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8, or 'Save as UTF-8' in the editor)")
    if raw[:200].count(b"\x00") > 10:
        raise DatasetError(f"{path} holds NUL bytes: it looks like UTF-16 or UTF-32 text, not UTF-8: save it as UTF-8")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}): save the file as UTF-8") from None


def _data_lines(path):
    """(line number, stripped text) of each non-blank, non-comment line."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM written by some editors
        raw = raw[3:]
    check_utf8(path, raw)
    for number, line in enumerate(raw.split(b"\n"), start=1):
        text = line.decode("utf-8").strip()
        if not text or text.startswith("#"):
            continue
        yield number, text


def _check_rel_path(rel, split_dir, root, problems, shown, number, what):
    """Absolute path for a path field, or None (with a problem added) when it escapes the root.

    The test is on the written path, not the resolved one: a dataset built with symbolic links
    to images elsewhere (datasets.import_folders --link) is fine.
    """
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        problems.add(ERROR, shown, number, f"{what} '{rel}' is an absolute path",
                     f"write it relative to {os.path.basename(split_dir)}/, e.g. images/{os.path.basename(rel)}")
        return None
    abs_path = os.path.normpath(os.path.join(split_dir, rel))
    root_norm = os.path.normpath(root)
    if os.path.commonpath([abs_path, root_norm]) != root_norm:
        problems.add(ERROR, shown, number, f"{what} '{rel}' points outside the dataset folder",
                     f"keep every image inside {root_norm} and write its path relative to "
                     f"{os.path.basename(split_dir)}/ without '../'")
        return None
    return abs_path


def _label_file(root, which, problems, shown_root):
    rel = TRAIN_LABEL if which == "train" else PAIR_LABEL
    path = os.path.join(root, rel)
    shown = os.path.join(shown_root, rel)
    split = os.path.dirname(rel)
    if not os.path.isdir(root):
        problems.add(ERROR, shown_root, None, "the dataset folder does not exist",
                     "pass the folder holding train/ and val/ with -o Global.dataset_dir=DIR")
        return None, shown
    if not os.path.isdir(os.path.join(root, split)):
        problems.add(ERROR, os.path.join(shown_root, split), None, f"the '{split}/' folder is missing",
                     f"create {os.path.join(shown_root, split)}/ holding {os.path.basename(rel)} and the images "
                     "(see the dataset format in docs/datasets.md)")
        return None, shown
    if not os.path.isfile(path):
        problems.add(ERROR, shown, None, f"the label file {rel} is missing",
                     "add it: " + ("one '<image path relative to train/> <identity id>' per line"
                                   if which == "train" else
                                   "one '<image a> <image b> <1 same person | 0 different>' per line"))
        return None, shown
    return path, shown


def parse_train_labels(root, cap=50, shown_root=None):
    """Entries of train/label.txt and a ProblemList. Also returns None entries if the file is absent.

    Errors: missing folder or file, no data lines, wrong field count, bad paths, non-integer or
    negative ids, smallest id not 0, one image listed with two different ids.
    Warnings: duplicate lines, unused ids between 0 and the largest (with the count).
    """
    root = os.path.abspath(root)
    shown_root = root if shown_root is None else shown_root
    problems = ProblemList(cap)
    path, shown = _label_file(root, "train", problems, shown_root)
    if path is None:
        return None, problems
    split_dir = os.path.join(root, "train")
    entries = []
    first_seen = {}  # rel path -> (line, id)
    for number, text in _data_lines(path):
        fields = text.split()
        if len(fields) != 2:
            problems.add(ERROR, shown, number, f"expected 2 fields '<image path> <identity id>', found {len(fields)}: '{text[:80]}'",
                         "write one image path (no spaces in it) and one integer id separated by a space")
            continue
        rel, ident_text = fields
        try:
            ident = int(ident_text)
        except ValueError:
            problems.add(ERROR, shown, number, f"identity id '{ident_text}' is not an integer",
                         "use integer ids 0, 1, 2, ... (one per person), e.g. 'images/a.jpg 0'")
            continue
        if ident < 0:
            problems.add(ERROR, shown, number, f"identity id {ident} is negative", "ids start at 0")
            continue
        abs_path = _check_rel_path(rel, split_dir, root, problems, shown, number, "image path")
        if abs_path is None:
            continue
        key = os.path.normpath(rel)
        if key in first_seen:
            prev_line, prev_id = first_seen[key]
            if prev_id == ident:
                problems.add(WARNING, shown, number, f"duplicate of line {prev_line} ('{rel} {ident}')",
                             "delete the repeated line (it counts the image twice)")
            else:
                problems.add(ERROR, shown, number, f"image '{rel}' has id {ident} here but id {prev_id} on line {prev_line}",
                             "give each image exactly one identity id")
            continue
        first_seen[key] = (number, ident)
        entries.append(TrainEntry(number, rel, abs_path, ident))
    if not entries and problems.num_errors() == 0:
        problems.add(ERROR, shown, None, "the label file lists no images (it is empty or only has comments)",
                     "add one '<image path relative to train/> <identity id>' line per training image")
    if entries:
        ids = {e.identity for e in entries}
        smallest, largest = min(ids), max(ids)
        if smallest != 0:
            line = next(e.line for e in entries if e.identity == smallest)
            problems.add(ERROR, shown, line, f"identity ids must start at 0, the smallest is {smallest}",
                         f"renumber the ids to 0..{len(ids) - 1} (subtract {smallest} from every id)")
        gaps = largest + 1 - len(ids)
        if gaps > 0:
            missing = sorted(set(range(largest + 1)) - ids)
            preview = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            problems.add(WARNING, shown, None, f"{gaps} ids between 0 and {largest} have no images ({preview}); "
                         f"the classifier head still gets {largest + 1} classes",
                         f"renumber the ids to 0..{len(ids) - 1} to drop the unused classes (optional)")
    return entries, problems


def parse_pair_labels(root, cap=50, shown_root=None):
    """Entries of val/pair_label.txt and a ProblemList (None entries if the file is absent).

    Errors: missing folder or file, no data lines, wrong field count, bad paths, label not 0/1,
    a pair naming the same image twice, the same pair with both labels.
    Warnings: duplicate pairs (in either order), pairs all of one label.
    """
    root = os.path.abspath(root)
    shown_root = root if shown_root is None else shown_root
    problems = ProblemList(cap)
    path, shown = _label_file(root, "val", problems, shown_root)
    if path is None:
        return None, problems
    split_dir = os.path.join(root, "val")
    entries = []
    first_seen = {}  # frozenset of the two paths -> (line, label)
    for number, text in _data_lines(path):
        fields = text.split()
        if len(fields) != 3:
            problems.add(ERROR, shown, number, f"expected 3 fields '<image a> <image b> <0|1>', found {len(fields)}: '{text[:80]}'",
                         "write two image paths (no spaces in them) and the label 1 (same person) or 0 (different)")
            continue
        rel_a, rel_b, label_text = fields
        if label_text not in ("0", "1"):
            problems.add(ERROR, shown, number, f"pair label '{label_text}' is not 0 or 1",
                         "use 1 when both images show the same person, 0 when they do not")
            continue
        label = int(label_text)
        abs_a = _check_rel_path(rel_a, split_dir, root, problems, shown, number, "first image path")
        abs_b = _check_rel_path(rel_b, split_dir, root, problems, shown, number, "second image path")
        if abs_a is None or abs_b is None:
            continue
        if abs_a == abs_b:
            problems.add(ERROR, shown, number, f"the pair names the same image twice ('{rel_a}')",
                         "pair two different images (a same-person pair needs two photos of that person)")
            continue
        key = frozenset((abs_a, abs_b))
        if key in first_seen:
            prev_line, prev_label = first_seen[key]
            if prev_label == label:
                problems.add(WARNING, shown, number, f"duplicate of the pair on line {prev_line}",
                             "delete the repeated line (it counts the pair twice)")
            else:
                problems.add(ERROR, shown, number, f"this pair has label {label} here but {prev_label} on line {prev_line}",
                             "keep the line with the correct label and delete the other")
            continue
        first_seen[key] = (number, label)
        entries.append(PairEntry(number, rel_a, rel_b, abs_a, abs_b, label))
    if not entries and problems.num_errors() == 0:
        problems.add(ERROR, shown, None, "the label file lists no pairs (it is empty or only has comments)",
                     "add one '<image a> <image b> <1|0>' line per validation pair")
    if entries:
        labels = {e.label for e in entries}
        if len(labels) == 1:
            only = "same-person (1)" if 1 in labels else "different-person (0)"
            problems.add(WARNING, shown, None, f"all {len(entries)} pairs are {only} pairs; "
                         "verification accuracy and thresholds need both kinds",
                         "add pairs of the other label (about as many as of this one)")
    return entries, problems


def _raise_if_errors(problems, what):
    errors = problems.errors
    if not errors:
        return
    shown = errors[:5]
    lines = [f"{format_problem(p)}. Fix: {p.fix}" for p in shown]
    more = problems.num_errors() - len(shown)
    tail = f" (and {more} more; run -o Global.mode=check_dataset for the full list)" if more > 0 else ""
    raise DatasetError(f"cannot use {what}: " + " | ".join(lines) + tail)


def load_train_list(dataset_dir):
    """[(absolute image path, identity id)] from <dataset_dir>/train/label.txt, in file order.

    Raises DatasetError naming file:line on malformed lines. Does not open the images.
    """
    entries, problems = parse_train_labels(dataset_dir, cap=5)
    _raise_if_errors(problems, "the training list")
    return [(e.abs_path, e.identity) for e in entries]


def load_pair_list(dataset_dir, check_images=False):
    """[(absolute path a, absolute path b, 1 same | 0 different)] from <dataset_dir>/val/pair_label.txt.

    Raises DatasetError naming file:line on malformed lines. With `check_images`, every image's
    header is read too (missing, empty, not an image, truncated): training checks its validation
    set this way before epoch 1 rather than failing after it.
    """
    entries, problems = parse_pair_labels(dataset_dir, cap=5)
    if check_images and not problems.errors:
        shown = os.path.join(str(dataset_dir), PAIR_LABEL)
        seen = set()
        for e in entries:
            for rel, path in ((e.rel_a, e.abs_a), (e.rel_b, e.abs_b)):
                if path in seen:
                    continue
                seen.add(path)
                try:
                    image_header(path)
                except HeaderError as err:
                    problems.add(ERROR, shown, e.line, f"image '{rel}': {err}",
                                 "fix or replace the image, or remove the pair's line")
    _raise_if_errors(problems, "the validation pairs")
    return [(e.abs_a, e.abs_b, e.label) for e in entries]
