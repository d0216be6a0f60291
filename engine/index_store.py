"""The service's gallery indexes on disk, one per indexKey, safe for concurrent requests and processes.

    root/<indexKey>/CURRENT        the name of the version folder in use (replaced atomically)
    root/<indexKey>/v000007/       that version: vector.index, id_map.yaml, meta.json (PaddleX's layout)
    root/<indexKey>/.lock          taken (flock) while one update runs, by any process on this root

An update builds the next version folder completely, flushes it to disk, then replaces CURRENT:
a crash at any point leaves CURRENT naming a complete version, and an update that returned
(acknowledged) survives a SIGKILL or a power cut. Updates to one index are serialised (a thread
lock and the file lock, so several service processes may share a root); each works on a copy, so a
search running on the version it read never sees half an update. The previous version is kept
one more round for readers still loading it. Reads check CURRENT every time (a small file), so
another process's update is seen by the next request.
"""
import fcntl
import os
import re
import shutil
import threading
import uuid
from contextlib import contextmanager

from engine.gallery_index import GalleryIndex
from foundation.atomic_io import atomic_write_text, fsync_tree
from foundation.errors import UserError

CURRENT_FILE = "CURRENT"
LOCK_FILE = ".lock"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
VERSION_PATTERN = re.compile(r"^v(\d{6,})$")


class UnknownIndexError(UserError):
    """No index is stored under this indexKey."""


class IndexStore:
    def __init__(self, root, nprobe=32):
        self.root = os.path.abspath(root)
        self.nprobe = int(nprobe)
        os.makedirs(self.root, exist_ok=True)
        self._cache = {}  # key -> (version name, GalleryIndex)
        self._locks = {}
        self._guard = threading.Lock()

    # ------------------------------------------------------------------ reading
    def _folder(self, key):
        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            raise UnknownIndexError(f"indexKey {key!r} is not a valid key (letters, digits, '-' and '_'; "
                                    "use the indexKey that index-build returned)")
        return os.path.join(self.root, key)

    def _current_version(self, key):
        try:
            with open(os.path.join(self._folder(key), CURRENT_FILE), encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            raise UnknownIndexError(f"no index with indexKey '{key}': build one with /face-recognition-index-build "
                                    "(keys are kept in Serve.index_root across restarts)") from None

    def get(self, key):
        """The index stored under `key` now (a GalleryIndex never changed in place; do not change it)."""
        for _ in range(3):  # a version pruned while it was being read: read CURRENT again
            version = self._current_version(key)
            cached = self._cache.get(key)
            if cached and cached[0] == version:
                return cached[1]
            try:
                index = GalleryIndex.load(os.path.join(self._folder(key), version), nprobe=self.nprobe)
            except UserError:
                if self._current_version(key) != version:
                    continue
                raise
            self._cache[key] = (version, index)
            return index
        raise UserError(f"index '{key}' changed three times while it was being read; try again")

    def keys(self):
        return sorted(k for k in os.listdir(self.root)
                      if KEY_PATTERN.match(k) and os.path.isfile(os.path.join(self.root, k, CURRENT_FILE)))

    # ------------------------------------------------------------------ writing
    @contextmanager
    def _locked(self, key):
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            folder = self._folder(key)
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, LOCK_FILE), "a") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                try:
                    yield folder
                finally:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _write_version(self, key, folder, index):
        """Save `index` as the next version and make it current; returns its name."""
        numbers = [int(m.group(1)) for m in map(VERSION_PATTERN.match, os.listdir(folder)) if m]
        version = f"v{(max(numbers) + 1 if numbers else 1):06d}"
        path = os.path.join(folder, version)
        index.save(path)
        fsync_tree(path)
        previous = None
        if os.path.isfile(os.path.join(folder, CURRENT_FILE)):
            previous = self._current_version(key)
        atomic_write_text(os.path.join(folder, CURRENT_FILE), version + "\n")
        fsync_tree(folder, files=False)
        for name in os.listdir(folder):  # keep the new and the previous version only
            if VERSION_PATTERN.match(name) and name not in (version, previous):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        self._cache[key] = (version, index)
        return version

    def create(self, index):
        """Store a new index under a new key; returns the key."""
        key = uuid.uuid4().hex
        with self._locked(key) as folder:
            self._write_version(key, folder, index)
        return key

    def update(self, key, change):
        """Apply `change(copy of the current index)` (it changes the copy and may return a value) and
        store the result as the new current version; returns (new index, change's return value)."""
        self._current_version(key)  # unknown key: fail before taking a lock or making a folder
        with self._locked(key) as folder:
            index = self.get(key).copy()
            value = change(index)
            self._write_version(key, folder, index)
        return index, value
