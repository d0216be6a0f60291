"""An installed copy (`pip install .`, not editable) works from any folder.

The sources are copied to a temporary folder and installed, non-editable and with no network
(--no-deps --no-build-isolation --no-index), into a new virtualenv. The new virtualenv sees
Paddle, numpy, OpenCV... of the environment running the tests: --system-site-packages, plus a
.pth file naming this environment's site-packages when the tests run in a virtualenv themselves
(--system-site-packages only reaches the base interpreter's). Every command then runs from an
empty folder with PYTHONPATH unset, so the repository is not importable and what runs is the
copy in the new site-packages: configs, the YuNet weights and C++ sources included (package data).

Building a wheel offline needs setuptools 70.1+ (or the `wheel` package) in this environment:
the `test` extra asks for it.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import cv2
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("facefeat", "foundation", "models", "datasets", "engine", "configs")  # top-level folders that are installed
pytestmark = pytest.mark.slow


def _ignore_for_copy(folder, names):
    """Skip what is not source: VCS, virtualenvs, caches, build output and the local data folders."""
    ignored = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
    if os.path.samefile(folder, REPO):
        ignored |= {n for n in names if n.startswith(".") or n.startswith("output") or n.endswith(".egg-info")
                    or n in ("build", "dist", "dataset")}
    return ignored


def _repo_data_files():
    """Every non-Python file in the installed packages' folders, relative to the repository."""
    found = []
    for top in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found += [os.path.relpath(os.path.join(folder, f), REPO) for f in files if not f.endswith((".py", ".pyc"))]
    return sorted(found)


def _has_bdist_wheel():
    try:
        import setuptools.command.bdist_wheel  # noqa: F401 - setuptools >= 70.1
        return True
    except ImportError:
        try:
            import wheel.bdist_wheel  # noqa: F401
            return True
        except ImportError:
            return False


def _run(cmd, env, cwd, timeout=120):
    return subprocess.run([str(c) for c in cmd], env=env, cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not _has_bdist_wheel():
        pytest.fail("cannot build a wheel offline: install the test extra (pip install -e \".[cpu,test]\"), "
                    "which brings setuptools>=70.1")
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_ignore_for_copy)
    venv_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv_dir)],
                   check=True, capture_output=True, timeout=120)
    python = venv_dir / "bin" / "python"
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    # This environment's packages (Paddle, numpy, cv2, pip, setuptools) after the new venv's own.
    # A path line in a .pth is only appended to sys.path: the .pth files there (such as the
    # editable install's finder) are not run, so they cannot bring the repository back.
    parent_dirs = [p for p in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
                   if os.path.isdir(p)]
    with open(os.path.join(site_packages, "_facefeat_test_parent_env.pth"), "w", encoding="utf-8") as f:
        f.write("".join(p + "\n" for p in parent_dirs))

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PATH"] = str(venv_dir / "bin") + os.pathsep + env.get("PATH", "")
    env["PIP_NO_INDEX"] = "1"  # never download, whatever the pip configuration says
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()

    proc = _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                 "--disable-pip-version-check", "-q", src], env, elsewhere, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"venv": venv_dir, "python": python, "site": site_packages, "env": env, "elsewhere": elsewhere,
            "config": os.path.join(site_packages, "configs", "face_recognition", "MobileFaceNet.yaml")}


def test_the_installed_copy_is_what_imports_from_another_folder(installed):
    code = ("import json, os, sys, engine, engine.config.loader, engine.training.cpu_speed, facefeat, "
            "models.face_detector, models.fast_cpu_ops\n"
            "from facefeat import create_model, create_pipeline\n"
            "print(json.dumps({'engine': engine.__file__, 'config_dir': engine.config.loader.CONFIG_DIR,\n"
            "    'facefeat': facefeat.__file__,\n"
            "    'weights': models.face_detector.WEIGHTS_DIR, 'cc': models.fast_cpu_ops.SOURCE,\n"
            "    'shim': engine.training.cpu_speed.SHIM_SOURCE, 'path': sys.path, 'cwd': os.getcwd()}))")
    proc = _run([installed["python"], "-c", code], installed["env"], installed["elsewhere"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    site = os.path.realpath(installed["site"])
    repo = os.path.realpath(REPO)
    engine_file = os.path.realpath(info["engine"])
    assert engine_file == os.path.join(site, "engine", "__init__.py")
    assert os.path.realpath(info["facefeat"]) == os.path.join(site, "facefeat", "__init__.py")
    assert not engine_file.startswith(repo + os.sep)
    assert repo not in [os.path.realpath(p) for p in info["path"] if p]
    assert os.path.realpath(info["cwd"]) == os.path.realpath(installed["elsewhere"])
    # Every non-Python file of the packages is installed, while main.py stays in the repository...
    missing = [f for f in _repo_data_files() if not os.path.isfile(os.path.join(site, f))]
    assert not missing, f"not installed (add to [options.package_data] in setup.cfg): {missing}"
    assert not os.path.exists(os.path.join(site, "main.py"))
    # ...and the files the code locates through __file__ are where it looks for them.
    assert {"MobileFaceNet.yaml", "ResNet50_face.yaml", "pipeline.yaml"} <= set(os.listdir(info["config_dir"]))
    assert os.path.realpath(info["config_dir"]) == os.path.join(site, "configs", "face_recognition")
    assert {"face_detection_yunet_2026may.onnx", "LICENSE", "README.md"} <= set(os.listdir(info["weights"]))
    assert os.path.isfile(info["cc"]) and os.path.isfile(info["shim"])
    with open(installed["venv"] / "bin" / "facefeat", encoding="utf-8") as f:
        assert str(installed["python"]) in f.read(1000)  # the console script runs the new venv's Python


def test_console_script_names_the_installed_configs(installed):
    proc = _run([installed["venv"] / "bin" / "facefeat", "-c", "MobileFaceNet.yaml", "-o", "Global.mode=check_dataset"],
                installed["env"], installed["elsewhere"])
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"Available configs: {installed['config']}" in proc.stdout + proc.stderr


def test_console_script_checks_a_dataset(installed, tmp_path):
    from datasets.demo import generate_demo

    data = tmp_path / "demo"
    generate_demo(str(data), train_identities=4, images_per_identity=2, val_identities=2, val_pairs=2, workers=1)
    out = tmp_path / "out"
    proc = _run([installed["venv"] / "bin" / "facefeat", "-c", installed["config"], "-o", "Global.mode=check_dataset",
                 "-o", f"Global.dataset_dir={data}", "-o", f"Global.output={out}"],
                installed["env"], installed["elsewhere"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Check dataset passed !" in proc.stdout + proc.stderr


def test_python_m_engine_predicts_with_an_exported_model(installed, tmp_path):
    from engine.inference.folder import export_inference
    from models import build_backbone

    model_dir = tmp_path / "inference"
    export_inference(build_backbone("MobileFaceNet"), str(model_dir), "MobileFaceNet")
    rng = np.random.default_rng(0)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), rng.integers(0, 256, (112, 112, 3), dtype="uint8"))
    out = tmp_path / "out"
    proc = _run([installed["python"], "-m", "engine", "-c", installed["config"], "-o", "Global.mode=predict",
                 "-o", f"Predict.model_dir={model_dir}", "-o", f"Predict.input={image}", "-o", f"Global.output={out}"],
                installed["env"], installed["elsewhere"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "predict" / "face_res.json", encoding="utf-8") as f:
        result = json.load(f)
    assert os.path.basename(result["input_path"]) == "face.png"
