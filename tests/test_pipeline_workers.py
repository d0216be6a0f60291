"""The pipeline's worker processes (engine.recognition.workers) give exactly what the pipeline gives
alone: the same results in the same order, the same skipped file, the same error for a bad input
named directly, the same gallery features; and the choice between them is made in one place."""
import os
import shutil

import cv2
import numpy as np
import pytest
from _tiny_face_model import demo_face_photo, export_random_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LFW_IMAGES = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "lfw_dev", "images"))
# Tony_Blair_0001 holds two faces
LFW_PHOTOS = ("Colin_Powell/Colin_Powell_0001.jpg", "Tony_Blair/Tony_Blair_0001.jpg", "Hugo_Chavez/Hugo_Chavez_0001.jpg",
              "Colin_Powell/Colin_Powell_0002.jpg", "Tony_Blair/Tony_Blair_0002.jpg", "Hugo_Chavez/Hugo_Chavez_0002.jpg")
DEMO_FACES = ("p00000/00", "p00000/03", "p00000/05", "p00001/00")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of photos with faces (LFW's where they are here, else demo faces on a canvas) and,
    in its sorted middle, a file that is no image."""
    root = tmp_path_factory.mktemp("photos")
    if all(os.path.isfile(os.path.join(LFW_IMAGES, p)) for p in LFW_PHOTOS):
        for i, rel in enumerate(LFW_PHOTOS):
            shutil.copy(os.path.join(LFW_IMAGES, rel), root / f"{i:02d}_{os.path.basename(rel)}")
    else:
        for i, name in enumerate(DEMO_FACES + DEMO_FACES[:2]):
            cv2.imwrite(str(root / f"{i:02d}_demo.jpg"), demo_face_photo(name))
    (root / "03_broken.jpg").write_bytes(b"not a jpeg at all")
    return root


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """(the pipeline alone, on 1 thread; the same config on 2 threads with its workers started)."""
    from engine import create_pipeline

    model_dir = export_random_model(tmp_path_factory.mktemp("model"))
    # batch 2: several batches of faces, several out at the workers at once
    config = {"SubModules.Recognition.model_dir": model_dir, "SubModules.Recognition.batch_size": 2,
              "det_threshold": 0.5}
    alone = create_pipeline(config={**config, "Global.num_threads": 1})
    parallel = create_pipeline(config={**config, "Global.num_threads": 2})
    assert parallel.start_workers() and parallel.worker_processes == 2
    yield alone, parallel
    parallel.close()
    assert parallel.worker_processes == 0


def _gallery(photos):
    good = sorted(p for p in os.listdir(photos) if "broken" not in p)
    return [str(photos / p) for p in good], [p.split("_", 1)[1] for p in good]


def test_workers_give_the_same_results_in_the_same_order(pipelines, photos, capsys):
    alone, parallel = pipelines
    paths, labels = _gallery(photos)
    index = alone.build_index(paths[:3], labels[:3])
    expected = [r.json for r in alone.predict(str(photos), index=index)]
    capsys.readouterr()
    got = [r.json for r in parallel.predict(str(photos), index=index)]
    out = capsys.readouterr().out
    assert got == expected
    assert len(got) == len(paths) and sum(len(r["res"]["boxes"]) for r in got) >= len(paths)
    broken = str(photos / "03_broken.jpg")
    assert [p for p, _ in parallel.failures] == [p for p, _ in alone.failures] == [broken]
    assert parallel.failures == alone.failures
    assert f"skipped {broken}: " in out  # the same warning as alone

    # the decoded images come back for drawing, unless not wanted
    first = next(parallel.predict(paths[:1], index=index))
    assert first.draw().shape == cv2.imread(paths[0]).shape
    assert next(parallel.predict(paths[:1], index=index, keep_images=False))._image is None


def test_a_bad_input_named_directly_raises_after_the_same_results(pipelines, photos):
    from foundation.errors import UserError

    alone, parallel = pipelines
    paths, labels = _gallery(photos)
    index = alone.build_index(paths[:3], labels[:3])
    inputs = paths[:4] + [str(photos / "03_broken.jpg")] + paths[4:]
    outcome = {}
    for name, pipe in (("alone", alone), ("parallel", parallel)):
        seen = []
        with pytest.raises(UserError) as raised:
            for res in pipe.predict(inputs, index=index):
                seen.append(res.json)
        outcome[name] = (seen, str(raised.value))
    assert outcome["parallel"] == outcome["alone"]
    assert "03_broken.jpg" in outcome["alone"][1]

    # a caller that stops early leaves the workers ready for the next call
    stopped = parallel.predict(paths, index=index)
    next(stopped)
    stopped.close()
    assert [r.json for r in parallel.predict(paths[:2], index=index)] == \
        [r.json for r in alone.predict(paths[:2], index=index)]


def test_workers_enrol_the_same_gallery(pipelines, photos, capsys):
    alone, parallel = pipelines
    paths, labels = _gallery(photos)
    images = [str(photos / p) for p in sorted(os.listdir(photos))]  # with the broken file
    names = [os.path.basename(p) for p in images]
    alone.build_index(images, names)
    parallel.build_index(images, names)
    a, b = alone.last_enrolment, parallel.last_enrolment
    assert np.array_equal(a.features, b.features) and a.labels == b.labels and a.sources == b.sources
    broken = images.index(str(photos / "03_broken.jpg"))
    assert a.skipped == b.skipped and a.skipped_positions == b.skipped_positions == [broken] and a.whole == b.whole
    assert "skipped gallery image" in capsys.readouterr().out


def test_the_choice_between_workers_and_this_process():
    from engine.recognition.workers import MIN_IMAGES_TO_START, plan_workers

    assert plan_workers(1, "cpu", 10_000, running=False)[0] == 0
    assert plan_workers(2, "gpu", 10_000, running=False)[0] == 0
    assert plan_workers(2, "cpu", 10_000, running=False, rebuildable=False)[0] == 0
    workers, why = plan_workers(2, "cpu", MIN_IMAGES_TO_START - 1, running=False)
    assert workers == 0 and str(MIN_IMAGES_TO_START) in why
    assert plan_workers(2, "cpu", 1, running=True)[0] == 2
    assert plan_workers(4, "cpu", MIN_IMAGES_TO_START, running=False)[0] == 4
