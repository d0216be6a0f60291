"""Read an image file's size from its header, without decoding the pixels.

check_dataset uses this on every listed image (a few microseconds each) to find missing,
non-image and truncated files and the size range, and fully decodes only a sample; decoding
100,000 images would take minutes on two cores. Formats: PNG, JPEG, BMP, PGM/PPM/PBM.
Anything else returns kind None and the caller decodes it.
"""
import os
import struct

HEAD_BYTES = 512


class HeaderError(Exception):
    """The file is missing, not an image, or visibly truncated; the message says which."""


def _jpeg_size(f, head):
    # walk the marker segments until a start-of-frame marker, which holds the size
    pos = 2
    data = head
    while True:
        while pos + 4 > len(data):
            more = f.read(4096)
            if not more:
                raise HeaderError("JPEG ends before its size header (truncated file)")
            data += more
        if data[pos] != 0xFF:
            raise HeaderError("JPEG marker structure is broken (corrupt file)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            while pos + 9 > len(data):
                more = f.read(4096)
                if not more:
                    raise HeaderError("JPEG ends inside its size header (truncated file)")
                data += more
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            return w, h
        if marker == 0xDA:
            raise HeaderError("JPEG has image data before any size header (corrupt file)")
        pos += 2 + length
        if pos > 1 << 20:
            raise HeaderError("JPEG size header not found in the first megabyte (corrupt file)")


def _pnm_size(head):
    # P1..P6 header: magic, width, height, [maxval], separated by whitespace, '#' comments allowed
    tokens, i, n = [], 2, len(head)
    magic = head[:2]
    need = 2 if magic in (b"P1", b"P4") else 3
    while len(tokens) < need and i < n:
        c = head[i:i + 1]
        if c == b"#":
            while i < n and head[i:i + 1] not in (b"\n", b"\r"):
                i += 1
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < n and not head[j:j + 1].isspace() and head[j:j + 1] != b"#":
                j += 1
            tokens.append(head[i:j])
            i = j
    if len(tokens) < need or not all(t.isdigit() for t in tokens):
        raise HeaderError("PGM/PPM header is malformed")
    w, h = int(tokens[0]), int(tokens[1])
    maxval = int(tokens[2]) if need == 3 else 1
    data_start = i + 1  # one whitespace byte after the header
    channels = 3 if magic in (b"P3", b"P6") else 1
    if magic in (b"P5", b"P6"):
        expected = data_start + w * h * channels * (2 if maxval > 255 else 1)
    elif magic == b"P4":
        expected = data_start + ((w + 7) // 8) * h
    else:
        expected = None  # ASCII formats: no fixed size
    return w, h, expected


def image_header(path):
    """(kind, width, height, note) from the file header; kind None for formats not parsed here.

    Raises HeaderError for a missing file, a file that is not an image, or one shorter than its
    header says (a truncated copy or download). `note` is a doubt worth a warning but not an
    error: a JPEG without its end marker may be cut short, but some cameras append data after it.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise HeaderError("file not found") from None
    except IsADirectoryError:
        raise HeaderError("is a folder, not an image file") from None
    except OSError as e:
        raise HeaderError(f"cannot open ({e.strerror})") from None
    with f:
        return stream_header(f)


def stream_header(f):
    """image_header of an open binary file or a BytesIO (an upload held in memory)."""
    head = f.read(HEAD_BYTES)
    if not head:
        raise HeaderError("file is empty (0 bytes)")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise HeaderError("PNG header is incomplete (truncated file)")
        w, h = struct.unpack(">II", head[16:24])
        f.seek(-12, os.SEEK_END)
        if f.read(12)[4:8] != b"IEND":
            raise HeaderError("PNG has no end chunk (truncated file)")
        return "png", w, h, None
    if head.startswith(b"\xff\xd8"):
        w, h = _jpeg_size(f, head)
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1024))
        if b"\xff\xd9" not in f.read(1024):
            return "jpeg", w, h, "JPEG has no end marker near the end of the file (it may be truncated)"
        return "jpeg", w, h, None
    if head.startswith(b"BM") and len(head) >= 26:
        declared = struct.unpack("<I", head[2:6])[0]
        w, h = struct.unpack("<ii", head[18:26])
        f.seek(0, os.SEEK_END)
        if declared and f.tell() < declared:
            raise HeaderError("BMP is shorter than its header says (truncated file)")
        return "bmp", w, abs(h), None
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        w, h, expected = _pnm_size(head)
        if expected is not None:
            f.seek(0, os.SEEK_END)
            if f.tell() < expected:
                raise HeaderError("PGM/PPM is shorter than its header says (truncated file)")
        return "pnm", w, h, None
    return None, 0, 0, None


EXIF_ORIENTATION_TAG = 0x0112


def jpeg_orientation(data):
    """The EXIF Orientation (1-8) of a JPEG file's bytes; 1 (as stored) when it has none or is not
    a JPEG. Phone cameras store the sensor's pixels and record the rotation here."""
    if data[:2] != b"\xff\xd8":
        return 1
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xDA or length < 2:  # start of scan: no more metadata segments
            return 1
        segment = data[pos + 4:pos + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            return _tiff_orientation(segment[6:])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff):
    """Orientation from IFD0 of a TIFF block (EXIF's layout); 1 when missing or malformed."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
    for k in range(count):
        entry = tiff[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == EXIF_ORIENTATION_TAG and kind == 3:  # SHORT
            value = struct.unpack(order + "H", entry[8:10])[0]
            return value if 1 <= value <= 8 else 1
    return 1
