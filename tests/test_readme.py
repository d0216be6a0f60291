"""The README cannot drift from the code: its config tables are the schema's, its module map is
the tree, and its Python examples import what exists."""
import ast
import os
import re

from engine.config.schema import README_BEGIN, README_END, readme_config_block

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
PACKAGES = ("foundation", "models", "datasets", "engine")


def section(title):
    start = README.index(title)
    nxt = README.find("\n## ", start + len(title))
    return README[start:nxt if nxt > 0 else len(README)]


def test_config_tables_are_generated_from_the_schema():
    shown = README[README.index(README_BEGIN) + len(README_BEGIN):README.index(README_END)]
    assert shown == readme_config_block(), \
        "README config tables differ from engine/config/schema.py: run python -m engine.config.schema README.md"


def test_module_map_matches_the_tree():
    block = section("## Where things live").split("```")[1]
    listed, folder = set(), None
    for line in block.splitlines():
        if not line.strip() or line.startswith("   "):  # a blank line or a wrapped description
            continue
        names = line.strip().split("  ")[0].split()  # the names come before the first wide gap
        if not line.startswith(" "):  # a top-level entry: main.py, engine/ ...
            assert os.path.exists(os.path.join(REPO, names[0])), f"README module map names {names[0]}"
            folder = names[0].rstrip("/") if names[0].endswith("/") else None
        elif folder:
            listed.update(f"{folder}/{name}".rstrip("/") for name in names)
    for path in listed:
        assert os.path.exists(os.path.join(REPO, path)), f"README module map names {path}, which does not exist"
    for pkg in PACKAGES:
        for name in sorted(os.listdir(os.path.join(REPO, pkg))):
            if name.endswith(".py") and name != "__init__.py":
                assert f"{pkg}/{name}" in listed, f"{pkg}/{name} is missing from the README module map"


def test_python_examples_import_what_exists():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for code in blocks:
        tree = ast.parse(code)
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([node], []), "README.md", "exec"), {})
