"""Gallery index for 1:N face search on faiss: cosine similarity as inner product on L2-normalised features.

A saved index is a folder:
  vector.index   the faiss index (faiss.write_index)
  id_map.json    {"<id>": {"label": ..., "path": ...}}: who each stored vector is and where it came from
  meta.json      model name, embedding size, model fingerprint, index type, metric, counts

Index types and how removal works for each (the reference cannot remove from HNSW at all):
  Flat  IndexIDMap2(IndexFlatIP): exact search; removal through the id map.
  IVF   IndexIVFFlat(IndexFlatIP quantizer, nlist) carrying our ids natively, trained on the gallery
        at build time; nlist grows with the gallery size (about 4 * sqrt(N), at least 39 training
        points per list). IVF is not wrapped in an IndexIDMap: IndexIDMap.remove_ids assumes the inner
        index renumbers what remains, which IVF does not, so the map would go wrong after a removal.
  HNSW  IndexIDMap2(IndexHNSWFlat, M=32). HNSW graphs cannot drop nodes, so a removal rebuilds the
        graph from the vectors that remain; those are read back from the graph's own flat storage,
        so no second copy of the gallery is kept in memory or on disk.

Features from a different model cannot be compared with the stored ones, so the model name,
embedding size and weights fingerprint are recorded and a mismatching query is refused.
Plain numpy and faiss: no Paddle here.
"""
import json
import logging
import math
import os
import time

import numpy as np

from datasets.transforms import IMAGE_EXTENSIONS, list_images
from engine.metrics import l2_normalize
from foundation.atomic_io import atomic_replace_dir, file_digest
from foundation.errors import UserError

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # no INFO lines about CPU features
import faiss  # noqa: E402 - after quieting its loader

INDEX_TYPES = ("Flat", "IVF", "HNSW")
UNKNOWN_LABEL = "unknown"
INDEX_FILE = "vector.index"
ID_MAP_FILE = "id_map.json"
META_FILE = "meta.json"
FORMAT_VERSION = 1
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
    """'flat' / 'IVF' / 'hnsw32' -> 'Flat' | 'IVF' | 'HNSW'; anything else is a UserError."""
    key = str(name or "Flat").strip().lower()
    table = {"flat": "Flat", "ivf": "IVF", "ivfflat": "IVF", "hnsw": "HNSW", "hnsw32": "HNSW"}
    if key not in table:
        raise UserError(f"Index.index_type '{name}' is not one of {', '.join(INDEX_TYPES)}")
    return table[key]


def l2_normalize_rows(x):
    """Rows scaled to unit length (zero rows stay zero) as contiguous float32, what faiss takes."""
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(l2_normalize(x[None, :] if x.ndim == 1 else x), dtype=np.float32)


def choose_nlist(num_vectors):
    """IVF list count for a gallery: ~4*sqrt(N), but at least 39 training points per list."""
    if num_vectors <= 0:
        return 1
    return int(max(1, min(round(4 * math.sqrt(num_vectors)), num_vectors // 39)))


def apply_threshold(labels, scores, threshold, unknown=UNKNOWN_LABEL):
    """Top-1 decision for one query: (label, score). Cosine similarity: higher is more alike, so a
    best score BELOW the threshold (or no gallery entry at all) is the explicit `unknown` label."""
    if len(labels) == 0:
        return unknown, None
    best = float(scores[0])
    return (labels[0] if best >= float(threshold) else unknown), best


class GalleryIndex:
    """Vectors with integer ids, a label and a source path per id, searchable by cosine similarity."""

    def __init__(self, embedding_size, model_name, index_type="Flat", nprobe=32, model_fingerprint=None):
        self.embedding_size = int(embedding_size)
        if self.embedding_size <= 0:
            raise UserError(f"embedding size must be positive, got {embedding_size}")
        self.model_name = str(model_name)
        self.model_fingerprint = model_fingerprint
        self.index_type = normalize_index_type(index_type)
        self.nprobe = int(nprobe)
        self.nlist = None
        self.entries = {}  # id -> {"label": str, "path": str | None}
        self.next_id = 0
        self.index = None  # built on the first add (IVF needs the data to train on)

    # ------------------------------------------------------------------ building
    def __len__(self):
        return 0 if self.index is None else int(self.index.ntotal)

    @property
    def labels(self):
        """Sorted distinct labels in the gallery."""
        return sorted({e["label"] for e in self.entries.values()})

    def _new_index(self, train_vectors):
        d = self.embedding_size
        if self.index_type == "Flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        if self.index_type == "HNSW":
            return faiss.IndexIDMap2(faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT))
        self.nlist = choose_nlist(len(train_vectors))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, self.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # small galleries: no warning spam, nlist already limits it
        index.train(train_vectors)
        index.nprobe = max(1, min(self.nprobe, self.nlist))
        return index

    def check_model(self, model_name, embedding_size, model_fingerprint=None, what="query"):
        """Refuse features from another model: their cosines with the gallery would be meaningless."""
        problems = []
        if int(embedding_size) != self.embedding_size:
            problems.append(f"embedding size {embedding_size} != {self.embedding_size}")
        if model_name is not None and str(model_name) != self.model_name:
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
                f"built by {self.model_name}: rebuild the index with the new model"
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
        for i, label, path in zip(ids.tolist(), labels, paths):
            self.entries[i] = {"label": label, "path": None if path is None else str(path)}
        self.next_id += len(feats)
        return ids

    # ------------------------------------------------------------------ removal
    def ids_of_label(self, label):
        return [i for i, e in self.entries.items() if e["label"] == str(label)]

    def remove_label(self, label):
        """Remove every vector of `label`; returns how many were removed."""
        return self.remove_ids(self.ids_of_label(label))

    def remove_ids(self, ids):
        """Remove vectors by id (unknown ids are ignored); returns how many were removed."""
        ids = sorted({int(i) for i in ids if int(i) in self.entries})
        if not ids or self.index is None:
            return 0
        id_array = np.asarray(ids, dtype=np.int64)
        if self.index_type == "HNSW":
            self._rebuild_hnsw_without(set(ids))
        else:
            removed = self.index.remove_ids(faiss.IDSelectorBatch(id_array))
            if removed != len(ids):
                raise RuntimeError(f"faiss removed {removed} of {len(ids)} vectors: the index and its id map disagree")
        for i in ids:
            del self.entries[i]
        return len(ids)

    def _stored_vectors(self):
        """(ids, vectors) held by an IndexIDMap2-wrapped Flat/HNSW index, read back from its storage."""
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        vectors = self.index.index.reconstruct_n(0, self.index.ntotal) if len(ids) else \
            np.zeros((0, self.embedding_size), np.float32)
        return ids, np.asarray(vectors, dtype=np.float32)

    def _rebuild_hnsw_without(self, drop):
        ids, vectors = self._stored_vectors()
        keep = np.array([i not in drop for i in ids.tolist()], dtype=bool)
        self.index = self._new_index(vectors[keep])
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
        if self.index_type == "IVF":
            self.index.nprobe = max(1, min(self.nprobe, self.nlist or 1))
        elif self.index_type == "HNSW":
            faiss.downcast_index(self.index.index).hnsw.efSearch = max(HNSW_EF_SEARCH, k)
        scores, ids = self.index.search(l2_normalize_rows(feats), k)
        out_labels, out_scores, out_ids = [], [], []
        for row_s, row_i in zip(scores, ids):
            valid = row_i >= 0  # IVF/HNSW may find fewer than k neighbours
            row_i = row_i[valid]
            out_ids.append(row_i.astype(np.int64))
            out_scores.append(row_s[valid].astype(np.float32))
            out_labels.append([self.entries[int(i)]["label"] for i in row_i])
        return out_labels, out_scores, out_ids

    # ------------------------------------------------------------------ persistence
    def meta(self):
        return {
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "embedding_size": self.embedding_size,
            "model_fingerprint": self.model_fingerprint,
            "index_type": self.index_type,
            "metric": "inner_product",
            "normalized": True,
            "num_vectors": len(self),
            "num_labels": len(self.labels),
            "next_id": self.next_id,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self, index_dir):
        """Write the folder atomically: readers see the old index or the new one, never a mix."""
        if self.index is None:
            raise UserError(f"refusing to save an empty gallery index to {index_dir}: add at least one face")

        def build(tmp):
            faiss.write_index(self.index, os.path.join(tmp, INDEX_FILE))
            id_map = {str(i): self.entries[i] for i in sorted(self.entries)}
            with open(os.path.join(tmp, ID_MAP_FILE), "w", encoding="utf-8") as f:
                json.dump(id_map, f, indent=1, ensure_ascii=False)
            meta = dict(self.meta(), index_sha256=file_digest(os.path.join(tmp, INDEX_FILE)))
            with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, ensure_ascii=False)

        atomic_replace_dir(build, index_dir)

    @classmethod
    def load(cls, index_dir, nprobe=None):
        """Read a folder written by save(); a missing or incomplete folder is a UserError naming it."""
        if not os.path.isdir(index_dir):
            raise UserError(
                f"gallery index folder '{index_dir}' does not exist: build it first with "
                f"-o Global.mode=build_index -o Index.gallery=DIR -o Index.dir={index_dir}"
            )
        for name in (INDEX_FILE, ID_MAP_FILE, META_FILE):
            if not os.path.isfile(os.path.join(index_dir, name)):
                raise UserError(
                    f"gallery index folder '{index_dir}' has no {name}: it is not a complete index; "
                    f"rebuild it with -o Global.mode=build_index"
                )
        meta_path = os.path.join(index_dir, META_FILE)
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            with open(os.path.join(index_dir, ID_MAP_FILE), encoding="utf-8") as f:
                id_map = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"gallery index folder '{index_dir}': unreadable JSON ({e}); rebuild the index") from None
        if not isinstance(meta, dict) or not isinstance(id_map, dict):
            raise UserError(f"gallery index folder '{index_dir}': meta.json and id_map.json must hold JSON objects; "
                            "rebuild the index")
        for key in ("model_name", "embedding_size", "index_type"):
            if key not in meta:
                raise UserError(f"{meta_path} has no '{key}': rebuild the index with this version")
        if meta.get("metric", "inner_product") != "inner_product" or not meta.get("normalized", True):
            raise UserError(f"{meta_path}: only inner-product indexes on normalised features are supported")
        self = cls(meta["embedding_size"], meta["model_name"], meta["index_type"],
                   nprobe=meta.get("nprobe", 32) if nprobe is None else nprobe,
                   model_fingerprint=meta.get("model_fingerprint"))
        self.nlist = meta.get("nlist")
        self.next_id = int(meta.get("next_id", 0))
        index_path = os.path.join(index_dir, INDEX_FILE)
        if meta.get("index_sha256") and file_digest(index_path) != meta["index_sha256"]:
            raise UserError(f"{index_path} does not match the checksum recorded in meta.json (truncated, damaged or "
                            "replaced since it was saved): rebuild the index with -o Global.mode=build_index")
        try:
            self.index = faiss.read_index(index_path)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{index_path} is not a readable faiss index ({first}): rebuild the index with "
                            "-o Global.mode=build_index") from None
        if self.index.d != self.embedding_size:
            raise UserError(f"{index_dir}: vector.index is {self.index.d}-d but meta.json says {self.embedding_size}")
        try:
            self.entries = {int(k): {"label": str(v["label"]), "path": v.get("path")} for k, v in id_map.items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UserError(f"{index_dir}/id_map.json: expected {{\"<integer id>\": {{\"label\": ..., \"path\": ...}}}}; "
                            "rebuild the index") from None
        if len(self.entries) != self.index.ntotal:
            raise UserError(
                f"{index_dir}: id_map.json lists {len(self.entries)} faces but vector.index holds "
                f"{self.index.ntotal}: the folder is inconsistent; rebuild the index"
            )
        if self.index_type != "IVF" and len(self.entries):  # IndexIDMap2 keeps its ids: they must be the map's
            stored = set(faiss.vector_to_array(self.index.id_map).astype(np.int64).tolist())
            if stored != set(self.entries):
                odd = sorted(stored ^ set(self.entries))[:5]
                raise UserError(f"{index_dir}: the ids in id_map.json do not match those in vector.index (e.g. {odd}): "
                                "the folder is inconsistent; rebuild the index")
        if self.entries:
            self.next_id = max(self.next_id, max(self.entries) + 1)
        return self


def read_meta(index_dir):
    """meta.json of a saved index (or None when there is none)."""
    path = os.path.join(index_dir, META_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def list_gallery(gallery, label_file=None):
    """Gallery images as [(abs_path, label)], sorted.

    With `label_file`: lines `<path> <label>` (path relative to `gallery`, or to the list file's folder
    when `gallery` is empty; the label may contain spaces); blank lines and `#` comments are skipped.
    Without: `gallery` holds one folder per identity, the folder name is the label; images directly in
    `gallery` take their file stem as the label.
    """
    items = []
    if label_file:
        if not os.path.isfile(label_file):
            raise UserError(f"gallery list file '{label_file}' does not exist (Index.label_file)")
        base = gallery if gallery else os.path.dirname(os.path.abspath(label_file))
        with open(label_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                parts = text.split(None, 1)
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
