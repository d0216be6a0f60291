"""The README and the docs/ pages cannot drift from the code.

- The README stays a front door: at most 300 lines.
- The config tables of docs/configuration.md are the schema's; the module map of
  docs/architecture.md is the tree; every python block of README.md and docs/*.md imports what
  exists (tests/test_readme_examples.py runs them).
- Every relative link of README.md and docs/*.md points at a file that exists, and every `#anchor`
  at a heading of that file (GitHub's anchor rule).
- Every command in a ```bash block that runs the tool (`python main.py`, `python -m engine` or
  `facefeat`, also behind a launcher such as `python -m paddle.distributed.launch ... main.py`) is
  loaded through the config loader with its `-c` config and every `-o Key=value`, as main.py would
  load it before Paddle (no Paddle import here). So a page cannot name a config file, a key or a value
  that does not exist. Shell variables assigned in the same block (`P="python main.py -c ..."`) are
  expanded and comments dropped, as the shell would. Placeholders such as DIR, GALLERY or
  PATH.pdparams are plain strings, which every path-like key accepts, so such commands are checked
  as written; where a key needs a number, a boolean or a choice, or where `-c` needs a file, the
  page must give a real value: only the generic forms in PLACEHOLDERS are replaced, by values that
  load. The same holds for inline `-o Key=value` spans in the prose (checked against both the model
  and the pipeline schema, since prose names no config), and a backquoted dotted key such as
  `Index.nprobe` must be a key or section of one of the schemas (or an old name the loader still
  recognises to say what it became).
"""
import ast
import os
import re
import shlex

import pytest

from engine.config.loader import load_config
from engine.config.reference import TABLES_BEGIN, TABLES_END, config_tables_block
from engine.config.schema import MOVED_KEYS, ModelConfig, PipelineConfig, leaf_fields, section_keys
from foundation.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
PAGES = ["README.md"] + sorted(f"docs/{name}" for name in os.listdir(DOCS) if name.endswith(".md"))
PACKAGES = ("foundation", "models", "datasets", "engine", "facefeat")
MAX_README_LINES = 300
MODEL_CONFIG = "configs/face_recognition/MobileFaceNet.yaml"
PIPELINE_CONFIG = "configs/face_recognition/pipeline.yaml"
# Generic forms a page may show in place of a real value, and what is loaded instead.
PLACEHOLDERS = {"CONFIG": MODEL_CONFIG, "Global.mode=<mode>": "Global.mode=train", "Key.sub=value": None}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def read(page):
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


def prose(text):
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def code_blocks(text, lang):
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) == lang]


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    seen, out = {}, set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(read(page)), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_readme_is_a_front_door():
    lines = read("README.md").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/ (at most {MAX_README_LINES})"


def test_config_tables_are_generated_from_the_schema():
    text = read("docs/configuration.md")
    shown = text[text.index(TABLES_BEGIN) + len(TABLES_BEGIN):text.index(TABLES_END)]
    assert shown == config_tables_block(), ("docs/configuration.md's config tables differ from the schema: "
                                            "run python -m engine.config.reference docs/configuration.md")


def test_module_map_matches_the_tree():
    """The map's names come before the first wide gap; an indented line whose first name is a
    sub-folder (`runners/ train.py index.py`) lists names inside it (engine/runners/train.py ...)."""
    block = read("docs/architecture.md").split("```")[1]
    listed, folder = set(), None
    for line in block.splitlines():
        if not line.strip() or line.startswith("   "):  # a blank line or a wrapped description
            continue
        names = line.strip().split("  ")[0].split()
        if not line.startswith(" "):  # a top-level entry: main.py, engine/ ...
            assert os.path.exists(os.path.join(REPO, names[0])), f"docs/architecture.md names {names[0]}"
            folder = names[0].rstrip("/") if names[0].endswith("/") else None
        elif folder:
            sub = folder
            if names[0].endswith("/") and len(names) > 1:
                sub = f"{folder}/{names.pop(0).rstrip('/')}"
                listed.add(sub)
            listed.update(f"{sub}/{name}".rstrip("/") for name in names)
    for path in listed:
        assert os.path.exists(os.path.join(REPO, path)), f"docs/architecture.md names {path}, which does not exist"
    for pkg in PACKAGES:
        for root, dirs, files in os.walk(os.path.join(REPO, pkg)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in sorted(files):
                path = os.path.relpath(os.path.join(root, name), REPO).replace(os.sep, "/")
                if name.endswith(".py") and name != "__init__.py":
                    assert path in listed, f"{path} is missing from the module map in docs/architecture.md"


def test_python_examples_import_what_exists():
    blocks = [(page, code) for page in PAGES for code in code_blocks(read(page), "python")]
    assert blocks
    for page, code in blocks:
        tree = ast.parse(code)
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([node], []), page, "exec"), {})


@pytest.mark.parametrize("page", PAGES)
def test_links_point_at_what_exists(page):
    text = re.sub(r"`[^`]*`", "", prose(read(page)))  # no links inside code
    here = os.path.dirname(page)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(here, path)) if path else page
        assert os.path.exists(os.path.join(REPO, linked)), f"{page} links to {target}: {linked} does not exist"
        if anchor:
            assert linked.endswith(".md"), f"{page} links to {target}: an anchor into a file that is not a page"
            assert anchor in anchors(linked), f"{page} links to {target}: {linked} has no heading with that anchor"


def tool_commands(block):
    """(line, config, overrides) for every command of a bash block that runs the tool."""
    variables, commands = {}, []
    for line in block.replace("\\\n", " ").splitlines():
        assignment = re.match(r"^\s*(\w+)=(\"[^\"]*\"|'[^']*'|\S*)\s*(#.*)?$", line)
        if assignment:
            variables[assignment.group(1)] = shlex.split(assignment.group(2))[0] if assignment.group(2) else ""
            continue
        expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m.group(1)], line)
        words = shlex.split(expanded, comments=True)
        starts = [i + 1 for i, w in enumerate(words) if w.endswith("main.py") or w == "facefeat"]
        starts += [i + 2 for i, w in enumerate(words[:-1]) if w == "-m" and words[i + 1] == "engine"]
        if not starts:
            continue
        args, config, overrides = words[min(starts):], None, []
        while args:
            flag, value, args = args[0], args[1] if len(args) > 1 else None, args[2:]
            assert flag in ("-c", "-o") and value, f"unexpected argument {flag!r} in: {line.strip()}"
            if flag == "-c":
                config = PLACEHOLDERS.get(value, value)
            elif value in PLACEHOLDERS and PLACEHOLDERS[value] is None:
                continue
            else:
                overrides.append(PLACEHOLDERS.get(value, value))
        commands.append((line.strip(), config, overrides))
    return commands


def test_commands_load_their_config():
    checked = 0
    for page in PAGES:
        for block in code_blocks(read(page), "bash"):
            for line, config, overrides in tool_commands(block):
                assert config, f"{page}: a command without -c: {line}"
                assert os.path.isfile(os.path.join(REPO, config)), f"{page}: no config file {config}: {line}"
                try:
                    load_config(os.path.join(REPO, config), overrides)
                except ConfigError as e:
                    pytest.fail(f"{page}: {line}\n  does not load: {e}")
                checked += 1
    assert checked >= 20, f"only {checked} commands found in the pages' bash blocks"


def loads_with_either_config(overrides):
    errors = []
    for config in (MODEL_CONFIG, PIPELINE_CONFIG):
        try:
            load_config(os.path.join(REPO, config), overrides)
            return None
        except ConfigError as e:
            errors.append(str(e))
    return " / ".join(errors)


def test_inline_overrides_and_keys_exist():
    keys = {k for schema in (ModelConfig, PipelineConfig) for k in [k for k, _ in leaf_fields(schema)] + section_keys(schema)}
    sections = {k.split(".")[0] for k in keys}
    for page in PAGES:
        spans = re.findall(r"`([^`]+)`", prose(read(page)))
        for span in spans:
            span = " ".join(span.split())
            if span.startswith("-o "):
                words = span.split()
                assert all(w == "-o" for w in words[0::2]), f"{page}: unexpected inline command `{span}`"
                overrides = [w for w in words[1::2] if w not in PLACEHOLDERS]
                problem = overrides and loads_with_either_config(overrides)
                assert not problem, f"{page}: `{span}` does not load: {problem}"
            elif re.fullmatch(r"[A-Za-z_]+(\.[A-Za-z_0-9]+)+", span) and span.split(".")[0] in sections:
                assert span in keys or span in MOVED_KEYS, f"{page}: `{span}` is not a config key"
