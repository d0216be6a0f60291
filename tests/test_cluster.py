"""Global.mode=cluster and pipeline.cluster end to end, with a random-init MobileFaceNet (no
training): cluster, grow with new photos (ids kept), name, merge, enrol, recognize, and bad input."""
import json
import os

import cv2
import numpy as np
import pytest
from _tiny_face_model import export_random_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(REPO_ROOT, "configs", "face_recognition", "pipeline.yaml")
# an untrained network maps a person's near-duplicate crops together (cosine ~1) and different
# people's smooth random pictures apart (~0.87): a strict threshold separates them
THRESHOLD = "0.95"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_random_model(tmp_path_factory.mktemp("model"))


def person_crops(person, count, seed=11):
    """`count` near-duplicate 112x112 crops of one made-up person (a smooth random picture)."""
    rng = np.random.default_rng(seed + person)
    base = cv2.resize(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), (112, 112),
                      interpolation=cv2.INTER_CUBIC).astype(int)
    return [np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8) for _ in range(count)]


def write_photos(folder, people, per_person, start=0):
    """folder/<p>_<k>.png for each person p of `people` (file names say nothing of the grouping)."""
    os.makedirs(folder, exist_ok=True)
    for p in people:
        for k, img in enumerate(person_crops(p, per_person)):
            cv2.imwrite(os.path.join(folder, f"{p}_{start + k}.png"), img)
    return str(folder)


def _cli(*overrides):
    from main import main

    return main(["-c", PIPELINE, *[x for o in overrides for x in ("-o", o)]])


def _base(model_dir, out):
    return [f"SubModules.Recognition.model_dir={model_dir}", "SubModules.Detection.enable=False",
            f"Cluster.threshold={THRESHOLD}", f"Cluster.output={out}", "Global.num_threads=1",
            f"Global.output={os.path.dirname(out)}/run"]


def _person_of(source):
    return int(os.path.basename(source).split("_")[0])


def test_pipeline_cluster_groups_people_and_a_second_call_keeps_the_ids(model_dir, tmp_path):
    from engine import create_pipeline
    from engine.evaluation.clustering import bcubed

    pipe = create_pipeline(config={"SubModules.Recognition.model_dir": model_dir, "SubModules.Detection.enable": False,
                                   "Global.num_threads": 1})
    photos = write_photos(tmp_path / "photos", people=range(4), per_person=3)
    out = tmp_path / "clusters"
    book = pipe.cluster(photos, output=str(out), threshold=0.95, progress=False)
    truth = [_person_of(f["source"]) for f in book.faces]
    assert len(book.faces) == 12 and bcubed(book.labels, truth) == pytest.approx((1.0, 1.0, 1.0))
    for name in ("cluster_result.json", "clusters.csv", "features.npy", "overview.jpg"):
        assert (out / name).is_file(), name
    assert len(os.listdir(out / "faces")) == 12 and len(os.listdir(out / "sheets")) == 4
    old = {f["source"]: f["cluster"] for f in book.faces}

    # new photos of two known people and of a new one; the old photos are passed again and skipped
    write_photos(tmp_path / "photos", people=[1, 3], per_person=2, start=10)
    write_photos(tmp_path / "photos", people=[7], per_person=3)
    book = pipe.cluster(photos, output=str(out), threshold=0.95, names={"2": "Alice"}, progress=False)
    assert len(book.faces) == 19
    assert {f["source"]: f["cluster"] for f in book.faces[:12]} == old
    cluster_of = {}
    for face in book.faces:
        cluster_of.setdefault(_person_of(face["source"]), set()).add(face["cluster"])
    assert all(len(ids) == 1 for ids in cluster_of.values())
    assert cluster_of[7] == {5}  # a new person: a new id after the four old ones
    assert book.names == {2: "Alice"} and "0002_Alice" in os.listdir(out / "clusters")


def test_cli_cluster_name_merge_enrol_then_recognize(model_dir, tmp_path):
    photos = write_photos(tmp_path / "photos", people=range(3), per_person=3)
    out = str(tmp_path / "clusters")
    base = _base(model_dir, out)
    assert _cli("Global.mode=cluster", f"Cluster.input={photos}", *base) == 0
    data = json.loads(open(os.path.join(out, "cluster_result.json"), encoding="utf-8").read())
    assert data["summary"]["clusters"] == 3 and data["settings"]["threshold"] == 0.95
    first = {c["id"]: {_person_of(data["faces"][i]["source"]) for i in c["faces"]} for c in data["clusters"]}
    alice = next(cid for cid, people in first.items() if people == {0})
    bob = next(cid for cid, people in first.items() if people == {1})
    carol = next(cid for cid, people in first.items() if people == {2})
    # a re-run with new photos of Alice and of a new person: the old ids stay, the new person gets the next
    write_photos(photos, people=[0], per_person=2, start=10)
    write_photos(photos, people=[5], per_person=2)
    assert _cli("Global.mode=cluster", f"Cluster.input={photos}", *base) == 0
    data = json.loads(open(os.path.join(out, "cluster_result.json"), encoding="utf-8").read())
    now = {c["id"]: {_person_of(data["faces"][i]["source"]) for i in c["faces"]} for c in data["clusters"]}
    assert now == {**first, 4: {5}} and data["summary"]["faces"] == 13
    # name two, merge the third into Bob (a user's decision: the tool follows it), enrol, recognise
    index = str(tmp_path / "gallery_index")
    assert _cli("Global.mode=cluster", *base, f"Cluster.names={{{alice}: Alice, {bob}: Bob}}",
                f"Cluster.merge=[[Bob, {carol}]]", "Cluster.enroll=True", f"index={index}") == 0
    data = json.loads(open(os.path.join(out, "cluster_result.json"), encoding="utf-8").read())
    assert {c["name"]: c["size"] for c in data["clusters"]} == {"Bob": 6, "Alice": 5, None: 2}
    assert len(data["enrolled"][os.path.abspath(index)]) == 11
    # enrolling again adds nothing twice
    assert _cli("Global.mode=cluster", *base, "Cluster.enroll=True", f"index={index}") == 0
    from engine.gallery.faiss_index import GalleryIndex

    assert len(GalleryIndex.load(index)) == 11
    # the merge was wrong after all: split Bob by name (from 0.85 the first stricter step, 0.9, parts
    # the two made-up people); the larger part keeps the id and the name
    assert _cli("Global.mode=cluster", *base, "Cluster.threshold=0.85", "Cluster.split=[Bob]") == 0
    data = json.loads(open(os.path.join(out, "cluster_result.json"), encoding="utf-8").read())
    parts = {c["id"]: ({_person_of(data["faces"][i]["source"]) for i in c["faces"]}, c["name"])
             for c in data["clusters"]}
    assert parts[bob] == ({1}, "Bob") or parts[bob] == ({2}, "Bob")
    assert sorted(people for people, _ in parts.values()) == [{0}, {1}, {2}, {5}]
    query = os.path.join(photos, "0_1.png")
    rec_out = str(tmp_path / "rec")
    assert _cli("Global.mode=recognize", f"SubModules.Recognition.model_dir={model_dir}",
                "SubModules.Detection.enable=False", "rec_threshold=0.95", f"index={index}", f"Predict.input={query}",
                f"Global.output={rec_out}", "Global.num_threads=1") == 0
    res = json.loads(open(os.path.join(rec_out, "0_1_res.json"), encoding="utf-8").read())
    assert res["boxes"][0]["label"] == "Alice"


def test_bad_input_is_one_line_each(model_dir, tmp_path, capsys):
    out = str(tmp_path / "clusters")
    base = _base(model_dir, out)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli("Global.mode=cluster", f"Cluster.input={empty}", *base) == 1
    assert "holds no images" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "cluster_result.json"))

    # photos without a face (detection on): one line, no clusters written
    blank = tmp_path / "blank"
    blank.mkdir()
    for k in range(2):
        cv2.imwrite(str(blank / f"{k}.png"), np.full((200, 200, 3), 128, np.uint8))
    detect = [o for o in base if not o.startswith("SubModules.Detection")]
    assert _cli("Global.mode=cluster", f"Cluster.input={blank}", *detect) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("cluster: detect and embed")]
    assert len(errors) == 1 and "no face found in any of the 2 photo(s)" in errors[0]
    assert not os.path.exists(os.path.join(out, "cluster_result.json"))

    # an unreadable photo among good ones: skipped and named, the others clustered, exit 1
    photos = write_photos(tmp_path / "photos", people=range(2), per_person=2)
    with open(os.path.join(photos, "broken.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    assert _cli("Global.mode=cluster", f"Cluster.input={photos}", *base) == 1
    err = capsys.readouterr().err
    assert "1 photo(s) could not be read" in err and "broken.jpg" in err
    data = json.loads(open(os.path.join(out, "cluster_result.json"), encoding="utf-8").read())
    assert data["summary"]["faces"] == 4 and data["summary"]["clusters"] == 2

    # a folder of someone else's files is never written into
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    assert _cli("Global.mode=cluster", f"Cluster.input={photos}", *base[:-2], f"Cluster.output={foreign}",
                "Global.num_threads=1") == 1
    assert "which no clustering wrote" in capsys.readouterr().err
    assert sorted(os.listdir(foreign)) == ["notes.txt"]

    # enrolling with nothing named, and an unknown cluster to merge: one line each
    assert _cli("Global.mode=cluster", *base, "Cluster.enroll=True", f"index={tmp_path / 'ix'}") == 1
    assert "no cluster is named" in capsys.readouterr().err
    assert _cli("Global.mode=cluster", *base, "Cluster.merge=[[Carol, 1]]") == 1
    assert "no cluster 'Carol'" in capsys.readouterr().err


def test_a_video_adds_one_face_per_track(model_dir, tmp_path):
    """benchmarks/video_clips.py's demo clip: Alice twice, Bob and Carol once each. Each track is one
    face (its mean feature, its best view); Alice's two tracks are one cluster."""
    from benchmarks.video_clips import DEMO_SCRIPT, demo_people, make_clip
    from engine import create_pipeline

    clip = tmp_path / "meeting.mp4"
    make_clip(clip, DEMO_SCRIPT, demo_people(os.path.join(REPO_ROOT, "dataset", "face_demo")))
    # rec_threshold also sets how alike a face must be to rejoin a track it lost: an untrained
    # network finds every demo face alike at 0.5
    pipe = create_pipeline(config={"SubModules.Recognition.model_dir": model_dir, "Global.num_threads": 1,
                                   "rec_threshold": 0.9})
    out = tmp_path / "clusters"
    book = pipe.cluster(str(clip), output=str(out), threshold=0.9, progress=False)
    starts = [round(f["time"][0]) for f in book.faces]
    assert starts == [0, 1, 6, 6] and all(f["source"] == str(clip) and "track_id" in f for f in book.faces)
    labels = book.labels.tolist()
    assert labels[0] == labels[2] == 1 and labels[1] == labels[3] == -1  # Alice; Bob and Carol seen once
    assert len(os.listdir(out / "faces")) == 4
    again = pipe.cluster(str(clip), output=str(out), threshold=0.9, progress=False)
    assert len(again.faces) == 4  # the same video is not read twice
    from foundation.errors import UserError

    for live in (0, "rtsp://127.0.0.1:1/cam"):  # nothing is opened: refused before
        with pytest.raises(UserError, match="is a camera or a stream"):
            pipe.cluster(live, progress=False)


def test_a_stopped_run_is_resumed_from_its_checkpoint(model_dir, tmp_path, monkeypatch):
    """Faces are checkpointed as they come (here every 2 photos): after Ctrl-C the next run reads
    only the photos the checkpoint lacks and ends with the clusters of an uninterrupted run."""
    from engine import create_pipeline
    from engine.recognition import photo_clusters

    pipe = create_pipeline(config={"SubModules.Recognition.model_dir": model_dir, "SubModules.Detection.enable": False,
                                   "Global.num_threads": 1})
    photos = write_photos(tmp_path / "photos", people=range(3), per_person=3)
    whole = pipe.cluster(photos, output=str(tmp_path / "whole"), threshold=0.95, progress=False)

    monkeypatch.setattr(photo_clusters, "CHECKPOINT_INPUTS", 2)
    real_add, calls = photo_clusters.Collected.add, []

    def add_then_stop(self, *args):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_add(self, *args)

    monkeypatch.setattr(photo_clusters.Collected, "add", add_then_stop)
    out = tmp_path / "clusters"
    with pytest.raises(KeyboardInterrupt):
        pipe.cluster(photos, output=str(out), threshold=0.95, progress=False)
    assert (out / "pending.json").is_file() and not (out / "cluster_result.json").exists()
    assert len(json.loads((out / "pending.json").read_text())["faces"]) == 4  # the checkpoint after 4 photos

    monkeypatch.setattr(photo_clusters.Collected, "add", real_add)
    read = []
    real_faces = photo_clusters._photo_faces
    monkeypatch.setattr(photo_clusters, "_photo_faces", lambda pipe, items, *a: (read.extend(items),
                                                                               real_faces(pipe, items, *a)))
    book = pipe.cluster(photos, output=str(out), threshold=0.95, progress=False)
    assert len(read) == 5  # the 4 checkpointed photos are not read again
    assert [f["source"] for f in book.faces] == [f["source"] for f in whole.faces]
    assert book.labels.tolist() == whole.labels.tolist()
    assert not (out / "pending.json").exists() and len(os.listdir(out / "faces")) == 9


def test_named_clusters_enrol_into_a_milvus_lite_collection(model_dir, tmp_path):
    """Cluster.enroll with Index.backend=milvus: the collection is created, then added to."""
    from _milvus import need_milvus

    need_milvus()
    photos = write_photos(tmp_path / "photos", people=range(2), per_person=2)
    out = str(tmp_path / "clusters")
    base = _base(model_dir, out)
    milvus = ["Index.backend=milvus", f"Index.uri={tmp_path / 'gallery.db'}", "index=people"]
    assert _cli("Global.mode=cluster", f"Cluster.input={photos}", *base, "Cluster.names={1: Alice}",
                "Cluster.enroll=True", *milvus) == 0
    write_photos(photos, people=[0, 1], per_person=1, start=5)
    assert _cli("Global.mode=cluster", f"Cluster.input={photos}", *base, "Cluster.names={2: Bob}",
                "Cluster.enroll=True", *milvus) == 0
    data = json.loads(open(os.path.join(out, "cluster_result.json"), encoding="utf-8").read())
    assert sorted(len(ids) for ids in data["enrolled"].values()) == [6]  # Alice's 2, then her new one and Bob's 3
    from engine.gallery.backend import GallerySettings

    index = GallerySettings(backend="milvus", uri=str(tmp_path / "gallery.db")).open("people")
    assert len(index) == 6 and sorted(index.labels) == ["Alice", "Bob"]
