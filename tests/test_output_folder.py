"""Output folders: unsafe folders refused, a user's files never mixed or deleted, one training at
a time per folder, a kill mid-save recovered by recorded epoch, files honouring the umask."""
import os
import pickle
import subprocess
import sys

import pytest

from engine.config.output_folder import LOCK, OutputLock, check_output_folder, foreign_entries, record_outputs
from engine.training.checkpoints import recover_interrupted_swaps
from foundation.atomic_io import atomic_replace_dir, atomic_write_text
from foundation.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "face_recognition", "MobileFaceNet.yaml")


def run_main(*overrides, cwd=REPO):
    return subprocess.run([sys.executable, os.path.join(REPO, "main.py"), "-c", CONFIG, *sum((["-o", o] for o in overrides), [])],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("value", ["", ".", "~", REPO])
def test_unsafe_output_folders_are_refused_before_anything_is_written(tmp_path, value):
    before = sorted(os.listdir(tmp_path))
    proc = run_main("Global.mode=check_dataset", f"Global.output={value}", cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "Global.output" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == before  # no config.yaml, logs or results in the current folder


def test_check_output_folder_accepts_a_folder_of_its_own(tmp_path):
    assert check_output_folder(str(tmp_path / "out")) == str(tmp_path / "out")
    with pytest.raises(ConfigError, match="is a file"):
        (tmp_path / "f").write_text("x")
        check_output_folder(str(tmp_path / "f"))


def test_training_refuses_a_folder_with_the_users_own_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("my own config\n")
    (out / "notes.txt").write_text("mine\n")
    proc = run_main("Global.mode=train", f"Global.output={out}", "Train.overwrite_output=True",
                    f"Global.dataset_dir={tmp_path / 'nodata'}")
    assert proc.returncode == 1 and "holds files no run wrote" in proc.stderr and "notes.txt" in proc.stderr, proc.stderr
    assert (out / "config.yaml").read_text() == "my own config\n"  # untouched


def test_manifest_marks_what_runs_wrote(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    (tmp_path / "latest").mkdir()
    (tmp_path / "custom_output.bin").write_text("x")
    assert foreign_entries(str(tmp_path)) == ["custom_output.bin", "mine.txt"]
    record_outputs(str(tmp_path), ["custom_output.bin"])
    assert foreign_entries(str(tmp_path)) == ["mine.txt"]


def test_one_run_at_a_time_and_a_dead_runs_lock_is_taken_over(tmp_path):
    with OutputLock(str(tmp_path), "training"):
        code = ("import sys; from engine.config.output_folder import OutputLock; from foundation.errors import UserError\n"
                f"try:\n    OutputLock({str(tmp_path)!r}).acquire()\nexcept UserError as e:\n    print(e); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3 and f"pid {os.getpid()}" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / LOCK).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK).write_text(dead.stdout.strip() + "\ntraining\n")  # left by a killed run
    lock = OutputLock(str(tmp_path)).acquire()
    assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
    lock.release()


def _fake_checkpoint(folder, name, epoch):
    os.makedirs(folder)
    for ext in ("pdparams", "pdopt"):
        with open(os.path.join(folder, f"{name}.{ext}"), "wb") as f:
            pickle.dump({"w": epoch}, f)
    with open(os.path.join(folder, f"{name}.pdstates"), "wb") as f:
        pickle.dump({"epoch": epoch}, f)


@pytest.mark.parametrize("old_name,new_name", [(".latest.aaaa.tmp.old", ".latest.zzzz.tmp"),
                                               (".latest.zzzz.tmp.old", ".latest.aaaa.tmp")])
def test_kill_between_the_two_renames_recovers_the_newest_epoch(tmp_path, old_name, new_name):
    _fake_checkpoint(str(tmp_path / old_name), "latest", 3)
    _fake_checkpoint(str(tmp_path / new_name), "latest", 4)
    os.makedirs(tmp_path / ".latest.half.tmp")  # a save cut short: no files
    recover_interrupted_swaps(str(tmp_path))
    with open(tmp_path / "latest" / "latest.pdstates", "rb") as f:
        assert pickle.load(f)["epoch"] == 4  # by recorded epoch, whatever the name order
    assert sorted(os.listdir(tmp_path)) == ["latest"]  # every leftover removed


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_files_and_folders_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        atomic_write_text(str(tmp_path / "a.json"), "{}")
        atomic_replace_dir(lambda tmp: open(os.path.join(tmp, "x"), "w").close(), str(tmp_path / "d"))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == file_mode
    assert os.stat(tmp_path / "d").st_mode & 0o777 == dir_mode

