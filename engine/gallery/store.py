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

With Index.backend=milvus the store is MilvusIndexStore instead: one collection per indexKey
("facefeat_<key>") on Index.uri, shared by every service process on that Milvus (engine.gallery.milvus_index:
inserts and deletes are durable when acknowledged and searched at consistency level Strong, so the
next request in any replica sees them). Nothing is kept on local disk.
"""
import fcntl
import os
import re
import shutil
import threading
import uuid
from contextlib import contextmanager

from engine.gallery.milvus_index import MilvusUnavailableError, client_for, deadline, milvus_errors
from foundation.atomic_io import atomic_write_text, fsync_tree
from foundation.errors import UserError
from foundation.logger import get_logger

CURRENT_FILE = "CURRENT"
LOCK_FILE = ".lock"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
VERSION_PATTERN = re.compile(r"^v(\d{6,})$")


class UnknownIndexError(UserError):
    """No index is stored under this indexKey."""


class IndexStore:
    def check(self):
        """None: a folder on this disk is always reachable (MilvusIndexStore.check may say otherwise)."""
        return None

    def __init__(self, root, settings):
        self.root = os.path.abspath(root)
        self.settings = settings  # engine.gallery.backend.GallerySettings: how each version is loaded
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
                version = f.read().strip()
        except FileNotFoundError:
            raise UnknownIndexError(f"no index with indexKey '{key}': build one with /face-recognition-index-build "
                                    "(keys are kept in Serve.index_root across restarts)") from None
        if not VERSION_PATTERN.match(version):  # edited by hand: never follow it out of the key's folder
            get_logger().error(f"{os.path.join(self._folder(key), CURRENT_FILE)} names {version!r}, not a version "
                               "folder of this key (v000001, ...): the index is not served until it is fixed")
            raise UserError(f"index '{key}' is damaged on the server (its CURRENT file was edited); the server log "
                            "says what to fix")
        return version

    def get(self, key):
        """The index stored under `key` now (a GalleryIndex never changed in place; do not change it)."""
        for _ in range(3):  # a version pruned while it was being read: read CURRENT again
            version = self._current_version(key)
            cached = self._cache.get(key)
            if cached and cached[0] == version:
                return cached[1]
            try:
                index = self.settings.load_folder(os.path.join(self._folder(key), version))
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


class MilvusIndexStore:
    """The service's indexes as Milvus collections: the same get / keys / create / update as IndexStore."""

    PREFIX = "facefeat_"
    MILVUS_KEY = re.compile(r"^[A-Za-z0-9_]{1,128}$")  # collection names take no '-'

    def __init__(self, settings):
        self.settings = settings  # engine.gallery.backend.GallerySettings with backend milvus
        self.uri, self.token = settings.uri, settings.token
        # every later call (search, insert, list...) gets the time a connection may take, retries
        # included: a server that went away mid-service is a 503 after that long, not a hang
        self.call_timeout = deadline(float(settings.connect_timeout) * (int(settings.connect_retries) + 1))
        self.root = f"Milvus {self.uri}"
        self._cache = {}
        self._guard = threading.Lock()

    def _client(self):
        return client_for(self.uri, self.token, self.settings.connect_timeout, self.settings.connect_retries)

    def _collection(self, key):
        if not isinstance(key, str) or not self.MILVUS_KEY.match(key):
            raise UnknownIndexError(f"indexKey {key!r} is not a valid key (letters, digits and '_'; use the "
                                    "indexKey that index-build returned)")
        return self.PREFIX + key

    def get(self, key):
        """The live index of `key` (one collection: changes by any process are seen by the next search)."""
        name = self._collection(key)
        with self._guard:
            if key not in self._cache:
                self._cache[key] = self.settings.open(
                    name, missing=lambda _: UnknownIndexError(
                        f"no index with indexKey '{key}' on Milvus {self.uri}: build one with "
                        "/face-recognition-index-build"), call_timeout=self.call_timeout)
            return self._cache[key]

    def keys(self):
        client = self._client()
        with milvus_errors(self.uri):
            names = client.list_collections(timeout=self.call_timeout)
        return sorted(n[len(self.PREFIX):] for n in names if n.startswith(self.PREFIX))

    def check(self):
        """None when the Milvus server answers, else the error message (for /health)."""
        try:
            self.keys()
        except MilvusUnavailableError as e:
            return str(e)
        return None

    def create(self, index):
        """Store `index` (an in-memory GalleryIndex, e.g. what the service built) in a new collection;
        returns its key. Ids are Milvus' (the stored index's id_map has them)."""
        key = uuid.uuid4().hex
        stored = self.settings.create(index.embedding_size, index.model_name, index.model_fingerprint,
                                      self._collection(key), index.index_type, index.metric_type, replace=False,
                                      call_timeout=max(30, self.call_timeout))  # + index, load
        if len(index):
            ids, vectors = index._stored_vectors()
            entries = [index.entries[int(i)] for i in ids]
            stored.add(vectors, [e["label"] for e in entries], [e["path"] for e in entries])
        stored.call_timeout = self.call_timeout  # from now on it serves requests
        with self._guard:
            self._cache[key] = stored
        return key

    def update(self, key, change):
        """Apply `change(index)` to the live collection (no copy: Milvus applies each insert and delete
        atomically and every replica sees it); returns (index, change's return value)."""
        index = self.get(key)
        return index, change(index)

