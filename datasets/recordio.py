"""insightface / MXNet RecordIO face sets (train.rec + train.idx + property), read without MXNet.

The large training sets (MS1M-ArcFace / MS1MV3, Glint360K, WebFace) ship this way.

Framing (dmlc-core recordio): each record is one or more parts, each part
    uint32 magic 0xced7230a | uint32 lrecord (upper 3 bits: continuation flag, lower 29: length)
    | payload | zero padding to a multiple of 4 bytes.
Flag 0 is a whole record; a record whose payload holds the magic at a 4-byte aligned position is
split there into parts 1 (first), 2 (middle) ... 3 (last), the magic itself being dropped: the
reader puts it back between the parts.

Payload of an image record (mx.recordio.pack): IRHeader 'IfQQ' (flag uint32, label float32,
id uint64, id2 uint64); when flag > 0 the label field is unused and `flag` float32 labels follow;
then the encoded image (JPEG/PNG).

train.idx: text lines "<key>\\t<byte offset of the record in train.rec>".

Two layouts, told apart as insightface's MXFaceDataset does (record 0 with flag > 0), and here
also by record 0 holding no image:
- header layout (insightface MS1M style): record 0 has labels (first identity record, end); the
  image records are 1 .. first_identity_record - 1; identity records first..end-1 each have the
  labels (start, end) of their images' record range, identity k being class k.
- plain layout: every record in the .idx is an image with its label (in .idx order).

Commands:
    python -m datasets.recordio pack SRC_DATASET_DIR DST_DIR     folder set -> train.rec/.idx/property
    python -m datasets.recordio unpack REC_DIR OUT_DIR           -> train/images/<id>/<n>.jpg + label.txt
"""
import argparse
import glob
import os
import shutil
import struct
import sys

import cv2
import numpy as np

from datasets.face_dataset import TrainImageDataset
from datasets.label_files import PAIR_LABEL, load_train_list
from datasets.transforms import IMAGE_SIZE, ImageReadError, to_bgr
from foundation.atomic_io import atomic_replace_dir
from foundation.errors import DatasetError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
REC_NAME, IDX_NAME, PROPERTY_NAME = "train.rec", "train.idx", "property"
BIN_PREFERENCE = ("lfw.bin", "cfp_fp.bin", "agedb_30.bin")


class RecordIOError(ImageReadError):
    """A record that cannot be read or decoded; the message names the .rec file and the record."""

    def __init__(self, message, key=None):
        super().__init__(message)
        self.key = key

    def __reduce__(self):  # travels from a loader worker with its key
        return (type(self), (self.args[0], self.key))


def is_recordio_dir(path):
    return os.path.isfile(os.path.join(str(path), REC_NAME))


# --------------------------------------------------------------------------- records
def pack_record(label, image, id=0, id2=0):
    """mx.recordio.pack: IRHeader + labels + image bytes. A sequence label is stored as flag labels."""
    if np.ndim(label) == 0:
        return _IR.pack(0, float(label), int(id), int(id2)) + bytes(image)
    labels = np.asarray(label, dtype="<f4").ravel()
    return _IR.pack(labels.size, 0.0, int(id), int(id2)) + labels.tobytes() + bytes(image)


def unpack_record(payload):
    """(label: float or float32 array, image bytes, id, id2) of a record payload (mx.recordio.unpack)."""
    if len(payload) < _IR.size:
        raise ValueError(f"payload of {len(payload)} bytes is shorter than the {_IR.size}-byte IRHeader")
    flag, label, id_, id2 = _IR.unpack_from(payload)
    rest = payload[_IR.size:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise ValueError(f"IRHeader says {flag} labels but the payload ends after {len(rest)} bytes")
        label = np.frombuffer(rest[:4 * flag], dtype="<f4").copy()
        rest = rest[4 * flag:]
    return label, rest, id_, id2


def first_label(label):
    return float(label) if np.ndim(label) == 0 else float(label[0])


def encode_frames(payload):
    """The bytes of one record as dmlc-core writes it (split at aligned magic numbers)."""
    out, dptr, n = [], 0, len(payload)
    for i in range(0, (n >> 2) << 2, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            out += [_FRAME.pack(MAGIC, ((1 if dptr == 0 else 2) << 29) | (i - dptr)), payload[dptr:i]]
            dptr = i + 4
    out += [_FRAME.pack(MAGIC, ((3 if dptr else 0) << 29) | (n - dptr)), payload[dptr:], b"\0" * (-n % 4)]
    return b"".join(out)


class RecordIOWriter:
    """Write records and their .idx (key, offset) lines; use as a context manager."""

    def __init__(self, rec_path, idx_path):
        self.rec = open(rec_path, "wb")
        self.idx = open(idx_path, "w", encoding="ascii")

    def write(self, key, payload):
        if len(payload) >= 1 << 29:
            raise ValueError(f"record {key} has {len(payload)} bytes, more than RecordIO's 2^29 - 1")
        self.idx.write(f"{int(key)}\t{self.rec.tell()}\n")
        self.rec.write(encode_frames(payload))

    def close(self):
        self.rec.close()
        self.idx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_idx(idx_path):
    """[(key, offset)] of a .idx file, in file order."""
    entries = []
    with open(idx_path, "r", encoding="ascii", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                entries.append((int(fields[0]), int(fields[1])))
            except (ValueError, IndexError):
                raise DatasetError(f"{idx_path}:{number}: expected '<key>\\t<offset>', found '{line.strip()[:80]}'") from None
    return entries


class RecordIOReader:
    """Random access to the records of a .rec through its .idx: seek + read.

    The file is opened on first use in each process (a reader copied into a forked loader worker
    opens its own handle, so processes never share a file position). Picklable.
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = str(rec_path)
        self.idx_path = str(idx_path) if idx_path else os.path.splitext(self.rec_path)[0] + ".idx"
        if not os.path.isfile(self.rec_path):
            raise DatasetError(f"RecordIO file not found: {self.rec_path}")
        if not os.path.isfile(self.idx_path):
            raise DatasetError(f"{self.rec_path}: its index {self.idx_path} is missing: RecordIO sets come as "
                               "train.rec + train.idx; copy the .idx from the same source")
        self.entries = read_idx(self.idx_path)
        self.offsets = dict(self.entries)
        self.keys = [k for k, _ in self.entries]
        self._file, self._pid = None, None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open(self.rec_path, "rb"), os.getpid()
        return self._file

    def error(self, key, what):
        return RecordIOError(f"{self.rec_path}: record {key}: {what}", key)

    def read(self, key):
        """The payload of record `key`; RecordIOError naming the file and the record when corrupt."""
        if key not in self.offsets:
            raise self.error(key, "not in the index")
        f = self._handle()
        f.seek(self.offsets[key])
        parts = []
        while True:
            head = f.read(_FRAME.size)
            if len(head) < _FRAME.size:
                raise self.error(key, "truncated (the file ends inside the record header)")
            magic, lrec = _FRAME.unpack(head)
            if magic != MAGIC:
                raise self.error(key, f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x}): corrupt file or wrong .idx offset")
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            data = f.read(length + (-length % 4))
            if len(data) < length:
                raise self.error(key, f"truncated (the record says {length} bytes, the file has {len(data)})")
            parts.append(data[:length])
            if cflag in (0, 3):
                break
            if cflag not in (1, 2) or (cflag == 2 and len(parts) == 1):
                raise self.error(key, f"bad continuation flag {cflag}")
        return _MAGIC_BYTES.join(parts)

    def read_unpacked(self, key):
        try:
            return unpack_record(self.read(key))
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def close(self):
        if self._file is not None:
            self._file.close()
        self._file, self._pid = None, None


# --------------------------------------------------------------------------- the set
def _header_layout(reader):
    """(first identity key, end key) when record 0 is an insightface header record, else None."""
    if 0 not in reader.offsets:
        return None
    label, image, _, _ = reader.read_unpacked(0)
    if np.ndim(label) == 0 or len(label) < 2 or len(image) > 0:
        return None
    first, end = int(label[0]), int(label[1])
    return (first, end) if 1 <= first <= end else None


def read_property(folder):
    """(num_classes, height, width) from <folder>/property, or None when there is none."""
    path = os.path.join(folder, PROPERTY_NAME)
    if not os.path.isfile(path):
        return None
    text = open(path, encoding="ascii", errors="replace").read().strip()
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise DatasetError(f"{path}: expected 'num_classes,height,width' (e.g. '85742,112,112'), found '{text[:80]}'")
    return tuple(values)


class RecordIOSet:
    """The image records of a RecordIO folder: keys (in sample order), labels, layout.

    strict=False (the dataset check) keeps going past records whose header cannot be read: their
    label is -1 and `unreadable` lists {sample index: RecordIOError}.
    """

    def __init__(self, folder, strict=True):
        self.folder = os.path.abspath(str(folder))
        self.strict = strict
        self.unreadable = {}
        self.reader = RecordIOReader(os.path.join(self.folder, REC_NAME), os.path.join(self.folder, IDX_NAME))
        self.header = _header_layout(self.reader)
        self.identity_ranges = None
        if self.header:
            first, end = self.header
            self.layout = "header"
            self.keys = list(range(1, first))
            missing = [k for k in self.keys if k not in self.reader.offsets]
            if missing:
                raise DatasetError(f"{self.reader.rec_path}: record 0 says the images are records 1..{first - 1}, "
                                   f"but {len(missing)} of them are not in {self.reader.idx_path} (first: {missing[0]})")
            ranges = []
            for key in range(first, end):
                if key not in self.reader.offsets:
                    ranges = None
                    break
                label, _, _, _ = self.reader.read_unpacked(key)
                ranges.append((int(label[0]), int(label[1])) if np.ndim(label) else (0, 0))
            self.identity_ranges = ranges or None
        else:
            self.layout = "plain"
            self.keys = list(self.reader.keys)
        self.labels = self._labels()

    def _labels(self):
        if self.identity_ranges:
            labels = np.full(len(self.keys), -1, np.int64)
            for ident, (a, b) in enumerate(self.identity_ranges):
                if a < 1 or b < a or b > len(self.keys) + 1:
                    raise DatasetError(f"{self.reader.rec_path}: identity record {self.header[0] + ident} gives the "
                                       f"image range {a}..{b - 1}, outside the image records 1..{len(self.keys)}")
                labels[a - 1:b - 1] = ident
            if (labels >= 0).all():
                return labels
        # every image header (plain layout)
        labels = np.full(len(self.keys), -1, np.int64)
        for i, key in enumerate(self.keys):
            try:
                labels[i] = int(first_label(self.reader.read_unpacked(key)[0]))
            except RecordIOError as e:
                if self.strict:
                    raise
                self.unreadable[i] = e
        return labels

    def __len__(self):
        return len(self.keys)

    @property
    def num_classes(self):
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def image_bytes(self, index):
        """(encoded image, label) of sample `index`, checking the record's own label."""
        key = self.keys[index]
        label, image, _, _ = self.reader.read_unpacked(key)
        found = int(first_label(label))
        if found != self.labels[index]:
            raise self.reader.error(key, f"its label {found} differs from {self.labels[index]} given by the identity records")
        return image, found

    def decode(self, index):
        """BGR uint8 image of sample `index`; RecordIOError when it does not decode."""
        image, label = self.image_bytes(index)
        arr = np.frombuffer(image, dtype=np.uint8)
        img = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED) if arr.size else None
        if img is None:
            raise self.reader.error(self.keys[index], f"the image ({len(image)} bytes) does not decode "
                                    "(not a JPEG/PNG, or corrupt)")
        try:
            return to_bgr(img), label
        except ImageReadError as e:
            raise self.reader.error(self.keys[index], str(e)) from None


class RecordIOTrainDataset(TrainImageDataset):
    """FaceTrainDataset's interface over a RecordIO folder: (CHW float32 in [-1, 1], int64 id).

    Sample i is the i-th image record; its flip is flip_decision(seed, epoch, i), so a set packed
    from a folder set trains on the same batches as the folder set. Decoding runs where
    __getitem__ runs (the loader workers); each worker opens the .rec itself.
    """

    def __init__(self, recset, flip_prob=0.5, seed=0, image_size=IMAGE_SIZE):
        super().__init__(flip_prob, seed, image_size)
        self.recset = recset if isinstance(recset, RecordIOSet) else RecordIOSet(recset)

    def __len__(self):
        return len(self.recset)

    def load(self, index):
        return self.recset.decode(index)

    @property
    def num_classes(self):
        return self.recset.num_classes


def find_bins(folder):
    """Verification .bin files beside train.rec: lfw, cfp_fp, agedb_30 first, then the rest sorted."""
    found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(str(folder), "*.bin")))
    ordered = [n for n in BIN_PREFERENCE if n in found] + [n for n in found if n not in BIN_PREFERENCE]
    return [os.path.join(str(folder), n) for n in ordered]


# --------------------------------------------------------------------------- converters
def _image_ext(data):
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:2] in (b"P2", b"P5"):
        return "pgm"
    return "jpg"


def _new_dir(dst, build):
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise DatasetError(f"{dst} exists and is not empty: choose a new output folder")
    atomic_replace_dir(build, dst)
    return dst


def pack(src_dir, dst_dir):
    """Folder set (train/label.txt + images, val/) -> dst_dir/train.rec, train.idx, property (+ val/, *.bin).

    Records keep the label file's order. When the images of each identity are contiguous and the
    ids ascend, the insightface header layout is written (record 0, images 1..N, identity
    records); otherwise every record is an image with its label (plain layout).
    """
    src_dir = os.path.abspath(src_dir)
    samples = load_train_list(src_dir)
    if not samples:
        raise DatasetError(f"{src_dir}/train/label.txt lists no images")
    labels = [lbl for _, lbl in samples]
    num_classes = max(labels) + 1
    grouped = all(a <= b for a, b in zip(labels, labels[1:]))
    first_img = cv2.imdecode(np.fromfile(samples[0][0], np.uint8), cv2.IMREAD_UNCHANGED)
    h, w = (first_img.shape[:2] if first_img is not None else (IMAGE_SIZE, IMAGE_SIZE))
    n = len(samples)

    def build(tmp):
        with RecordIOWriter(os.path.join(tmp, REC_NAME), os.path.join(tmp, IDX_NAME)) as out:
            offset = 1 if grouped else 0
            if grouped:
                out.write(0, pack_record([n + 1, n + 1 + num_classes], b""))
            for i, (path, label) in enumerate(samples):
                with open(path, "rb") as f:
                    data = f.read()
                out.write(i + offset, pack_record(float(label), data, id=i + offset))
            if grouped:
                starts = np.searchsorted(labels, np.arange(num_classes + 1))
                for ident in range(num_classes):
                    out.write(n + 1 + ident, pack_record([starts[ident] + 1, starts[ident + 1] + 1], b""))
        with open(os.path.join(tmp, PROPERTY_NAME), "w", encoding="ascii") as f:
            f.write(f"{num_classes},{h},{w}")
        if os.path.isdir(os.path.join(src_dir, "val")):
            shutil.copytree(os.path.join(src_dir, "val"), os.path.join(tmp, "val"))
        for b in find_bins(src_dir):
            shutil.copy2(b, tmp)

    return _new_dir(dst_dir, build), n, num_classes, ("header" if grouped else "plain")


def unpack(rec_dir, out_dir):
    """RecordIO folder -> out_dir/train/images/<id>/<n>.<ext> + train/label.txt (stored bytes as they
    are, nothing re-encoded), with val/ and *.bin copied."""
    recset = RecordIOSet(rec_dir)

    def build(tmp):
        counts, lines = {}, []
        for i in range(len(recset)):
            data, label = recset.image_bytes(i)
            k = counts.get(label, 0)
            counts[label] = k + 1
            rel = f"images/{label}/{k}.{_image_ext(data)}"
            os.makedirs(os.path.join(tmp, "train", "images", str(label)), exist_ok=True)
            with open(os.path.join(tmp, "train", rel), "wb") as f:
                f.write(data)
            lines.append(f"{rel} {label}\n")
        with open(os.path.join(tmp, "train", "label.txt"), "w", encoding="utf-8") as f:
            f.writelines(lines)
        if os.path.isfile(os.path.join(recset.folder, PAIR_LABEL)):
            shutil.copytree(os.path.join(recset.folder, "val"), os.path.join(tmp, "val"))
        for b in find_bins(recset.folder):
            shutil.copy2(b, tmp)

    recset.reader.close()
    return _new_dir(out_dir, build), len(recset)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m datasets.recordio", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="folder dataset -> train.rec + train.idx + property")
    p.add_argument("src")
    p.add_argument("dst")
    u = sub.add_parser("unpack", help="RecordIO folder -> train/images/<id>/<n>.jpg + train/label.txt")
    u.add_argument("src")
    u.add_argument("dst")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            dst, n, classes, layout = pack(args.src, args.dst)
            print(f"packed {n} images of {classes} classes into {dst} ({layout} layout)")
        else:
            dst, n = unpack(args.src, args.dst)
            print(f"unpacked {n} images into {dst}")
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
