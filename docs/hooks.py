"""Build hooks of the documentation site (mkdocs.yml: ``hooks``), generated from the code so the
pages cannot drift from it:

- ``reference/openapi.json``: the HTTP API's OpenAPI schema, from ``api.app.create_app()`` (the
  API imports no torch and needs no server or Redis to describe itself);
- ``<!-- settings-table -->`` in a page: every setting of ``contract.settings.Settings`` with its
  environment variable, type and default, described by the comment beside it in the source;
- ``<!-- samplers-table -->``: the samplers of ``ddpm_core.sampler_specs``.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
SETTINGS_SOURCE = REPO / "contract" / "settings.py"


def on_files(files: Files, config) -> Files:
    """Add the OpenAPI schema of the HTTP API as a generated file of the site."""
    from api.app import create_app
    from contract.settings import Settings

    schema = create_app(Settings(_env_file=None)).openapi()
    files.append(File.generated(config, "reference/openapi.json", content=json.dumps(schema, indent=1)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- settings-table -->" in markdown:
        markdown = markdown.replace("<!-- settings-table -->", settings_table())
    if "<!-- samplers-table -->" in markdown:
        markdown = markdown.replace("<!-- samplers-table -->", samplers_table())
    return markdown


def _field_comments() -> dict[str, str]:
    """Each ``Settings`` field's comment in the source: the comment at the end of its line, else
    the comment lines just above it (a one-line comment above a field that has its own is a
    section's title, not the field's)."""
    source = SETTINGS_SOURCE.read_text()
    body = source[source.index("class Settings(") :]
    comments: dict[str, str] = {}
    above: list[str] = []
    lines = body.splitlines()
    for line in lines[1:]:
        if line and not line.startswith(" "):
            break  # the end of the class
        stripped = line.strip()
        if stripped.startswith("def ") or stripped.startswith("@"):
            break  # the fields are done
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"\s{4}(\w+)\s*:", line)
        if match:
            trailing = [tok.string.lstrip("# ") for tok in _tokens(line) if tok.type == tokenize.COMMENT]
            comments[match.group(1)] = " ".join(trailing or above).strip()
        above = [] if stripped else above
    return comments


def _tokens(line: str) -> list[tokenize.TokenInfo]:
    try:
        return list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
    except (tokenize.TokenError, IndentationError):
        return []


def _default(field) -> str:
    from contract.settings import REPO_ROOT

    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, Path):
        try:
            return f"`{value.relative_to(REPO_ROOT)}/` (in the project)"
        except ValueError:
            return f"`{value}`"
    if isinstance(value, str):
        return f"`{value}`" if value else "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _type(annotation) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = text.replace("pathlib.", "").replace("typing.", "").replace("NoneType", "None")
    return text.replace(" | None", " (optional)")


def settings_table() -> str:
    """A Markdown table of every setting: variable, type, default and what it does."""
    from contract.settings import Settings

    comments = _field_comments()
    rows = ["| variable | type | default | what it does |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        variable = alias.choices[0] if alias is not None else f"DDPM_{name.upper()}"
        what = (field.description or comments.get(name, "")).replace("|", "\\|")
        what = re.sub(r"\bNone\b", "unset", what)
        rows.append(f"| `{variable}` | {_type(field.annotation)} | {_default(field)} | {what} |")
    return "\n".join(rows)


def samplers_table() -> str:
    """A Markdown table of the samplers on offer (the registry every surface reads)."""
    from ddpm_core.sampler_specs import DEFAULT_SAMPLER, FAST_SAMPLER, SAMPLER_SPECS

    rows = [
        "| `sampler` | name | steps | default steps | history kept | noise after x_T | what it is for |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec in SAMPLER_SPECS:
        note = " (the API's default)" if spec.name == DEFAULT_SAMPLER else ""
        note += " (the fast one: the web page's default)" if spec.name == FAST_SAMPLER else ""
        steps = f"{spec.min_steps} to T" if spec.chooses_steps else "all T"
        default = "T" if spec.default_steps is None else str(spec.default_steps)
        noise = "no" if spec.deterministic else "yes"
        cells = [f"`{spec.name}`", spec.title + note, steps, default, str(spec.history), noise, spec.description]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
