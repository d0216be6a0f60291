"""The README and the docs/ pages cannot drift from the code: the config tables of
docs/configuration.md are the schema's, the module map of docs/architecture.md is the tree, and
every Python example imports what exists."""
import ast
import os
import re

from engine.config_schema import README_BEGIN, README_END, readme_config_block

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
PAGES = ["README.md"] + sorted(f"docs/{name}" for name in os.listdir(DOCS) if name.endswith(".md"))
PACKAGES = ("foundation", "models", "datasets", "engine")


def read(page):
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


def test_config_tables_are_generated_from_the_schema():
    text = read("docs/configuration.md")
    shown = text[text.index(README_BEGIN) + len(README_BEGIN):text.index(README_END)]
    assert shown == readme_config_block(), ("docs/configuration.md's config tables differ from the schema: "
                                            "run python -m engine.config.schema docs/configuration.md")


def test_module_map_matches_the_tree():
    block = read("docs/architecture.md").split("```")[1]
    listed, folder = set(), None
    for line in block.splitlines():
        if not line.strip() or line.startswith("   "):  # a blank line or a wrapped description
            continue
        names = line.strip().split("  ")[0].split()  # the names come before the first wide gap
        if not line.startswith(" "):  # a top-level entry: main.py, engine/ ...
            assert os.path.exists(os.path.join(REPO, names[0])), f"docs/architecture.md names {names[0]}"
            folder = names[0].rstrip("/") if names[0].endswith("/") else None
        elif folder:
            listed.update(f"{folder}/{name}".rstrip("/") for name in names)
    for path in listed:
        assert os.path.exists(os.path.join(REPO, path)), f"docs/architecture.md names {path}, which does not exist"
    for pkg in PACKAGES:
        for name in sorted(os.listdir(os.path.join(REPO, pkg))):
            if name.endswith(".py") and name != "__init__.py":
                assert f"{pkg}/{name}" in listed, f"{pkg}/{name} is missing from the module map in docs/architecture.md"


def test_python_examples_import_what_exists():
    blocks = [(page, code) for page in PAGES for code in re.findall(r"```python\n(.*?)```", read(page), re.S)]
    assert blocks
    for page, code in blocks:
        tree = ast.parse(code)
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([node], []), page, "exec"), {})
