"""Global.output: which folders a run may write into, what it wrote there, one run at a time.

- A folder that is not a dedicated output folder is refused before anything is written: an
  empty value, the current folder, the repository (or installation) root, the home folder, `/`.
- Each run records the top-level names it writes in a manifest (`.facefeat_outputs.json`), so
  `Train.overwrite_output=True` removes only what runs wrote, never a user's own files, and a
  training run refuses a folder holding files that no run wrote.
- Training holds an exclusive lock (`.facefeat.lock`, with its pid) while it writes: a second run
  into the same folder is refused naming that pid; a lock left by a killed run (its pid is gone)
  is taken over with a log line.
"""
import json
import os
import re

from foundation.atomic_io import atomic_write_json
from foundation.errors import ConfigError, UserError
from foundation.logger import get_logger
from foundation.runtime import PACKAGES_ROOT

MANIFEST = ".facefeat_outputs.json"
LOCK = ".facefeat.lock"
# Names runs write (also folders made before the manifest existed count as run output).
RUN_OUTPUT_NAMES = {
    "train_result.json", "train.log", "config.yaml", "latest", "best_model", "vdl", "dist_logs",
    "check_dataset_result.json", "check_dataset", "check_dataset.log",
    "evaluate_result.json", "evaluate_roc.png", "evaluate.log", "predict",
}
_RUN_OUTPUT_PATTERNS = (re.compile(r"^epoch_\d+$"), re.compile(r"^pair_scores_.+\.csv$"), re.compile(r"^.+_res\.(json|jpg|png)$"),
                        re.compile(r"^\..+\.tmp(\.old)?$"), re.compile(r"^\.staging\..+$"), re.compile(r"^.+\.log$"))


def _same(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_folder(path, setting="Global.output"):
    """The absolute output folder, or ConfigError (exit 2) when `path` is not a folder a run may fill."""
    text = str(path or "").strip()
    if not text:
        raise ConfigError(f"{setting} is empty: give a folder of its own for this run's outputs, e.g. -o {setting}=output")
    folder = os.path.abspath(os.path.expanduser(text))
    refused = {"the current folder": os.getcwd(), "the home folder": os.path.expanduser("~"), "the filesystem root": "/",
               "the project's own folder": PACKAGES_ROOT}
    for what, other in refused.items():
        if os.path.exists(folder) and _same(folder, other):
            raise ConfigError(f"{setting}={text} is {what} ({folder}): outputs would mix with other files there. "
                            f"Give a folder of its own, e.g. -o {setting}=output")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"{setting}={text} is a file, not a folder: give a folder for this run's outputs")
    return folder


def read_manifest(folder):
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            names = json.load(f).get("names", [])
        return set(names) if isinstance(names, list) else set()
    except (OSError, ValueError, AttributeError):
        return set()


def record_outputs(folder, names):
    """Add `names` (top-level entries of `folder`) to its manifest of run outputs."""
    names = read_manifest(folder) | set(names)
    atomic_write_json(os.path.join(folder, MANIFEST), {"written_by": "facefeat", "names": sorted(names)})


def is_run_output(name, manifest):
    return name in manifest or name in RUN_OUTPUT_NAMES or any(p.match(name) for p in _RUN_OUTPUT_PATTERNS) or \
        name in (MANIFEST, LOCK)


def foreign_entries(folder):
    """Top-level entries of `folder` that no run wrote (a user's own files)."""
    if not os.path.isdir(folder):
        return []
    manifest = read_manifest(folder)
    return sorted(n for n in os.listdir(folder) if not is_run_output(n, manifest))


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class OutputLock:
    """An exclusive lock on an output folder for the life of a run (a context manager)."""

    def __init__(self, folder, what="training", lock_file=None, subject=None, fix=None):
        self.path = lock_file or os.path.join(folder, LOCK)
        self.what = what
        self.subject = subject or f"output folder {folder}"
        self.fix = fix or "wait for it to finish, or write elsewhere with -o Global.output=DIR"
        self.held = False

    def acquire(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._holder()
                if pid and pid != os.getpid() and _pid_alive(pid):
                    raise UserError(f"{self.subject} is in use by another run (pid {pid}, lock {self.path}): {self.fix}")
                get_logger().warning(f"taking over the lock {self.path} left by a run that is gone (pid {pid})")
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n{self.what}\n")
            self.held = True
            return self
        raise UserError(f"cannot take the lock {self.path}: another run keeps re-creating it")

    def _holder(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                return int(f.readline().strip() or 0)
        except (OSError, ValueError):
            return 0

    def release(self):
        if self.held and self._holder() == os.getpid():
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self.held = False

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()
        return False
