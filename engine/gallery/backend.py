"""The one gallery switch: Index.backend chooses faiss folders or Milvus collections here and nowhere
else. Every index opened or created through GallerySettings gets the Index section's search
settings (nprobe, ef_search) and build settings (index type, metric, pq_m, rerank).
"""
import os
import re
from dataclasses import dataclass, fields

from engine.gallery.faiss_index import GalleryIndex
from engine.gallery.milvus_index import MilvusGalleryIndex, check_uri, client_for, milvus_errors, pymilvus
from engine.gallery.store import IndexStore, MilvusIndexStore
from foundation.errors import UserError

BACKENDS = ("faiss", "milvus")


@dataclass(frozen=True)
class GallerySettings:
    """The config's Index section, as far as opening, creating and searching an index needs it."""

    backend: str = "faiss"
    index_type: str = "Flat"
    metric_type: str = "IP"
    nprobe: int = 32
    ef_search: int = 64
    pq_m: int = 0
    rerank: int = 0
    uri: str = None
    token: str = None
    connect_timeout: float = 5.0
    connect_retries: int = 2

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise UserError(f"Index.backend '{self.backend}' is not one of {', '.join(BACKENDS)}")
        if self.milvus:
            pymilvus()  # without the extra: say what to install before any work
            object.__setattr__(self, "uri", check_uri(self.uri))

    @classmethod
    def from_config(cls, index_section):
        """The settings of a pipeline config's Index section (engine.config.schema.IndexSection)."""
        return cls(**{f.name: getattr(index_section, f.name) for f in fields(cls)})

    @property
    def milvus(self):
        return self.backend == "milvus"

    def _connection(self):
        return {"token": self.token, "connect_timeout": self.connect_timeout, "connect_retries": self.connect_retries}

    def configure(self, index):
        """Apply the search settings to an index; returns it."""
        index.nprobe = self.nprobe
        index.ef_search = self.ef_search
        return index

    def open(self, name, **milvus_options):
        """The stored index `name`: a folder (faiss) or a collection on Index.uri (milvus). A missing or
        broken one is a UserError naming it. milvus_options: MilvusGalleryIndex.open's `missing`,
        `call_timeout`."""
        if self.milvus:
            return self.configure(MilvusGalleryIndex.open(self.uri, name, self.nprobe, **self._connection(),
                                                          **milvus_options))
        if not os.path.isdir(name):
            raise UserError(f"gallery index folder '{name}' does not exist: build it first with "
                            f"-o Global.mode=build_index -o Index.gallery=DIR -o index={name}")
        return self.load_folder(name)

    def exists(self, name):
        """Whether the index `name` is stored: a folder (faiss), a collection on Index.uri (milvus)."""
        if self.milvus:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", name):
                return False  # not a collection name Milvus accepts (e.g. the faiss default output/gallery_index)
            client = client_for(self.uri, self.token, self.connect_timeout, self.connect_retries)
            with milvus_errors(self.uri):
                return bool(client.has_collection(name))
        return os.path.isdir(name)

    def load_folder(self, folder):
        """A faiss index folder, whatever the backend (checkpoints and service versions are folders)."""
        return self.configure(GalleryIndex.load(folder, nprobe=self.nprobe))

    def create(self, embedding_size, model_name, fingerprint, name=None, index_type=None, metric_type=None,
               in_memory=False, **milvus_options):
        """An empty index: in memory (faiss, or any backend with in_memory=True), or with the milvus
        backend a new collection `name` on Index.uri (milvus_options: MilvusGalleryIndex.create's
        `replace`, `call_timeout`)."""
        index_type, metric_type = index_type or self.index_type, metric_type or self.metric_type
        if self.milvus and not in_memory:
            if not name:
                raise UserError("Index.backend=milvus: set `index` to the collection's name (-o index=my_gallery)")
            index = MilvusGalleryIndex.create(self.uri, name, embedding_size, model_name, fingerprint, index_type,
                                              metric_type, self.nprobe, **self._connection(), **milvus_options)
            return self.configure(index)
        return self.configure(GalleryIndex(embedding_size, model_name, index_type, self.nprobe,
                                           model_fingerprint=fingerprint, metric_type=metric_type, pq_m=self.pq_m,
                                           rerank=self.rerank))

    def store(self, index_root):
        """The service's per-indexKey store: folders under index_root (faiss) or collections (milvus)."""
        return MilvusIndexStore(self) if self.milvus else IndexStore(index_root, self)
