"""A PIR-only folder (as official models ship) runs through its checked old-format program."""
import os
import shutil

import numpy as np
import pytest
import yaml

from tests._tiny_face_model import export_random_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_random_model(tmp_path_factory.mktemp("program_convert"))


def json_only_copy(src, dst, **global_changes):
    """A copy of an exported folder without inference.pdmodel, inference.yml's Global changed."""
    os.makedirs(dst)
    for name in ("inference.json", "inference.pdiparams", "inference.yml"):
        shutil.copy(os.path.join(src, name), dst)
    if global_changes:
        path = os.path.join(dst, "inference.yml")
        with open(path) as f:
            info = yaml.safe_load(f)
        info["Global"].update(global_changes)
        with open(path, "w") as f:
            yaml.safe_dump(info, f)
    return str(dst)


def features(model, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, (6, 3, 112, 112)).astype("float32")
    return model.predict(x)


def test_json_only_folder_runs_its_checked_program(exported, tmp_path, monkeypatch):
    from engine.inference import program_convert
    from engine.inference.model import InferenceModel

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = json_only_copy(exported, tmp_path / "official")
    model = InferenceModel(folder)
    assert model.format == "program"
    assert model.model_file.startswith(str(tmp_path / "cache")) and model.params_file == os.path.join(folder, "inference.pdiparams")
    pir = InferenceModel(folder, prefer_format="pir")  # the opt-out keeps the PIR executor
    assert pir.format == "pir" and pir.model_file.endswith("inference.json")
    ref = features(pir)
    np.testing.assert_allclose(features(model), ref, atol=1e-4 * np.abs(ref).max())
    # the second load takes the cached program: no second child process
    monkeypatch.setattr(program_convert, "write_program_format", lambda *a, **k: pytest.fail("converted twice"))
    again = InferenceModel(folder)
    assert again.format == "program" and again.model_file == model.model_file


def test_other_architecture_stays_pir_and_says_why(exported, tmp_path, monkeypatch, caplog):
    from engine.inference import program_convert
    from engine.inference.model import InferenceModel

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # a MobileFaceNet whose inference.yml claims ResNet50_face: that program cannot read these weights
    wrong = json_only_copy(exported, tmp_path / "wrong", model_name="ResNet50_face")
    path, why = program_convert.cached_program(os.path.join(wrong, "inference.json"),
                                               os.path.join(wrong, "inference.pdiparams"), "ResNet50_face", 128)
    assert path is None and "ResNet50_face" in why, why
    model = InferenceModel(wrong)
    assert model.format == "pir" and model.model_file.endswith("inference.json")
    ref = features(InferenceModel(exported))
    np.testing.assert_allclose(features(model), ref, atol=1e-4 * np.abs(ref).max())  # still right, on PIR
    # the refusal is remembered: no second attempt for the same files
    monkeypatch.setattr(program_convert, "write_program_format", lambda *a, **k: pytest.fail("tried twice"))
    assert program_convert.cached_program(os.path.join(wrong, "inference.json"), os.path.join(wrong, "inference.pdiparams"),
                                          "ResNet50_face", 128) == (None, why)
    # a model that is not one of ours is left alone
    other = json_only_copy(exported, tmp_path / "other", model_name="SomeoneElsesNet")
    assert InferenceModel(other).format == "pir"


def test_same_program_with_other_weights_is_refused(exported, tmp_path, monkeypatch):
    """The output check, not only the parameter shapes, decides: a program that reads the file but
    computes something else is refused (here: features compared against a different model's)."""
    from engine.inference import program_convert

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    other = export_random_model(tmp_path / "other_weights", seed=1)
    real = program_convert._predict
    monkeypatch.setattr(program_convert, "_predict", lambda m, p, pir, b: real(
        os.path.join(other, "inference.json") if pir else m, os.path.join(other, "inference.pdiparams") if pir else p,
        pir, b))
    folder = json_only_copy(exported, tmp_path / "official")
    path, why = program_convert.cached_program(os.path.join(folder, "inference.json"),
                                               os.path.join(folder, "inference.pdiparams"), "MobileFaceNet", 128)
    assert path is None and "other features" in why, why
