"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a resumed run after a kill) sees either the old file or the new one, never half.
"""
import hashlib
import json
import os
import shutil
import tempfile
import urllib.parse
import urllib.request


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def honour_umask(path, directory=False):
    """Give a file or folder made by tempfile (always 0600 / 0700) the mode the umask asks for."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def make_temp_dir(path):
    """A new, empty temporary folder beside `path` ('.<name>.<random>.tmp'), with umask permissions."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    honour_umask(tmp, directory=True)
    return tmp


def _tmp_path(path):
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    honour_umask(tmp)
    return tmp


def atomic_write_bytes(path, data):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_save(write, path)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=4, ensure_ascii=False):
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii) + "\n")


def atomic_save(save_fn, path):
    """Run `save_fn(tmp_path)` (e.g. paddle.save) then rename the result to `path`."""
    tmp = _tmp_path(path)
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def move_dir_into_place(tmp, path):
    """Rename the finished folder `tmp` to `path`; an existing `path` is swapped out first and
    deleted after, so `path` is always either the old folder or the new one."""
    if os.path.exists(path):
        old = tmp + ".old"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)


def atomic_replace_dir(build_fn, path):
    """Build a whole folder under a temporary name with `build_fn(tmp_dir)`, then swap it in.

    The old folder stays whole until the new one is complete.
    """
    tmp = make_temp_dir(path)
    try:
        build_fn(tmp)
        move_dir_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_tree(path, files=True):
    """Flush a folder's files (with files=True) and the folder itself to disk, so what was
    written survives a power cut, not only a killed process."""
    if files:
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                fd = os.open(full, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unique_name(name, taken):
    """`name`, or `name_2`, `name_3` ... the first not in the set `taken` (which it joins), so
    outputs named after their inputs (a/00.jpg, b/00.jpg) never overwrite each other."""
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def file_digest(path):
    """sha256 of a file's bytes, read in chunks (weights files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_download(url, cache_folder, sha256=None, timeout=60, progress=None):
    """The local copy of `url` in `cache_folder`, downloaded once. The cache is keyed by the whole
    URL (two different 'model.pdparams' URLs never share a file), and with `sha256` the file must
    have that digest (checked after the download and on every later use). Raises OSError/ValueError
    from the download and ValueError('sha256 mismatch ...') for a wrong digest; callers word them."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    target = os.path.join(cache_folder, key, name)
    fresh = not os.path.isfile(target)
    if fresh:
        try:
            download_file(url, target, timeout=timeout, progress=progress)
        except BaseException:
            if os.path.isdir(os.path.dirname(target)) and not os.listdir(os.path.dirname(target)):
                os.rmdir(os.path.dirname(target))  # leave no empty cache entry behind
            raise
    if sha256:
        digest = file_digest(target)
        if digest != sha256.lower():
            if fresh:
                os.remove(target)
            raise ValueError(f"sha256 mismatch for {url}: expected {sha256.lower()}, got {digest}"
                             + ("" if fresh else f" (cached copy {target}; delete it to download again)"))
    return target


def download_file(url, path, timeout=60, progress=None):
    """Fetch `url` to `path` atomically. Raises OSError (URLError, HTTPError, timeouts) and
    ValueError (malformed URL); callers turn them into a one-line message for their setting."""
    def fetch(tmp):
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:  # noqa: S310 - user-given URL
            total = int(response.headers.get("Content-Length") or 0)
            bar = progress(total) if progress is not None else None
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()

    atomic_save(fetch, path)
    return path
