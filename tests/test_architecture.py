"""The house: layers import one way, engine's wings import one way, no runner imports another, no
cycles (import-linter), and the check itself fails when someone adds an import that breaks it."""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("facefeat", "foundation", "models", "datasets", "engine")
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")

pytestmark = pytest.mark.skipif(not os.path.isfile(LINT), reason="import-linter is not installed (test extra)")


def lint(root):
    return subprocess.run([LINT, "--config", os.path.join(REPO, "setup.cfg")], cwd=root, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(root)))


def copy_packages(dst):
    for name in PACKAGES:
        shutil.copytree(os.path.join(REPO, name), os.path.join(dst, name),
                        ignore=shutil.ignore_patterns("__pycache__", "*.gz", "*.cc", "*.c"))


def add_line(path, line):
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + line + "\n")


def test_contracts_hold():
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("file,line,contract", [
    ("foundation/errors.py", "import engine.config  # noqa", "Layers run one way"),
    ("models/arcmargin.py", "from datasets import transforms  # noqa", "Layers run one way"),
    ("engine/runners/predict.py", "from engine.runners import recognize  # noqa", "No runner imports another runner"),
    ("engine/gallery/store.py", "import engine.runners.serve  # noqa", "engine's wings import one way"),
    ("engine/evaluation/metrics.py", "import engine.inference.predictor  # noqa", "engine's wings import one way"),
    ("engine/inference/folder.py", "import engine.inference.predictor  # noqa", "No import cycles"),
])
def test_a_forbidden_import_breaks_the_check(tmp_path, file, line, contract):
    copy_packages(tmp_path)
    add_line(os.path.join(tmp_path, file), line)
    proc = lint(tmp_path)
    assert proc.returncode != 0
    broken = [ln for ln in proc.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), proc.stdout[-3000:]
