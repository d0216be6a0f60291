"""The configuration reference, docs/configuration.md, generated from the schema: one Markdown table
per config section (key, type, default, allowed values, meaning).

    python -m engine.config.reference docs/configuration.md
"""
import os

from engine.config.schema import ModelConfig, PipelineConfig, allowed_text, default_of, leaf_fields, type_name


def _cell(value):
    if value is None:
        return "null"
    if isinstance(value, str):
        return f'"{value}"' if value == "" else value
    return str(value)


def config_tables_markdown(schema):
    """One Markdown table per section: key, type, default, allowed, meaning."""
    lines = []
    current = None
    for key, f in leaf_fields(schema):
        section = key.split(".")[0]
        if section != current:
            if current is not None:
                lines.append("")
            lines += [f"**{section}**", "", "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
            current = section
        meaning = f.metadata["help"].replace("<", "&lt;").replace("|", "\\|")
        lines.append(f"| `{key}` | {type_name(f.type)} | `{_cell(default_of(f))}` | {allowed_text(f)} | {meaning} |")
    return "\n".join(lines) + "\n"


TABLES_BEGIN, TABLES_END = "<!-- config-tables:begin -->\n", "<!-- config-tables:end -->"


def config_tables_block():
    """The generated configuration reference (what stands between TABLES_BEGIN and TABLES_END)."""
    return ("### Model configs (MobileFaceNet.yaml, ResNet50_face.yaml)\n\n" + config_tables_markdown(ModelConfig)
            + "\n### Pipeline config (pipeline.yaml)\n\n" + config_tables_markdown(PipelineConfig))


def update_tables(path):
    """Rewrite the generated block of the Markdown page at `path` from the schema."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start, end = text.index(TABLES_BEGIN) + len(TABLES_BEGIN), text.index(TABLES_END)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:start] + config_tables_block() + text[end:])


if __name__ == "__main__":  # python -m engine.config.reference [docs/configuration.md]
    import sys

    update_tables(sys.argv[1] if len(sys.argv) > 1 else os.path.join("docs", "configuration.md"))
