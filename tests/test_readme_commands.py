"""The README's shell commands, run as written, in a fresh folder laid out like a clone (main.py and
configs/ beside a ./dataset/face_demo): the main job (check_dataset, train, evaluate, predict) and the
pipeline (build_index, recognize, cluster, serve).

What is not the README's own: the demo dataset is a small one generated first (so no command spends
minutes), training is stopped once its first steps are logged (the recipe takes 17 minutes or more),
and the random-init model that training would have written is put in output/best_model/ for evaluate,
predict and the pipeline; serve is stopped once /health answers. The set-up and test commands are
CI's own steps (.ci/run), so they are not run here."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from _tiny_face_model import export_random_model, save_random_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
BASH = re.findall(r"^```bash\n(.*?)^```", README, re.S | re.M)
CI_STEPS = ("python3 -m venv", "python -m pytest")  # run by .ci/run itself


def readme_commands():
    """The README's bash blocks as [(block, [command lines])], leaving out CI's own steps."""
    out = []
    for block in BASH:
        lines = [ln.split("  #")[0].strip() for ln in block.strip().splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(CI_STEPS)]
        if lines:
            out.append(lines)
    return out


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A folder holding main.py and configs/ as a clone does, with a small demo dataset in place."""
    from datasets.demo import generate_demo

    work = tmp_path_factory.mktemp("clone")
    os.symlink(os.path.join(REPO, "main.py"), work / "main.py")
    os.symlink(os.path.join(REPO, "configs"), work / "configs")
    generate_demo(str(work / "dataset" / "face_demo"), train_identities=16, images_per_identity=8, val_identities=6,
                  val_pairs=40, workers=1)
    return work


def shell_env():
    """The environment of a shell in which this Python is `python` (an activated virtualenv)."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return dict(os.environ, PATH=path, PYTHONPATH=REPO)


def run(line, cwd, timeout=300):
    proc = subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=shell_env())
    assert proc.returncode == 0, f"README command failed: {line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def start_and_stop(line, cwd, ready, timeout=180):
    """Run a long command (its last step `exec`s the program, so the signal reaches it) until `ready()`
    is true, then stop it with Ctrl-C (SIGINT); its output."""
    proc = subprocess.Popen(["bash", "-c", line], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            env=shell_env(), start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"README command ended early: {line}\n{proc.stdout.read()[-3000:]}"
            assert time.time() < deadline, f"README command not ready after {timeout} s: {line}"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    return out


def test_the_readme_has_the_main_job_and_the_pipeline():
    commands = readme_commands()
    modes = [m for block in commands for line in block for m in re.findall(r"Global\.mode=(\w+)", line)]
    assert modes == ["check_dataset", "train", "evaluate", "predict", "build_index", "recognize", "cluster", "serve"]


def test_main_job_commands_run_as_written(clone):
    (main_job,) = [b for b in readme_commands() if any("Global.mode=train" in ln for ln in b)]
    check, train, evaluate, predict = main_job
    run(check, clone)
    assert os.path.isfile(clone / "output" / "check_dataset_result.json")
    train_log = clone / "output" / "train.log"
    out = start_and_stop(f"exec {train}", clone, lambda: train_log.is_file() and " step " in train_log.read_text())
    assert "Traceback" not in out
    # what the 25 epochs would leave for the next two commands: a model in output/best_model/
    save_random_checkpoint(str(clone / "output" / "best_model" / "best_model.pdparams"), num_classes=16)
    export_random_model(clone / "output" / "best_model")
    run(evaluate, clone)
    assert os.path.isfile(clone / "output" / "evaluate_result.json")
    run(predict, clone)
    assert len(os.listdir(clone / "output" / "predict")) > 6 * 8  # a result per val image, and the log


def test_pipeline_commands_run_as_written(clone):
    if not os.path.isdir(clone / "output" / "best_model" / "inference"):
        export_random_model(clone / "output" / "best_model")
    (block,) = [b for b in readme_commands() if any("Global.mode=build_index" in ln for ln in b)]
    setup = [ln for ln in block if "Global.mode=" not in ln]
    build, recognize, cluster, serve = [ln for ln in block if "Global.mode=" in ln]
    prefix = "; ".join(setup) + "; "
    run(prefix + build, clone)
    run(prefix + recognize, clone)
    assert any(name.endswith("_res.json") for name in os.listdir(clone / "output" / "recognition"))
    run(prefix + cluster, clone)
    assert os.path.isfile(clone / "output" / "clusters" / "overview.jpg")
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8080)) == 0:
            pytest.skip("port 8080 (the README's serve port) is taken on this machine")

    def healthy():
        try:
            with urllib.request.urlopen("http://127.0.0.1:8080/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    out = start_and_stop(f"{prefix}exec {serve}", clone, healthy)
    assert "Traceback" not in out
