"""Gallery index on Milvus (Index.backend=milvus): one collection per index, shared by every process.

`Index.uri` picks the engine, through the same client (pymilvus):
  a file path ending in .db   Milvus Lite, inside this process, on that file (one process at a time)
  http(s)://host:19530        a Milvus server or cluster (optional Index.token: "user:password" or an
                              API key); any number of processes and machines share its collections
A collection holds, per face, an int64 id (Milvus' auto id: unique across every writer), the
L2-normalised feature, the label and the source image name. The model name, embedding size and
weights fingerprint of the model that built it are in the collection's description, and a query
from another model is refused, as on faiss.

Semantics are the faiss backend's (engine.gallery.faiss_index.GalleryIndex): features are normalised, the
search is by inner product = cosine (the exact FLAT index by default, so the ranking and scores are
Flat's), top-k best first, explicit unknown below the threshold (the caller's apply_threshold).
Index.metric_type L2 ranks unit vectors the same way, so scores are cosines either way here too.

Durability and visibility: an insert or delete returns once Milvus has written it to its log (the
WAL of a server, the file of Milvus Lite), so an acknowledged enrolment survives a restart; every
search and query runs at consistency level Strong, which waits until the node has applied every
write acknowledged before the search began, so the next search in any process sees it. (Bounded,
Session and Eventually may miss a write made by another process.)

A server that cannot be reached is one MilvusUnavailableError naming the URI after a bounded
connect timeout (Index.connect_timeout) and Index.connect_retries retries with doubling back-off.
A live index is one shared collection: copy() returns the same collection, so append and remove
change it in place, for every process at once (faiss indexes change a copy instead).
Needs the extra: pip install -e ".[milvus]".
"""
import json
import math
import os
import threading
import time
import warnings

import numpy as np

from engine.gallery.faiss_index import (
    HNSW_EF_SEARCH,
    GalleryIndex,
    IndexMismatchError,
    choose_nlist,
    choose_pq_m,
    l2_normalize_rows,
    normalize_index_type,
    normalize_metric,
)
from foundation.errors import UserError
from foundation.logger import get_logger

INSTALL_HINT = 'pip install -e ".[milvus]" (pymilvus and milvus-lite)'
CONSISTENCY = "Strong"
MAX_LABEL = 1024
MAX_PATH = 4096
INSERT_BYTES = 2**20  # per insert call: Milvus Lite takes 40x longer per row for a 10 MB call than for 1 MB ones
QUERY_PAGE = 4096
MILVUS_INDEX = {"Flat": ("FLAT", {}), "IVF": ("IVF_FLAT", None), "HNSW32": ("HNSW", {"M": 32, "efConstruction": 200}),
                "IVFPQ": ("IVF_PQ", None)}  # our type -> Milvus' (HNSWSQ has no Milvus 2.4 counterpart)
LITE_TYPES = ("Flat", "IVF")  # what Milvus Lite indexes


def deadline(seconds):
    """A call's time limit as pymilvus bounds it: whole seconds. pymilvus 2.4 retries a call that finds
    the server unreachable (gRPC UNAVAILABLE) until an *int* `timeout` has passed, but ignores a float
    one and then retries 75 times with back-off up to 3 s (about 3.5 minutes): every call here passes
    this, so a server that went away is an error after about `seconds`, not a hang."""
    return max(1, int(math.ceil(float(seconds))))


class MilvusUnavailableError(UserError):
    """The Milvus server (or Lite file) of Index.uri cannot be used now."""


def pymilvus():
    """The pymilvus module, or a UserError saying what to install."""
    try:
        with warnings.catch_warnings():  # pymilvus 2.4 imports pkg_resources, which warns it is deprecated
            warnings.simplefilter("ignore")
            import pymilvus as module
    except ImportError:
        raise UserError(f"Index.backend=milvus needs the milvus extra: {INSTALL_HINT}") from None
    return module


def is_lite(uri):
    return not str(uri).lower().startswith(("http://", "https://", "tcp://", "grpc://"))


def check_uri(uri):
    """The URI as pymilvus takes it: an absolute .db path for Milvus Lite, a server URL as it is."""
    if not uri:
        raise UserError("Index.backend=milvus needs Index.uri: a file such as output/gallery.db (Milvus Lite) or "
                        "http://host:19530 (a Milvus server)")
    uri = str(uri)
    if is_lite(uri):
        if not uri.endswith(".db"):
            raise UserError(f"Index.uri '{uri}': a Milvus Lite file name must end in .db (or give a server URL "
                            "http://host:19530)")
        path = os.path.abspath(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path
    return uri


_clients = {}
_clients_guard = threading.Lock()


def client_for(uri, token=None, timeout=5.0, retries=3):
    """One MilvusClient per (uri, token) per process (a Lite file opens once per process; the client is
    thread-safe). Unreachable: MilvusUnavailableError naming the URI after `retries` retries."""
    uri = check_uri(uri)
    key = (uri, token or "")
    with _clients_guard:
        if key in _clients:
            return _clients[key]
        module = pymilvus()
        client, last, delay, attempts = None, None, 0.5, int(retries) + 1
        for attempt in range(attempts):
            try:
                client = module.MilvusClient(uri=uri, token=token or "", timeout=float(timeout))
                break
            except Exception as e:  # MilvusException, grpc errors, a Lite file another process holds
                last = _first_line(e)
                if is_lite(uri) or attempt == attempts - 1:
                    break  # a local file: waiting does not help
                get_logger().warning(f"Milvus at {uri} not reachable ({last}); retrying in {delay:g} s")
                time.sleep(delay)
                delay *= 2
        if client is None:
            if is_lite(uri):
                raise MilvusUnavailableError(
                    f"cannot open the Milvus Lite file {uri} ({last}); a Lite file opens in one process only: "
                    "stop the other process or use a Milvus server (Index.uri=http://host:19530)")
            raise MilvusUnavailableError(
                f"cannot reach the Milvus server at {uri} after {attempts} attempts of up to {timeout:g} s "
                f"({last}): start it, or fix Index.uri / Index.token")
        _clients[key] = client
        return client


def forget_client(uri, token=None):
    """Close this process' client of `uri` (a Lite file is free for another process afterwards)."""
    key = (check_uri(uri), token or "")
    with _clients_guard:
        client = _clients.pop(key, None)
    if client is not None:
        client.close()
        if is_lite(key[0]):  # closing the client leaves Lite's server (and its file lock) running
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(key[0])


def _first_line(e):
    if callable(getattr(e, "details", None)) and callable(getattr(e, "code", None)):  # a raw grpc.RpcError
        try:
            text = f"{e.code().name}: {e.details()}".strip()
            return (text.splitlines()[0] if text else type(e).__name__)[:300]
        except Exception:  # not a finished RPC after all: its text below
            pass
    text = str(getattr(e, "message", None) or e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


class MilvusGalleryIndex:
    """A gallery index in a Milvus collection, with GalleryIndex's interface."""

    backend = "milvus"
    check_model = GalleryIndex.check_model

    def __init__(self, client, uri, collection, meta, nprobe=32, token=None, call_timeout=30.0):
        self.client, self.uri, self.collection, self.token = client, uri, collection, token
        self.embedding_size = int(meta["embedding_size"])
        self.model_name = meta.get("model_name")
        self.model_fingerprint = meta.get("model_fingerprint")
        self.index_type = normalize_index_type(meta.get("index_type", "Flat"))
        self.metric_type = normalize_metric(meta.get("metric_type", "IP"))
        self.nprobe = int(nprobe)
        self.ef_search = HNSW_EF_SEARCH
        self.nlist = meta.get("nlist")
        self.call_timeout = deadline(call_timeout)  # per call, retries included (see deadline)

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, uri, collection, embedding_size, model_name, model_fingerprint=None, index_type="Flat",
               metric_type="IP", nprobe=32, token=None, connect_timeout=5.0, connect_retries=3, replace=True,
               planned_size=None, call_timeout=30.0):
        """A new empty collection (an existing one of that name is dropped when `replace`)."""
        client = client_for(uri, token, connect_timeout, connect_retries)
        uri = check_uri(uri)
        index_type = normalize_index_type(index_type)
        if index_type not in MILVUS_INDEX or (is_lite(uri) and index_type not in LITE_TYPES):
            where = "Milvus Lite" if is_lite(uri) else "the milvus backend"
            usable = LITE_TYPES if is_lite(uri) else tuple(MILVUS_INDEX)
            raise UserError(f"Index.index_type {index_type} is not available on {where}: use one of "
                            f"{', '.join(usable)}")
        meta = {"facefeat": 1, "model_name": model_name, "embedding_size": int(embedding_size),
                "model_fingerprint": model_fingerprint, "index_type": index_type,
                "metric_type": normalize_metric(metric_type),
                "nlist": choose_nlist(planned_size or 100_000) if index_type in ("IVF", "IVFPQ") else None}
        module = pymilvus()
        limit = deadline(call_timeout)
        with milvus_errors(uri):
            if client.has_collection(collection, timeout=limit):
                if not replace:
                    raise UserError(f"a collection named '{collection}' already exists on {uri}")
                client.drop_collection(collection, timeout=limit)
            schema = module.MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False,
                                                       description=json.dumps(meta))
            schema.add_field("id", module.DataType.INT64, is_primary=True)
            schema.add_field("feature", module.DataType.FLOAT_VECTOR, dim=int(embedding_size))
            schema.add_field("label", module.DataType.VARCHAR, max_length=MAX_LABEL)
            schema.add_field("path", module.DataType.VARCHAR, max_length=MAX_PATH)
            params = client.prepare_index_params()
            name, extra = MILVUS_INDEX[index_type]
            if extra is None:
                extra = {"nlist": meta["nlist"]}
                if index_type == "IVFPQ":
                    extra.update(m=choose_pq_m(embedding_size), nbits=8)
            params.add_index("feature", index_type=name, metric_type="IP", params=extra)
            client.create_collection(collection, schema=schema, index_params=params, consistency_level=CONSISTENCY,
                                     timeout=limit)
        return cls(client, uri, collection, meta, nprobe, token, call_timeout)

    @classmethod
    def open(cls, uri, collection, nprobe=32, token=None, connect_timeout=5.0, connect_retries=3, missing=None,
             call_timeout=30.0):
        """The collection `collection` on `uri`; `missing(message)` builds the error when it does not exist."""
        client = client_for(uri, token, connect_timeout, connect_retries)
        uri = check_uri(uri)
        limit = deadline(call_timeout)
        with milvus_errors(uri):
            if not client.has_collection(collection, timeout=limit):
                message = (f"no gallery index '{collection}' on Milvus {uri}: build it first with "
                           f"-o Global.mode=build_index -o index={collection}")
                raise (missing or UserError)(message)
            described = client.describe_collection(collection, timeout=limit)
            client.load_collection(collection, timeout=limit)
        try:
            meta = json.loads(described.get("description") or "")
            assert isinstance(meta, dict) and "embedding_size" in meta
        except (ValueError, AssertionError):
            raise UserError(f"collection '{collection}' on {uri} was not made by facefeat (its description holds no "
                            "model record): give another index name") from None
        return cls(client, uri, collection, meta, nprobe, token, call_timeout)

    def close(self):
        """Release this process' client (for a Lite file: let another process open it)."""
        forget_client(self.uri, self.token)

    def drop(self):
        with milvus_errors(self.uri):
            self.client.drop_collection(self.collection, timeout=self.call_timeout)

    # ------------------------------------------------------------------ reading
    def __len__(self):
        with milvus_errors(self.uri):
            rows = self.client.query(self.collection, filter="", output_fields=["count(*)"],
                                     consistency_level=CONSISTENCY, timeout=self.call_timeout)
        return int(rows[0]["count(*)"]) if rows else 0

    def _rows(self, filter_expr="id >= 0", fields=("label", "path")):
        """Every row matching the filter as {id: {field: value}}, page by page."""
        out = {}
        with milvus_errors(self.uri):
            it = self.client.query_iterator(self.collection, batch_size=QUERY_PAGE, filter=filter_expr,
                                            output_fields=list(fields), consistency_level=CONSISTENCY,
                                            timeout=self.call_timeout)
            try:
                while True:
                    page = it.next()
                    if not page:
                        break
                    for row in page:
                        out[int(row["id"])] = {f: row.get(f) for f in fields}
            finally:
                it.close()
        return out

    @property
    def entries(self):
        """{id: {"label", "path"}} of every face (read from the collection: every process' writes)."""
        return {i: {"label": r["label"], "path": r["path"] or None} for i, r in sorted(self._rows().items())}

    @property
    def id_map(self):
        return {i: e["label"] for i, e in self.entries.items()}

    @property
    def labels(self):
        return sorted({e["label"] for e in self.entries.values()})

    def ids_of_label(self, label):
        return sorted(self._rows(f"label == {_quote(label)}", ("label",)))

    def copy(self):
        """The same live collection (see the module doc): changes are seen by every process at once."""
        return self

    def save(self, where=None):
        """Nothing to write: every acknowledged change is already durable in Milvus."""
        get_logger().info(f"gallery index '{self.collection}' lives on Milvus {self.uri} (saved as it changes)")

    # ------------------------------------------------------------------ writing
    def add(self, features, labels, paths=None):
        """Insert vectors (normalised here) with labels and source paths; returns their new ids."""
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.embedding_size:
            raise IndexMismatchError(
                f"cannot add features of shape {tuple(feats.shape)} to the {self.embedding_size}-d index "
                f"'{self.collection}' built by {self.model_name or 'another model'}: rebuild the index with the new model")
        labels = [str(x) for x in labels]
        if len(labels) != len(feats):
            raise ValueError(f"{len(feats)} features but {len(labels)} labels")
        paths = ["" if p is None else str(p) for p in (paths if paths is not None else [None] * len(feats))]
        for label in labels:
            if len(label.encode("utf-8")) > MAX_LABEL:
                raise UserError(f"label '{label[:40]}...' is longer than {MAX_LABEL} bytes, the milvus backend's limit")
        paths = [p if len(p.encode("utf-8")) <= MAX_PATH else p[-MAX_PATH // 4:] for p in paths]
        feats = l2_normalize_rows(feats)
        ids, step = [], max(1, INSERT_BYTES // (4 * self.embedding_size + 64))
        with milvus_errors(self.uri):
            for s in range(0, len(feats), step):
                rows = [{"feature": f, "label": lbl, "path": p}
                        for f, lbl, p in zip(feats[s:s + step].tolist(), labels[s:s + step], paths[s:s + step])]
                ids.extend(self.client.insert(self.collection, rows, timeout=self.call_timeout)["ids"])
        return np.asarray(ids, dtype=np.int64)

    def remove_ids(self, ids):
        """Delete faces by id (ids not in the collection are ignored); returns how many were deleted."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return 0
        present = []
        for s in range(0, len(wanted), QUERY_PAGE):
            part = wanted[s:s + QUERY_PAGE]
            present.extend(self._rows(f"id in [{','.join(map(str, part))}]", ("label",)))
        if present:
            with milvus_errors(self.uri):
                self.client.delete(self.collection, ids=sorted(present), timeout=self.call_timeout)
        return len(present)

    def remove_label(self, label):
        return self.remove_ids(self.ids_of_label(label))

    # ------------------------------------------------------------------ search
    def search(self, features, top_k=5, model_name=None, model_fingerprint=None):
        """Top-k matches per query row: (labels, cosine scores best first, ids), as GalleryIndex.search."""
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim == 1:
            feats = feats[None, :]
        self.check_model(model_name, feats.shape[1], model_fingerprint)
        empty = ([[] for _ in range(len(feats))], [np.zeros((0,), np.float32) for _ in range(len(feats))],
                 [np.zeros((0,), np.int64) for _ in range(len(feats))])
        if len(feats) == 0:
            return empty
        k = max(1, min(int(top_k), 16384))
        params = {"metric_type": "IP", "params": {}}
        if self.index_type in ("IVF", "IVFPQ"):
            params["params"]["nprobe"] = self.nprobe
        elif self.index_type == "HNSW32":
            params["params"]["ef"] = max(self.ef_search, k)
        with milvus_errors(self.uri):
            hits = self.client.search(self.collection, l2_normalize_rows(feats).tolist(), limit=k,
                                      output_fields=["label"], search_params=params, consistency_level=CONSISTENCY,
                                      timeout=self.call_timeout)
        labels, scores, ids = [], [], []
        for row in hits:
            row = sorted(row, key=lambda h: (-h["distance"], h["id"]))  # ties: the older id first, as faiss
            labels.append([h["entity"]["label"] for h in row])
            scores.append(np.asarray([h["distance"] for h in row], dtype=np.float32))
            ids.append(np.asarray([h["id"] for h in row], dtype=np.int64))
        return labels, scores, ids


class milvus_errors:  # noqa: N801 - used as a context manager, like a function
    """Turn pymilvus' connection and RPC errors into one MilvusUnavailableError naming the URI; a
    UserError passes through as it is."""

    def __init__(self, uri):
        self.uri = uri

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, UserError) or not isinstance(exc, Exception):
            return False
        raise MilvusUnavailableError(f"Milvus at {self.uri} failed: {_first_line(exc)} (is the server up and "
                                     "Index.uri / Index.token right?)") from None
