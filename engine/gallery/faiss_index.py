"""Gallery index for 1:N face search on faiss: cosine similarity of L2-normalised features.

A saved index is a folder in PaddleX's layout, so PaddleX reads ours and we read PaddleX's:
  vector.index   the faiss index (faiss.write_index); ids are the gallery ids
  id_map.yaml    PaddleX's index info: {"id_map": {<id>: <label>}, "metric_type": "IP" | "L2",
                 "index_type": "Flat" | "IVF" | "HNSW32"}
  meta.json      ours, beside it (PaddleX ignores it): model name, embedding size, weights
                 fingerprint, the sha256 of vector.index, counts, and each id's source image.
An index without meta.json (built by PaddleX) loads too; its queries are then checked for the
embedding size only. The older layout of this project (id_map.json + meta.json) still loads and is
written in the new layout on its next save.

Metrics: features are L2-normalised before they are stored, so inner product ("IP", the default)
is the cosine, and PaddleX's "L2" (squared distance d) is turned into the cosine 1 - d/2. Every
score this module returns is a cosine, so one threshold means the same for both (PaddleX compares
an L2 distance against its similarity threshold, the wrong way round).

Index types and how removal works for each (PaddleX cannot remove from HNSW32, and its IVF inside
an IndexIDMap2 maps the wrong ids after a removal):
  Flat  IndexIDMap2(flat): exact search; removal through the id map.
  IVF   IndexIVFFlat carrying our ids natively, trained on the gallery at build time; nlist grows
        with the gallery size (about 4 * sqrt(N), at least 39 training points per list). Not wrapped
        in an IndexIDMap: IndexIDMap.remove_ids assumes the inner index renumbers what remains, which
        IVF does not. A PaddleX IVF (wrapped) is unwrapped when it loads.
  HNSW  IndexIDMap2(IndexHNSWFlat, M=32). HNSW graphs cannot drop nodes, so a removal rebuilds the
        graph from the vectors that remain, read back from the graph's own flat storage.

Compressed types for large galleries (ours: PaddleX does not read them), trained on the gallery
(the first add; a streamed build trains on its first batch):
  IVFPQ   IndexIVFPQ with native ids: IVF lists as above, each vector stored as pq_m bytes
          (product quantization; default embedding_size / 8, e.g. 64 bytes for 512-d instead of 2 KB).
  HNSWSQ  IndexIDMap2(IndexHNSWSQ, M=32, 8-bit scalar quantization: 1 byte per dimension).
With rerank = R > 0 the compressed index proposes R * top_k candidates and they are re-scored on the
exact features, kept beside it (exact.index, an IndexIDMap2(Flat) of the same ids; memory-mapped when
it loads, so only the candidates' pages are read): scores are then exact cosines.

Features from a different model cannot be compared with the stored ones, so the model name,
embedding size and weights fingerprint are recorded and a mismatching query is refused.
Plain numpy and faiss: no Paddle here.
"""
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import MutableMapping

import numpy as np
import yaml

from datasets.transforms import IMAGE_EXTENSIONS, list_images
from engine.evaluation.metrics import l2_normalize
from foundation.atomic_io import atomic_replace_dir, file_digest
from foundation.errors import UserError
from foundation.logger import get_logger
from foundation.safe_pickle import RefusedGlobal, safe_loads

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # no INFO lines about CPU features
import faiss  # noqa: E402 - after quieting its loader

INDEX_TYPES = ("Flat", "IVF", "HNSW32")  # PaddleX's types and names (PaddleX reads and writes them too)
COMPRESSED_TYPES = ("IVFPQ", "HNSWSQ")
ALL_INDEX_TYPES = INDEX_TYPES + COMPRESSED_TYPES
METRIC_TYPES = ("IP", "L2")
UNKNOWN_LABEL = "unknown"
INDEX_FILE = "vector.index"
EXACT_FILE = "exact.index"  # the exact features of a compressed index with rerank
INFO_FILE = "id_map.yaml"  # PaddleX's name for its index info
META_FILE = "meta.json"
OLD_ID_MAP_FILE = "id_map.json"  # this project's layout before format 2
FORMAT_VERSION = 2
HNSW_M = 32
# Candidates kept while walking the HNSW graph at query time. faiss' default (16) finds the exact
# top-1 for only ~77 % of queries on 100k random 512-d vectors; 64 costs a fraction of a millisecond.
HNSW_EF_SEARCH = 64


class IndexMismatchError(UserError):
    """A query (or an append) from a model other than the one that built the index."""


def set_search_threads(n):
    """Threads faiss uses for building and searching."""
    faiss.omp_set_num_threads(int(n))


def normalize_index_type(name):
    """'flat' / 'IVF' / 'hnsw' -> PaddleX's 'Flat' | 'IVF' | 'HNSW32' (or ours: 'IVFPQ', 'HNSWSQ');
    anything else is a UserError."""
    key = str(name or "Flat").strip().lower()
    table = {"flat": "Flat", "ivf": "IVF", "ivfflat": "IVF", "hnsw": "HNSW32", "hnsw32": "HNSW32", "ivfpq": "IVFPQ",
             "ivf_pq": "IVFPQ", "hnswsq": "HNSWSQ", "hnsw_sq": "HNSWSQ", "hnswsq8": "HNSWSQ"}
    if key not in table:
        raise UserError(f"index_type '{name}' is not one of Flat, IVF, HNSW32 (PaddleX's) or IVFPQ, HNSWSQ "
                        "(compressed, for large galleries)")
    return table[key]


def normalize_metric(name):
    """'IP' / 'ip' / 'inner_product' -> 'IP'; 'L2' -> 'L2'; anything else is a UserError."""
    key = str(name or "IP").strip().upper()
    key = {"INNER_PRODUCT": "IP", "COSINE": "IP"}.get(key, key)
    if key not in METRIC_TYPES:
        raise UserError(f"metric_type '{name}' is not one of IP, L2 (hamming needs binary features, which "
                        "face feature models do not make)")
    return key


def l2_normalize_rows(x):
    """Rows scaled to unit length (zero rows stay zero) as contiguous float32, what faiss takes."""
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(l2_normalize(x[None, :] if x.ndim == 1 else x), dtype=np.float32)


def choose_nlist(num_vectors):
    """IVF list count for a gallery: ~4*sqrt(N), but at least 39 training points per list."""
    if num_vectors <= 0:
        return 1
    return int(max(1, min(round(4 * math.sqrt(num_vectors)), num_vectors // 39)))


def choose_pq_m(embedding_size, pq_m=0):
    """Bytes per vector of IVFPQ: `pq_m`, or embedding_size / 8 (rounded down to a divisor)."""
    d = int(embedding_size)
    m = int(pq_m) if pq_m else max(1, d // 8)
    if m <= 0 or d % m:
        if pq_m:
            raise UserError(f"Index.pq_m {pq_m} must divide the embedding size {d} (e.g. {max(1, d // 8)})")
        while d % m:
            m -= 1
    return m


def pq_bits(num_vectors):
    """Bits per PQ code: 8, fewer for a gallery too small to train 256 centroids per sub-vector."""
    return int(max(1, min(8, math.floor(math.log2(max(2, num_vectors))))))


def apply_threshold(labels, scores, threshold, unknown=UNKNOWN_LABEL):
    """Top-1 decision for one query: (label, score). Cosine similarity: higher is more alike, so a
    best score BELOW the threshold (or no gallery entry at all) is the explicit `unknown` label."""
    if len(labels) == 0:
        return unknown, None
    best = float(scores[0])
    return (labels[0] if best >= float(threshold) else unknown), best


class Entries(MutableMapping):
    """{id: {"label", "path"}} of a gallery, held compactly for millions of faces: one interned label
    string per id and the source paths only where known (a dict per face costs ~900 bytes; this ~100)."""

    __slots__ = ("_labels", "_paths")

    def __init__(self, items=None):
        self._labels, self._paths = {}, {}
        for i, e in (items or {}).items():
            self.set(i, e["label"], e.get("path"))

    def set(self, i, label, path=None):
        self._labels[i] = sys.intern(str(label))
        if path is None:
            self._paths.pop(i, None)
        else:
            self._paths[i] = str(path)

    def label(self, i):
        return self._labels[i]

    def label_items(self):
        return self._labels.items()

    def __getitem__(self, i):
        return {"label": self._labels[i], "path": self._paths.get(i)}

    def __setitem__(self, i, entry):
        self.set(i, entry["label"], entry.get("path"))

    def __delitem__(self, i):
        del self._labels[i]
        self._paths.pop(i, None)

    def __iter__(self):
        return iter(self._labels)

    def __len__(self):
        return len(self._labels)

    def __contains__(self, i):
        return i in self._labels

    def copy(self):
        other = Entries()
        other._labels, other._paths = dict(self._labels), dict(self._paths)
        return other


YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: a million-face id_map in seconds
YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class GalleryIndex:
    """Vectors with integer ids, a label and a source path per id, searchable by cosine similarity."""

    backend = "faiss"

    def __init__(self, embedding_size, model_name, index_type="Flat", nprobe=32, model_fingerprint=None,
                 metric_type="IP", pq_m=0, rerank=0):
        self.embedding_size = int(embedding_size)
        if self.embedding_size <= 0:
            raise UserError(f"embedding size must be positive, got {embedding_size}")
        self.model_name = None if model_name is None else str(model_name)  # None: unknown (a PaddleX index)
        self.model_fingerprint = model_fingerprint
        self.index_type = normalize_index_type(index_type)
        self.metric_type = normalize_metric(metric_type)
        self.nprobe = int(nprobe)
        self.nlist = None
        self.pq_m = choose_pq_m(self.embedding_size, pq_m) if self.index_type == "IVFPQ" else 0
        self.rerank = int(rerank or 0)
        if self.rerank < 0:
            raise UserError(f"Index.rerank must be 0 (off) or a candidate factor >= 1, got {rerank}")
        if self.rerank and self.index_type not in COMPRESSED_TYPES:
            self.rerank = 0  # exact types have nothing to re-rank
        self.ef_search = HNSW_EF_SEARCH
        self.planned_size = None  # a streamed build's final size: IVF lists for it, trained on the first batch
        self.exact = None  # rerank: IndexIDMap2(Flat) of the exact features
        self._exact_mapped = False  # True: self.exact is a read-only view of exact.index on disk
        self.entries = Entries()  # id -> {"label": str, "path": str | None}
        self.next_id = 0
        self.index = None  # built on the first add (IVF needs the data to train on)

    # ------------------------------------------------------------------ building
    def __len__(self):
        return 0 if self.index is None else int(self.index.ntotal)

    @property
    def labels(self):
        """Sorted distinct labels in the gallery."""
        return sorted({lbl for _, lbl in self.entries.label_items()})

    @property
    def id_map(self):
        """{id: label}, PaddleX's IndexData.id_map."""
        return {i: self.entries.label(i) for i in sorted(self.entries)}

    def copy(self):
        """An independent copy (the faiss index cloned): change it while others search this one."""
        other = GalleryIndex(self.embedding_size, self.model_name, self.index_type, self.nprobe,
                             self.model_fingerprint, self.metric_type, self.pq_m, self.rerank)
        other.nlist, other.next_id, other.ef_search = self.nlist, self.next_id, self.ef_search
        other.entries = self.entries.copy()
        other.index = None if self.index is None else faiss.clone_index(self.index)
        other.exact = self._owned_exact()
        return other

    def _owned_exact(self):
        """A changeable copy of the exact features (a clone of a memory-mapped index would stay a view)."""
        if self.exact is None:
            return None
        if not self._exact_mapped:
            return faiss.clone_index(self.exact)
        ids = faiss.vector_to_array(self.exact.id_map).astype(np.int64)
        owned = faiss.IndexIDMap2(faiss.IndexFlatIP(self.embedding_size))
        if len(ids):
            owned.add_with_ids(faiss.downcast_index(self.exact.index).reconstruct_n(0, len(ids)), ids)
        return owned

    def _writable_exact(self):
        if self._exact_mapped:
            self.exact, self._exact_mapped = self._owned_exact(), False
        return self.exact

    def _faiss_metric(self):
        return faiss.METRIC_INNER_PRODUCT if self.metric_type == "IP" else faiss.METRIC_L2

    def _new_index(self, train_vectors):
        d, metric = self.embedding_size, self._faiss_metric()
        if self.index_type == "Flat":
            flat = faiss.IndexFlatIP(d) if self.metric_type == "IP" else faiss.IndexFlatL2(d)
            return faiss.IndexIDMap2(flat)
        if self.index_type == "HNSW32":
            return faiss.IndexIDMap2(faiss.IndexHNSWFlat(d, HNSW_M, metric))
        if self.index_type == "HNSWSQ":
            hnsw = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, HNSW_M, metric)
            hnsw.train(train_vectors)
            return faiss.IndexIDMap2(hnsw)
        self.nlist = choose_nlist(len(train_vectors))
        if self.planned_size and self.planned_size > len(train_vectors):
            self.nlist = max(1, min(choose_nlist(self.planned_size), len(train_vectors) // 39))
        quantizer = faiss.IndexFlatIP(d) if self.metric_type == "IP" else faiss.IndexFlatL2(d)
        if self.index_type == "IVFPQ":
            index = faiss.IndexIVFPQ(quantizer, d, self.nlist, self.pq_m, pq_bits(len(train_vectors)), metric)
            index.pq.cp.min_points_per_centroid = 1
        else:
            index = faiss.IndexIVFFlat(quantizer, d, self.nlist, metric)
        index.cp.min_points_per_centroid = 1  # small galleries: no warning spam, nlist already limits it
        index.train(train_vectors)
        index.nprobe = max(1, min(self.nprobe, self.nlist))
        return index

    def check_model(self, model_name, embedding_size, model_fingerprint=None, what="query"):
        """Refuse features from another model: their cosines with the gallery would be meaningless."""
        problems = []
        if int(embedding_size) != self.embedding_size:
            problems.append(f"embedding size {embedding_size} != {self.embedding_size}")
        if model_name is not None and self.model_name is not None and str(model_name) != self.model_name:
            problems.append(f"model '{model_name}' != '{self.model_name}'")
        if (model_fingerprint and self.model_fingerprint and model_fingerprint != self.model_fingerprint):
            problems.append("the model weights differ from those that built the index")
        if problems:
            raise IndexMismatchError(
                f"the {what} features come from a different model than the gallery index "
                f"({'; '.join(problems)}): rebuild the index with this model "
                f"(Global.mode=build_index) or use the model the index was built with"
            )

    def add(self, features, labels, paths=None):
        """Append vectors (normalised here) with their labels; returns the new ids."""
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.embedding_size:
            raise IndexMismatchError(
                f"cannot add features of shape {tuple(feats.shape)} to a {self.embedding_size}-d index "
                f"built by {self.model_name or 'another model'}: rebuild the index with the new model"
            )
        labels = [str(x) for x in labels]
        if len(labels) != len(feats):
            raise ValueError(f"{len(feats)} features but {len(labels)} labels")
        paths = list(paths) if paths is not None else [None] * len(feats)
        if len(feats) == 0:
            return np.zeros((0,), dtype=np.int64)
        feats = l2_normalize_rows(feats)
        if self.index is None:
            self.index = self._new_index(feats)
        ids = np.arange(self.next_id, self.next_id + len(feats), dtype=np.int64)
        self.index.add_with_ids(feats, ids)
        if self.rerank:
            if self.exact is None:
                self.exact = faiss.IndexIDMap2(faiss.IndexFlatIP(self.embedding_size))
            self._writable_exact().add_with_ids(feats, ids)
        for i, label, path in zip(ids.tolist(), labels, paths):
            self.entries.set(i, label, path)
        self.next_id += len(feats)
        return ids
    # ------------------------------------------------------------------ removal
    def ids_of_label(self, label):
        return [i for i, lbl in self.entries.label_items() if lbl == str(label)]

    def remove_label(self, label):
        """Remove every vector of `label`; returns how many were removed."""
        return self.remove_ids(self.ids_of_label(label))

    def remove_ids(self, ids):
        """Remove vectors by id (unknown ids are ignored); returns how many were removed."""
        ids = sorted({int(i) for i in ids if int(i) in self.entries})
        if not ids or self.index is None:
            return 0
        id_array = np.asarray(ids, dtype=np.int64)
        if self.exact is not None:
            self._writable_exact().remove_ids(faiss.IDSelectorBatch(id_array))
        if self.index_type in ("HNSW32", "HNSWSQ"):
            self._rebuild_hnsw_without(set(ids))
        else:
            removed = self.index.remove_ids(faiss.IDSelectorBatch(id_array))
            if removed != len(ids):
                raise RuntimeError(f"faiss removed {removed} of {len(ids)} vectors: the index and its id map disagree")
        for i in ids:
            del self.entries[i]
        return len(ids)

    def _rerank(self, queries, candidates, k):
        """The best k of each row of candidate ids by their exact cosine (from self.exact)."""
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_ids = np.full((len(queries), k), -1, np.int64)
        for row, (query, cand) in enumerate(zip(queries, candidates)):
            cand = cand[cand >= 0]
            if not len(cand):
                continue
            exact = self.exact.reconstruct_batch(cand)
            sims = exact @ query
            order = np.argsort(-sims, kind="stable")[:k]
            out_scores[row, :len(order)], out_ids[row, :len(order)] = sims[order], cand[order]
        return out_scores, out_ids

    def _stored_vectors(self):
        """(ids, vectors) held by an IndexIDMap2-wrapped Flat/HNSW index, read back from its storage."""
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        vectors = self.index.index.reconstruct_n(0, self.index.ntotal) if len(ids) else \
            np.zeros((0, self.embedding_size), np.float32)
        return ids, np.asarray(vectors, dtype=np.float32)

    def _rebuild_hnsw_without(self, drop):
        ids, vectors = self._stored_vectors()
        keep = np.array([i not in drop for i in ids.tolist()], dtype=bool)
        self.index = self._new_index(vectors[keep] if keep.sum() else vectors[:1])
        if keep.any():
            self.index.add_with_ids(np.ascontiguousarray(vectors[keep]), ids[keep])

    # ------------------------------------------------------------------ search
    def search(self, features, top_k=5, model_name=None, model_fingerprint=None):
        """Top-k gallery matches per query row.

        Returns (labels, scores, ids): per query a list of labels, a float32 array of cosine
        similarities (best first) and an int64 array of ids. A gallery smaller than top_k gives
        shorter lists; an empty gallery gives empty ones.
        """
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim == 1:
            feats = feats[None, :]
        self.check_model(model_name, feats.shape[1], model_fingerprint)
        if len(self) == 0 or len(feats) == 0:
            return ([[] for _ in range(len(feats))], [np.zeros((0,), np.float32) for _ in range(len(feats))],
                    [np.zeros((0,), np.int64) for _ in range(len(feats))])
        k = max(1, min(int(top_k), len(self)))
        queries = l2_normalize_rows(feats)
        fetch = min(len(self), k * self.rerank) if self.exact is not None else k
        if self.index_type in ("IVF", "IVFPQ"):
            self.index.nprobe = max(1, min(self.nprobe, self.nlist or 1))
        elif self.index_type in ("HNSW32", "HNSWSQ"):
            faiss.downcast_index(self.index.index).hnsw.efSearch = max(self.ef_search, fetch)
        scores, ids = self.index.search(queries, fetch)
        if self.metric_type == "L2":  # squared distance of unit vectors -> cosine
            scores = 1.0 - scores / 2.0
        if self.exact is not None:
            scores, ids = self._rerank(queries, ids, k)
        out_labels, out_scores, out_ids = [], [], []
        for row_s, row_i in zip(scores, ids):
            valid = row_i >= 0  # IVF/HNSW may find fewer than k neighbours
            row_i = row_i[valid]
            out_ids.append(row_i.astype(np.int64))
            out_scores.append(row_s[valid].astype(np.float32))
            out_labels.append([self.entries.label(int(i)) for i in row_i])
        return out_labels, out_scores, out_ids

    # ------------------------------------------------------------------ persistence
    def index_info_header(self):
        """PaddleX's index info without its id_map."""
        return {"index_type": self.index_type, "metric_type": self.metric_type}

    @property
    def index_info(self):
        """PaddleX's IndexData.index_info: {index_type, metric_type, id_map} (what id_map.yaml holds)."""
        return dict(self.index_info_header(), id_map=self.id_map)

    @property
    def index_bytes(self):
        """PaddleX's IndexData.index_bytes: the faiss index serialized (a uint8 numpy array)."""
        return faiss.serialize_index(self.index)

    def meta(self):
        return {
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "embedding_size": self.embedding_size,
            "model_fingerprint": self.model_fingerprint,
            "index_type": self.index_type,
            "metric_type": self.metric_type,
            "normalized": True,
            "num_vectors": len(self),
            "num_labels": len(self.labels),
            "next_id": self.next_id,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "pq_m": self.pq_m,
            "rerank": self.rerank,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "sources": {str(i): p for i, p in sorted(self.entries._paths.items())},  # the ids with a known path
            # id_map.yaml's content again, as two JSON lists: a million-face index loads without building
            # YAML's node graph (~850 MB for 1M ids); used while id_map.yaml matches info_sha256
            "ids": sorted(self.entries),
            "labels": [self.entries.label(i) for i in sorted(self.entries)],
        }

    def save(self, index_dir):
        """Write the folder atomically: readers see the old index or the new one, never a mix. A
        folder that holds anything but an index is never replaced (UserError naming what is there)."""
        if self.index is None:
            raise UserError(f"refusing to save an empty gallery index to {index_dir}: add at least one face")
        foreign = foreign_entries(index_dir)
        if foreign:
            raise UserError(f"{index_dir} holds {len(foreign)} other entr{'y' if len(foreign) == 1 else 'ies'} "
                            f"({listed(foreign)}), which is not a gallery index: nothing was written "
                            "(an index is saved into an empty or new folder, or over an index)")

        def build(tmp):
            faiss.write_index(self.index, os.path.join(tmp, INDEX_FILE))
            if self.exact is not None:
                faiss.write_index(self.exact, os.path.join(tmp, EXACT_FILE))
            write_index_info(os.path.join(tmp, INFO_FILE), self.index_info_header(), self.entries)
            meta = dict(self.meta(), index_sha256=file_digest(os.path.join(tmp, INDEX_FILE)),
                        info_sha256=file_digest(os.path.join(tmp, INFO_FILE)))
            with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as f:
                # indented for a person to read; a large gallery's id lists compact (the C encoder: seconds
                # for millions of faces, where indenting runs the pure-Python one)
                json.dump(meta, f, indent=1 if len(self.entries) <= 10_000 else None, ensure_ascii=False)

        atomic_replace_dir(build, index_dir)

    def to_bytes(self):
        """PaddleX's IndexData.to_bytes: a pickle of (serialized faiss index as a uint8 array, index
        info), which PaddleX's IndexData.from_bytes reads. Our own fields (model, paths) are not in
        it, as they are not in PaddleX's."""
        import pickle

        return pickle.dumps((self.index_bytes, self.index_info), protocol=4)

    @classmethod
    def from_bytes(cls, data, nprobe=32, where="index bytes"):
        """Read PaddleX's IndexData bytes (what its service keeps per indexKey) without running code
        from them: the restricted unpickler refuses every global."""
        try:
            tup = safe_loads(data)
        except RefusedGlobal as e:
            raise UserError(f"refused to load {where}: it asks for {e}, which an index never holds") from None
        except Exception as e:
            raise UserError(f"{where} is not a PaddleX IndexData pickle ({type(e).__name__}: {e})") from None
        # PaddleX pickles the serialized index as a uint8 array; earlier versions of ours as bytes
        if not (isinstance(tup, tuple) and len(tup) == 2 and isinstance(tup[0], (bytes, bytearray, np.ndarray))
                and isinstance(tup[1], dict)):
            raise UserError(f"{where}: expected (faiss index bytes, index info), got {type(tup).__name__}")
        try:
            raw = tup[0] if isinstance(tup[0], np.ndarray) else np.frombuffer(tup[0], dtype=np.uint8)
            index = faiss.deserialize_index(np.ascontiguousarray(raw, dtype=np.uint8))
        except RuntimeError as e:
            raise UserError(f"{where}: not a serialized faiss index ({str(e).strip().splitlines()[0]})") from None
        return cls._from_parts(index, tup[1], {}, where, nprobe)

    @classmethod
    def _from_parts(cls, index, info, meta, where, nprobe=None):
        """A GalleryIndex from a faiss index, PaddleX's index info and our meta (may be empty)."""
        for key in ("id_map", "metric_type", "index_type"):
            if key not in info:
                raise UserError(f"{where}: the index info has no '{key}' (PaddleX writes id_map, metric_type and "
                                "index_type): rebuild the index")
        id_map = info["id_map"] or {}
        if not isinstance(id_map, dict):
            raise UserError(f"{where}: id_map must map integer ids to labels; rebuild the index")
        try:
            labels = {int(k): str(v) for k, v in id_map.items()}
        except (TypeError, ValueError):
            raise UserError(f"{where}: id_map keys must be integer ids; rebuild the index") from None
        self = cls(index.d, meta.get("model_name"), info["index_type"],
                   nprobe=meta.get("nprobe", 32) if nprobe is None else nprobe,
                   model_fingerprint=meta.get("model_fingerprint"), metric_type=info["metric_type"],
                   pq_m=meta.get("pq_m") or 0, rerank=meta.get("rerank") or 0)
        expected_metric = self._faiss_metric()
        index = _unwrap_ivf(index)
        if index.metric_type != expected_metric:
            raise UserError(f"{where}: the faiss index measures metric {index.metric_type}, but the index info says "
                            f"'{self.metric_type}': the folder is inconsistent; rebuild the index")
        if meta.get("embedding_size") not in (None, index.d):
            raise UserError(f"{where}: vector.index is {index.d}-d but meta.json says {meta['embedding_size']}")
        if len(labels) != index.ntotal:
            raise UserError(f"{where}: id_map lists {len(labels)} faces but the faiss index holds {index.ntotal}: "
                            "the folder is inconsistent; rebuild the index")
        stored = np.sort(_stored_ids(index))
        listed = np.sort(np.fromiter(labels, dtype=np.int64, count=len(labels)))
        if not np.array_equal(stored, listed):  # (arrays, not sets: a million-face index loads in less memory)
            odd = sorted(set(stored.tolist()) ^ set(listed.tolist()))[:5]
            raise UserError(f"{where}: the ids in id_map do not match those in the faiss index (e.g. {odd}): "
                            "the folder is inconsistent; rebuild the index")
        sources = meta.get("sources") or {}
        self.entries = Entries()
        for i, lbl in labels.items():
            self.entries.set(i, lbl, sources.get(str(i)))
        top = int(listed[-1]) + 1 if len(listed) else 0
        del sources, labels, stored, listed
        self.index = index
        if isinstance(faiss.downcast_index(index), faiss.IndexIVF):
            self.nlist = int(faiss.downcast_index(index).nlist)
        self.next_id = max(int(meta.get("next_id", 0)), top)
        return self

    @classmethod
    def load(cls, index_dir, nprobe=None):
        """Read a folder written by save() or by PaddleX's IndexData.save (or this project's older
        layout); a missing, incomplete or inconsistent folder is a UserError naming it."""
        if not os.path.isdir(index_dir):
            raise UserError(
                f"gallery index folder '{index_dir}' does not exist: build it first with "
                f"-o Global.mode=build_index -o Index.gallery=DIR -o index={index_dir}"
            )
        info_path = os.path.join(index_dir, INFO_FILE)
        old_layout = not os.path.isfile(info_path) and os.path.isfile(os.path.join(index_dir, OLD_ID_MAP_FILE))
        needed = (INDEX_FILE, OLD_ID_MAP_FILE, META_FILE) if old_layout else (INDEX_FILE, INFO_FILE)
        for name in needed:
            if not os.path.isfile(os.path.join(index_dir, name)):
                raise UserError(
                    f"gallery index folder '{index_dir}' has no {name}: it is not a complete index; "
                    f"rebuild it with -o Global.mode=build_index"
                )
        meta_path = os.path.join(index_dir, META_FILE)
        meta = {}
        try:
            if os.path.isfile(meta_path):
                with open(meta_path, encoding="utf-8") as f:
                    meta = json.load(f)
            fast = (not old_layout and isinstance(meta, dict) and isinstance(meta.get("ids"), list)
                    and isinstance(meta.get("labels"), list) and len(meta["ids"]) == len(meta["labels"])
                    and bool(meta.get("index_sha256")) and meta.get("index_type") and meta.get("metric_type")
                    and meta.get("info_sha256") == file_digest(info_path))  # id_map.yaml as we wrote it
            if old_layout:
                with open(os.path.join(index_dir, OLD_ID_MAP_FILE), encoding="utf-8") as f:
                    old = json.load(f)
            elif fast:  # our own folder: meta.json carries the id map (checked against vector.index below)
                info = {"id_map": dict(zip(meta.pop("ids"), meta.pop("labels"))), "metric_type": meta["metric_type"],
                        "index_type": meta["index_type"]}
            else:
                with open(info_path, encoding="utf-8") as f:
                    info = yaml.load(f, Loader=YAML_LOADER)
        except (json.JSONDecodeError, UnicodeDecodeError, yaml.YAMLError) as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(f"gallery index folder '{index_dir}': unreadable index info ({first}); rebuild the index") \
                from None
        if not isinstance(meta, dict):
            raise UserError(f"{meta_path} must hold a JSON object; rebuild the index")
        if old_layout:
            info = _info_from_old_layout(old, meta, index_dir)
        elif not isinstance(info, dict):
            raise UserError(f"{info_path} must hold a mapping with id_map, metric_type and index_type; rebuild the index")
        if meta and "model_name" not in meta:
            raise UserError(f"{meta_path} has no 'model_name': rebuild the index with this version")
        index_path = os.path.join(index_dir, INDEX_FILE)
        if meta.get("index_sha256") and file_digest(index_path) != meta["index_sha256"]:
            raise UserError(f"{index_path} does not match the checksum recorded in meta.json (truncated, damaged or "
                            "replaced since it was saved): rebuild the index with -o Global.mode=build_index")
        try:
            index = faiss.read_index(index_path)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{index_path} is not a readable faiss index ({first}): rebuild the index with "
                            "-o Global.mode=build_index") from None
        self = cls._from_parts(index, info, meta, index_dir, nprobe)
        exact_path = os.path.join(index_dir, EXACT_FILE)
        if self.rerank:
            if not os.path.isfile(exact_path):
                raise UserError(f"gallery index folder '{index_dir}' has no {EXACT_FILE} (the exact features its "
                                "rerank needs): rebuild the index")
            # memory-mapped: a large gallery's exact features stay on disk; copy() reads them into memory
            # (IO_FLAG_MMAP_IFC maps a flat index's codes; plain IO_FLAG_MMAP reads them into memory)
            mmap = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)
            self.exact = faiss.read_index(exact_path, mmap | faiss.IO_FLAG_READ_ONLY)
            self._exact_mapped = True
            if self.exact.ntotal != len(self):
                raise UserError(f"{exact_path} holds {self.exact.ntotal} features but the index {len(self)}: "
                                "the folder is inconsistent; rebuild the index")
        if not meta:
            get_logger().warning(f"gallery index {index_dir} has no meta.json (built by PaddleX?): the model that built "
                                 f"it is not recorded, so queries are checked only for their size "
                                 f"({self.embedding_size}-d); use the same feature model")
        return self


# A label written as a plain YAML scalar only when it reads back as that same string: starts with a
# letter (not a number, date, '.inf', '~' or YAML syntax), only letters, digits and _ . - after it,
# and none of YAML 1.1's words for booleans and null. Any other label goes through PyYAML's emitter.
_PLAIN_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,199}")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _yaml_label(label):
    if _PLAIN_LABEL.fullmatch(label) and label.lower() not in _YAML_WORDS:
        return label
    text = yaml.dump([label], Dumper=YAML_DUMPER, default_flow_style=True, allow_unicode=True, width=1 << 30)
    return text.strip()[1:-1].strip()  # "[<scalar>]" -> "<scalar>"


def write_index_info(path, header, entries):
    """id_map.yaml as yaml.dump writes it (keys sorted: id_map, index_type, metric_type), streamed line
    by line: yaml.dump builds a node graph of the whole mapping first (gigabytes and minutes for ten
    million faces). Each distinct label is quoted once."""
    quoted = {}
    with open(path, "w", encoding="utf-8") as f:
        f.write("id_map:\n" if len(entries) else "id_map: {}\n")
        lines = []
        for i in sorted(entries):
            label = entries.label(i)
            text = quoted.get(label)
            if text is None:
                text = quoted[label] = _yaml_label(label)
            lines.append(f"  {i}: {text}\n")
            if len(lines) >= 65536:
                f.write("".join(lines))
                lines.clear()
        f.write("".join(lines))
        yaml.dump(header, f, Dumper=YAML_DUMPER, default_flow_style=False, allow_unicode=True)


def _info_from_old_layout(id_map, meta, index_dir):
    """PaddleX-style index info from this project's format-1 files (id_map.json: {id: {label, path}})."""
    if not isinstance(id_map, dict):
        raise UserError(f"{index_dir}/id_map.json must hold a JSON object; rebuild the index")
    try:
        labels = {int(k): str(v["label"]) for k, v in id_map.items()}
        meta.setdefault("sources", {str(int(k)): v.get("path") for k, v in id_map.items()})
    except (ValueError, TypeError, KeyError, AttributeError):
        raise UserError(f"{index_dir}/id_map.json: expected {{\"<integer id>\": {{\"label\": ..., \"path\": ...}}}}; "
                        "rebuild the index") from None
    for key in ("model_name", "embedding_size", "index_type"):
        if key not in meta:
            raise UserError(f"{index_dir}/meta.json has no '{key}': rebuild the index with this version")
    if meta.get("metric", "inner_product") != "inner_product" or not meta.get("normalized", True):
        raise UserError(f"{index_dir}/meta.json: only inner-product indexes on normalised features are supported")
    return {"id_map": labels, "metric_type": "IP", "index_type": meta["index_type"]}


def _stored_ids(index):
    """The ids a faiss index answers with: the id map of an IndexIDMap, the list ids of an IVF."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    if isinstance(index, faiss.IndexIVF):
        invlists = index.invlists
        ids = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
               for i in range(index.nlist) if invlists.list_size(i)]
        return np.concatenate(ids).astype(np.int64) if ids else np.zeros((0,), np.int64)
    return np.arange(index.ntotal, dtype=np.int64)  # a bare index: ids are the positions


def _unwrap_ivf(index):
    """PaddleX wraps its IVF in an IndexIDMap2, whose remove_ids then maps the wrong ids (IVF does not
    renumber what remains). Move the vectors into a bare IVF (same trained quantizer) holding the
    gallery ids itself; any other index is returned as it is."""
    # (return the caller's object itself: a downcast wrapper does not own the index it points to)
    outer = faiss.downcast_index(index)
    if not isinstance(outer, faiss.IndexIDMap):
        return index
    inner = faiss.downcast_index(outer.index)
    if not isinstance(inner, faiss.IndexIVF):
        return index
    ids = faiss.vector_to_array(outer.id_map).astype(np.int64)
    inner.make_direct_map()
    vectors = inner.reconstruct_n(0, inner.ntotal) if inner.ntotal else None
    bare = faiss.clone_index(inner)  # an owning IndexIVFFlat with the trained quantizer
    bare.set_direct_map_type(faiss.DirectMap.NoMap)
    bare.reset()
    if vectors is not None:
        bare.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return bare


def read_meta(index_dir):
    """meta.json of a saved index (or None when there is none)."""
    path = os.path.join(index_dir, META_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


INDEX_FILES = (INDEX_FILE, EXACT_FILE, INFO_FILE, META_FILE, OLD_ID_MAP_FILE, "index_info.yaml")


def foreign_entries(index_dir):
    """Sorted names in `index_dir` that are not gallery index files ([] for a missing or empty
    folder); UserError when `index_dir` is a file."""
    if os.path.isfile(index_dir):
        raise UserError(f"{index_dir} is a file, not an index folder: nothing was written; choose a folder")
    if not os.path.isdir(index_dir):
        return []
    return sorted(name for name in os.listdir(index_dir) if name not in INDEX_FILES)


def holds_index(index_dir):
    """Whether `index_dir` holds an index (ours or PaddleX's: a vector.index file)."""
    return os.path.isfile(os.path.join(index_dir, INDEX_FILE))


def listed(names, limit=5):
    """'a, b, c' of the first `limit` names, with how many more there are."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


# a gallery.txt line: the path up to its image extension, whitespace, the label
_GALLERY_LINE = re.compile(r"^(.*?\.(?:%s))\s+(\S.*)$" % "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS + (".webp", ".tif", ".tiff")),
                           re.IGNORECASE)


def list_gallery(gallery, label_file=None):
    """Gallery images as [(abs_path, label)], sorted.

    With `label_file` (PaddleX's gallery.txt): lines `<path> <label>`, path relative to `gallery`, or
    to the list file's folder when `gallery` is empty. The path runs up to its image extension, so
    both may hold spaces ("images/Mary Ann/1.jpg Mary Ann"); a path without a known extension ends
    at the first whitespace. Blank lines and `#` comments are skipped; a UTF-8 BOM and CRLF line
    ends are read as a text editor writes them.
    Without: `gallery` holds one folder per identity, the folder name is the label; images directly in
    `gallery` take their file stem as the label.
    """
    items = []
    if label_file:
        if not os.path.isfile(label_file):
            raise UserError(f"gallery list file '{label_file}' does not exist (Index.label_file)")
        base = gallery if gallery else os.path.dirname(os.path.abspath(label_file))
        with open(label_file, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                found = _GALLERY_LINE.match(text)
                parts = [found.group(1), found.group(2)] if found else text.split(None, 1)
                if len(parts) != 2:
                    raise UserError(
                        f"{label_file}:{lineno}: expected '<image path> <label>', got '{text}'; "
                        f"fix the line or remove it"
                    )
                path = parts[0] if os.path.isabs(parts[0]) else os.path.join(base, parts[0])
                items.append((os.path.abspath(path), parts[1].strip()))
        return items
    if not gallery or not os.path.isdir(gallery):
        raise UserError(
            f"gallery folder '{gallery}' does not exist: set Index.gallery to a folder with one "
            f"sub-folder of images per person, or Index.label_file to a '<path> <label>' list"
        )
    for name in sorted(os.listdir(gallery)):
        full = os.path.join(gallery, name)
        if os.path.isdir(full) and not name.startswith("."):
            items.extend((os.path.abspath(path), name) for path in list_images(full))
        elif name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
            items.append((os.path.abspath(full), os.path.splitext(name)[0]))
    return items
