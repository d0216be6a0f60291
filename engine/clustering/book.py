"""A collection of faces grouped by person, kept in a folder and grown run after run.

    book = ClusterBook.new(model)              # or ClusterBook.load(folder, model)
    book.add(faces, features, settings)        # new faces join old clusters or form new ones
    book.rename({3: "Alice"}); book.merge(["Alice", 7]); book.split("Alice", settings)
    book.move({"unsorted": [12]}); book.save(folder)

Cluster ids are numbers given once and never reused: a later run with new photos keeps every
cluster's id (and name), so a person's folder and links stay where they were. New faces first join
the cluster that most of their near neighbours (at or above the threshold) belong to; the faces left
over, with the old unsorted ones, are grouped among themselves (engine.clustering.graph) and each
group large enough becomes a new cluster, numbered largest first.

A face that is too small or scored low by the detector is kept but joins nobody: it goes to
`unsorted`, with the reason in its `quality`. Plain numpy and faiss; the files are
cluster_result.json (every face and cluster) and features.npy (row = face id).
"""
import json
import os
from dataclasses import asdict, dataclass, fields

import numpy as np

from engine.clustering.graph import METHODS, group, neighbour_index
from engine.config.schema import ClusterSection
from engine.evaluation.clustering import UNSORTED
from foundation.atomic_io import atomic_save, atomic_write_json
from foundation.errors import UserError

FORMAT = "facefeat-clusters"
VERSION = 1
RESULT_FILE = "cluster_result.json"
FEATURES_FILE = "features.npy"
UNSORTED_NAME = "unsorted"
NEW_NAME = "new"  # Cluster.move's target for a cluster of its own
MAX_NAME_LENGTH = 100
STRICTEST_SPLIT = 0.99
COLLAPSE_MIN_FACES, COLLAPSE_SHARE = 100, 0.5  # when collapse_hint speaks up


@dataclass
class ClusterSettings:
    """How faces are grouped (the pipeline config's Cluster section, engine.config.schema)."""
    threshold: float = 0.5
    method: str = "whispers"
    neighbours: int = 64
    min_cluster_size: int = 2
    min_face_size: int = 32
    min_det_score: float = 0.7
    seed: int = 0
    split_step: float = 0.05

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"Cluster.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if int(self.neighbours) < 1 or int(self.min_cluster_size) < 1:
            raise UserError("Cluster.neighbours and Cluster.min_cluster_size must be at least 1")

    @classmethod
    def from_config(cls, section, threshold):
        names = {f.name for f in fields(cls)} & {f.name for f in fields(ClusterSection)}
        values = {name: getattr(section, name) for name in names if name not in ("threshold", "threshold_margin")}
        return cls(threshold=float(threshold), **values)

    def quality(self, face):
        """'ok', or why the face joins nobody ('small', 'low score')."""
        x1, y1, x2, y2 = face["box"]
        if min(x2 - x1, y2 - y1) < self.min_face_size:
            return "small"
        if face["det_score"] < self.min_det_score:
            return "low score"
        return "ok"


class ClusterBook:
    """Every face seen (`faces`: dicts with id, source, path, box, det_score, quality, cluster),
    their features (row = face id), the clusters' names and the photos already read."""

    def __init__(self, model, faces=(), features=None, names=None, next_id=1, photos=None, enrolled=None,
                 settings=None):
        self.model = dict(model)  # {"name", "embedding_size", "fingerprint"}
        self.faces = list(faces)
        size = int(self.model["embedding_size"])
        self.features = np.zeros((0, size), np.float32) if features is None else np.asarray(features, np.float32)
        self.names = dict(names or {})  # cluster id -> name (named clusters only)
        self.next_id = int(next_id)
        self.photos = dict(photos or {})  # absolute path -> faces found in it
        self.enrolled = {k: set(v) for k, v in (enrolled or {}).items()}  # index -> face ids enrolled there
        self.settings = dict(settings or {})  # the settings of the last grouping, for the record
        self.folder = None

    # ------------------------------------------------------------------ reading
    @classmethod
    def new(cls, model):
        return cls(model)

    @classmethod
    def load(cls, folder, model=None):
        """The book saved in `folder`; UserError naming the file when it is not one, or when `model`
        (the pipeline's {"name", "embedding_size", "fingerprint"}) is not the model that made it."""
        path = os.path.join(folder, RESULT_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as e:
            raise UserError(f"{path} is not valid JSON ({e}); restore it or choose a new -o Cluster.output") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path} is not a cluster result of this toolkit; choose another -o Cluster.output")
        if int(data.get("version", 0)) > VERSION:
            raise UserError(f"{path} was written by a newer version (format {data['version']}); update the toolkit")
        try:
            features = np.load(os.path.join(folder, FEATURES_FILE), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"{os.path.join(folder, FEATURES_FILE)} cannot be read ({e}): the cluster folder is "
                            "damaged; choose a new -o Cluster.output") from None
        faces = data["faces"]
        if len(features) > len(faces):  # a run killed between its two writes: faces only ever grow
            features = features[:len(faces)]
        if len(features) != len(faces):
            raise UserError(f"{folder}: {len(faces)} faces in {RESULT_FILE} but {len(features)} rows in "
                            f"{FEATURES_FILE}: the folder is damaged; choose a new -o Cluster.output")
        if model is not None and data["model"]["fingerprint"] != model["fingerprint"]:
            raise UserError(f"{folder} was clustered with another recognition model ({data['model']['name']}, "
                            f"{data['model']['embedding_size']}-d): features of different models cannot be compared; "
                            "use that model, or a new -o Cluster.output")
        names = {int(c["id"]): c["name"] for c in data["clusters"] if c.get("name")}
        book = cls(data["model"], faces, features, names, data["next_cluster_id"], data.get("photos"),
                   data.get("enrolled"), data.get("settings"))
        book.folder = folder
        return book

    @staticmethod
    def exists(folder):
        return os.path.isfile(os.path.join(folder, RESULT_FILE))

    # ------------------------------------------------------------------ views
    @property
    def labels(self):
        """Cluster id per face (UNSORTED for the unsorted ones), as an array."""
        return np.array([f["cluster"] for f in self.faces], dtype=np.int64)

    def groups(self):
        """{cluster id: [its face ids]} of every cluster that holds faces, largest first (then by
        id), in one pass over the faces (what the writers use: never a pass per cluster)."""
        out = {}
        for face in self.faces:
            if face["cluster"] != UNSORTED:
                out.setdefault(face["cluster"], []).append(face["id"])
        return dict(sorted(out.items(), key=lambda kv: (-len(kv[1]), kv[0])))

    def cluster_ids(self):
        """Ids of the clusters that hold faces, largest first (then by id)."""
        return list(self.groups())

    def members(self, cluster_id):
        return [f["id"] for f in self.faces if f["cluster"] == cluster_id]

    def label_of(self, cluster_id):
        """What people read for a cluster: its name, else 'cluster <id>'."""
        return self.names.get(cluster_id) or f"cluster {cluster_id}"

    def collapse_hint(self, min_faces=COLLAPSE_MIN_FACES, share=COLLAPSE_SHARE):
        """A line of advice when one cluster holds most of the clustered faces (at least min_faces
        of them, and `share` of all): what a threshold too loose for the model does (different
        people chained together). None otherwise. An album of one person looks the same, so it
        says where to look, not that it is wrong."""
        groups = self.groups()
        if not groups:
            return None
        first = next(iter(groups))
        largest, clustered = len(groups[first]), sum(len(members) for members in groups.values())
        if largest < min_faces or largest < share * clustered:
            return None
        return (f"cluster {first} holds {largest} of the {clustered} clustered faces: if its sheet "
                f"(sheets/{first:04d}*.jpg) shows different people, the threshold "
                f"({self.settings.get('threshold')}) is too loose for this model; raise -o Cluster.threshold "
                "(docs/clustering.md#quality)")

    def representative(self, cluster_id, members=None):
        """The face id nearest the cluster's mean feature (the face its pictures show first);
        `members` (its face ids) when the caller has them already."""
        ids = self.members(cluster_id) if members is None else members
        feats = self.features[ids]
        mean = feats.mean(axis=0)
        return int(ids[int(np.argmax(feats @ mean))])

    def resolve(self, ref, allow_unsorted=False):
        """The cluster id of `ref`: an id (number or digits) or a cluster's name; UserError otherwise."""
        text = str(ref).strip()
        if allow_unsorted and text == UNSORTED_NAME:
            return UNSORTED
        live = set(self.cluster_ids())
        for cid, name in self.names.items():
            if name == text and cid in live:
                return cid
        if text.lstrip("-").isdigit() and int(text) in live:
            return int(text)
        named = ", ".join(sorted(self.names[c] for c in live if c in self.names)[:10]) or "none"
        raise UserError(f"no cluster '{text}' in this cluster folder: give a cluster id (1 to {self.next_id - 1}, see "
                        f"clusters.csv) or a name (named now: {named})")

    # ------------------------------------------------------------------ growing
    def add(self, faces, features, settings):
        """Add new faces (dicts with source, path, box, det_score; their features row by row) and
        group them: into old clusters first, then into new ones. Returns the new faces' ids."""
        if not len(faces):
            return []
        features = np.asarray(features, np.float32).reshape(len(faces), -1)
        if features.shape[1] != self.features.shape[1]:
            raise UserError(f"features of size {features.shape[1]} cannot join clusters of size "
                            f"{self.features.shape[1]}")
        first = len(self.faces)
        for offset, face in enumerate(faces):
            record = {"id": first + offset, **face, "quality": settings.quality(face), "cluster": UNSORTED}
            self.faces.append(record)
        self.features = np.concatenate([self.features, features])
        new_ids = np.arange(first, len(self.faces))
        self._join_old(new_ids, settings)
        self._group_leftovers(new_ids, settings)
        self.settings = {k: v for k, v in asdict(settings).items() if k != "split_step"}
        self.settings["threshold"] = round(settings.threshold, 4)
        return new_ids.tolist()

    def _join_old(self, new_ids, settings):
        """Each new good face joins the old cluster with the largest total similarity among its
        nearest clustered faces at or above the threshold, if any."""
        labels = self.labels
        old = np.flatnonzero(labels[:new_ids[0]] != UNSORTED)
        candidates = np.array([i for i in new_ids if self.faces[i]["quality"] == "ok"], dtype=np.int64)
        if not len(old) or not len(candidates):
            return
        index = neighbour_index(np.ascontiguousarray(self.features[old]), exact=True)
        scores, found = index.search(np.ascontiguousarray(self.features[candidates]), min(settings.neighbours, len(old)))
        for face_id, row_scores, row_found in zip(candidates.tolist(), scores, found):
            votes = {}
            for score, position in zip(row_scores.tolist(), row_found.tolist()):
                if position >= 0 and score >= settings.threshold:
                    cid = int(labels[old[position]])
                    votes[cid] = votes.get(cid, 0.0) + score
            if votes:
                self.faces[face_id]["cluster"] = max(votes.items(), key=lambda kv: (kv[1], -kv[0]))[0]

    def _group_leftovers(self, new_ids, settings):
        """Group the good faces in no cluster (new and old alike) around the new ones; groups large
        enough become new clusters, numbered largest first."""
        pool = np.array([f["id"] for f in self.faces if f["cluster"] == UNSORTED and f["quality"] == "ok"],
                        dtype=np.int64)
        if len(pool) < settings.min_cluster_size:
            return
        queries = np.flatnonzero(np.isin(pool, new_ids))  # old leftovers can only group through new faces
        if not len(queries):
            return
        grouped = group(self.features[pool], settings.threshold, settings.method, settings.neighbours,
                        settings.seed, settings.min_cluster_size, queries=None if len(queries) == len(pool) else queries)
        self._number_groups(pool, grouped)

    def _number_groups(self, face_ids, grouped, keep=None):
        """Give each group of `grouped` (labels 0.. or UNSORTED, row by row of face_ids) a new cluster
        id, largest first; with `keep`, the largest group takes that id instead. Returns the ids given."""
        values, counts = np.unique(grouped[grouped != UNSORTED], return_counts=True)
        order = [int(v) for _, v in sorted(zip(-counts, values))]
        given = []
        for rank, value in enumerate(order):
            if rank == 0 and keep is not None:
                cid = keep
            else:
                cid, self.next_id = self.next_id, self.next_id + 1
            given.append(cid)
            for face_id in face_ids[grouped == value].tolist():
                self.faces[face_id]["cluster"] = cid
        return given

    # ------------------------------------------------------------------ editing
    def rename(self, names):
        """Name clusters: {cluster id or current name: new name}; '' removes a name. Names are unique."""
        wanted = {self.resolve(ref): _checked_name(name) for ref, name in names.items()}
        live = set(self.cluster_ids())
        final = {cid: name for cid, name in self.names.items() if cid in live}
        for cid, name in wanted.items():
            final[cid] = name
        final = {cid: name for cid, name in final.items() if name}
        taken = sorted({name for name in final.values() if list(final.values()).count(name) > 1})
        if taken:
            raise UserError(f"the name '{taken[0]}' would name two clusters: names are unique (merge the clusters "
                            "with -o Cluster.merge=\"[[a, b]]\" if they are one person)")
        self.names = final
        return wanted

    def merge(self, refs):
        """The clusters `refs` become the first one: its id, and its name (else the first name among
        the others). Returns (the kept id, the ids merged into it)."""
        ids = []
        for ref in refs:
            cid = self.resolve(ref)
            if cid not in ids:
                ids.append(cid)
        if len(ids) < 2:
            raise UserError(f"merge {list(refs)}: give at least two different clusters, e.g. [[Alice, 7]]")
        keep, gone = ids[0], ids[1:]
        if keep not in self.names:
            named = [self.names[c] for c in gone if c in self.names]
            if named:
                self.names[keep] = named[0]
        for face in self.faces:
            if face["cluster"] in gone:
                face["cluster"] = keep
        for cid in gone:
            self.names.pop(cid, None)
        return keep, gone

    def split(self, ref, settings):
        """Regroup a cluster's faces at stricter thresholds (settings.threshold + split_step, then
        further) until it falls apart; the largest part keeps its id and name, the others get new
        ids, faces left alone go to unsorted. Returns [the ids of the parts]."""
        cid = self.resolve(ref)
        members = np.array(self.members(cid), dtype=np.int64)
        threshold = settings.threshold
        while True:
            threshold = round(threshold + settings.split_step, 4)
            if threshold > STRICTEST_SPLIT:
                raise UserError(f"{self.label_of(cid)} stays one group up to cosine {STRICTEST_SPLIT}: move single "
                                f"faces out with -o Cluster.move=\"{{unsorted: [face ids]}}\" (ids in clusters.csv)")
            grouped = group(self.features[members], threshold, settings.method, settings.neighbours, settings.seed,
                            settings.min_cluster_size)
            if len(set(grouped.tolist())) > 1:
                break
        for face_id in members.tolist():
            self.faces[face_id]["cluster"] = UNSORTED
        return self._number_groups(members, grouped, keep=cid), threshold

    def move(self, moves):
        """{cluster id, name, 'unsorted' or 'new': [face ids]}: put those faces there ('new': into one
        new cluster). Returns how many moved."""
        moved = 0
        for ref, face_ids in moves.items():
            if str(ref).strip() == NEW_NAME:
                target, self.next_id = self.next_id, self.next_id + 1
            else:
                target = self.resolve(ref, allow_unsorted=True)
            for face_id in _as_list(face_ids):
                try:
                    face = self.faces[int(face_id)]
                except (ValueError, IndexError, TypeError):
                    raise UserError(f"no face {face_id!r} in this cluster folder (face ids run from 0 to "
                                    f"{len(self.faces) - 1}; see clusters.csv)") from None
                face["cluster"] = target
                moved += 1
        return moved

    # ------------------------------------------------------------------ writing
    def to_json(self):
        clusters = [{"id": cid, "name": self.names.get(cid), "size": len(members),
                     "representative": self.representative(cid, members), "faces": members}
                    for cid, members in self.groups().items()]
        return {
            "format": FORMAT, "version": VERSION, "model": self.model, "settings": self.settings,
            "next_cluster_id": self.next_id,
            "summary": {"faces": len(self.faces), "clusters": len(clusters), "named": sum(1 for c in clusters if c["name"]),
                        "unsorted": int(np.sum(self.labels == UNSORTED)), "photos": len(self.photos)},
            "clusters": clusters,
            "unsorted": [f["id"] for f in self.faces if f["cluster"] == UNSORTED],
            "faces": self.faces,
            "photos": self.photos,
            "enrolled": {k: sorted(v) for k, v in self.enrolled.items()},
        }

    def save(self, folder):
        """Write cluster_result.json and features.npy into `folder` (each atomically; the features first,
        so a result file never names rows the features file lacks)."""
        os.makedirs(folder, exist_ok=True)
        atomic_save(lambda tmp: write_npy(tmp, self.features), os.path.join(folder, FEATURES_FILE))
        atomic_write_json(os.path.join(folder, RESULT_FILE), self.to_json(), indent=1)
        self.folder = folder


def write_npy(path, array):
    """np.save of `array` into the file `path`, flushed to disk (for atomic_save)."""
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _checked_name(name):
    text = "" if name is None else str(name).strip()
    if len(text) > MAX_NAME_LENGTH or any(ch in text for ch in "\n\r\t/\\") or text in (UNSORTED_NAME, NEW_NAME):
        raise UserError(f"'{text[:40]}' cannot name a cluster: at most {MAX_NAME_LENGTH} characters, no slashes, "
                        f"tabs or line breaks, and not '{UNSORTED_NAME}' or '{NEW_NAME}'")
    return text


def _as_list(value):
    """A value or a sequence of them (a list, or a config's list) as a list."""
    return [value] if isinstance(value, (str, int)) else list(value)


def read_names(names):
    """Cluster.names as {ref: name}: a mapping as it is, or a file of '<cluster id or name> <new name>'
    lines (a name may hold spaces; '#' starts a comment); UserError naming the file and line."""
    if names is None:
        return {}
    if hasattr(names, "items"):
        return {str(k): v for k, v in names.items()}
    path = os.fspath(names)
    if not os.path.isfile(path):
        raise UserError(f"Cluster.names: {path} is not a file; give a file of '<cluster id> <name>' lines or a "
                        "mapping like -o Cluster.names=\"{3: Alice}\"")
    out = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split(None, 1)
            if len(parts) < 2:
                raise UserError(f"{path}:{lineno}: '{text}' has no name: write '<cluster id> <name>', e.g. '3 Alice'")
            out[parts[0]] = parts[1].strip()
    return out
