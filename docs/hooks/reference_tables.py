"""MkDocs hook: reference tables generated from the code and the shipped files at build time.

- configuration.md, marker ``<!-- configuration-keys -->``: every key of ``exporter.config.Settings`` and its nested
  sections, one row each. Its type, limits and default come from the code, its meaning from ``configuration.yml``
  beside this file (else the field's own description). A meaning for a key the code does not have fails the
  build, so the page lists exactly the keys that exist.
- alerts.md, marker ``<!-- alert-table -->``: every alert of ``prometheus/rules/*.yml`` with its severity, ``for:``
  and summary, linked to its runbook section; a missing section is a broken anchor, which fails a strict build.
"""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

log = logging.getLogger("mkdocs.hooks.configuration_table")

ROOT = Path(__file__).resolve().parents[2]
MEANINGS = Path(__file__).with_name("configuration.yml")
RULES = ROOT / "prometheus" / "rules"


def _section(annotation: Any) -> type[BaseModel] | None:
    """The nested section a field holds (``X`` or ``X | None``), if it is one."""
    args = [a for a in get_args(annotation) if a is not type(None)] if _is_union(annotation) else [annotation]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """Every configuration key, dotted, in the order of the code: nested sections are walked, not listed."""
    if model is None:
        from exporter.config import Settings

        model = Settings
    out = []
    for name, field in model.model_fields.items():
        if field.exclude:  # set by the loader, not by the user (config_dir)
            continue
        sub = _section(field.annotation)
        if sub is not None:
            out += keys(sub, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field))
    return out


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _code(text: str) -> str:
    return f"`{text}`"


def _type(annotation: Any) -> str:
    if _is_union(annotation):
        args = [a for a in get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(get_args(annotation))
        return " or ".join([*(_type(a) for a in args), *(["`null`"] if nullable else [])])
    origin = get_origin(annotation)
    if origin is Literal:
        return " or ".join(_code(json.dumps(v) if not isinstance(v, str) else v) for v in get_args(annotation))
    if origin is list:
        (item,) = get_args(annotation)
        return f"list of {_type(item)}"
    if origin is dict:
        _, value = get_args(annotation)
        return f"map of text to {_type(value)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "{" + ", ".join(annotation.model_fields) + "}"
    names = {bool: "boolean", int: "integer", float: "number", str: "text", Path: "path"}
    if annotation in names:
        return names[annotation]
    return _code(getattr(annotation, "__name__", str(annotation)))


def _constraints(field: FieldInfo) -> str:
    signs = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
    parts = []
    for item in field.metadata:
        for attr, sign in signs:
            if isinstance(item, annotated_types.BaseMetadata) and hasattr(item, attr):
                parts.append(f"{sign} {_number(getattr(item, attr))}")
        if isinstance(item, annotated_types.MaxLen):
            parts.append(f"at most {item.max_length} characters")
        if isinstance(item, annotated_types.MinLen):
            parts.append(f"at least {item.min_length} characters")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:  # a factory of the other fields' values: no default of its own to show
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return _code(str(value).lower())
    if isinstance(value, int | float):
        return _code(_number(value))
    if isinstance(value, str):
        plain = value != "" and yaml.safe_load(value) == value  # written as is in YAML, or it needs quotes
        return _code(value if plain else json.dumps(value))
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return _code(json.dumps(value, default=str))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def configuration_table() -> str:
    meanings: dict[str, str] = yaml.safe_load(MEANINGS.read_text()) or {}
    found = keys()
    unknown = sorted(set(meanings) - {k for k, _ in found})
    if unknown:
        raise ValueError(f"{MEANINGS.name} describes keys the settings model does not have: {', '.join(unknown)}")
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, field in found:
        meaning = meanings.get(key) or field.description or ""
        if not meanings.get(key):
            log.info("configuration key %s has no meaning in %s; using the field's description", key, MEANINGS.name)
        kind = _type(field.annotation)
        limits = _constraints(field)
        rows.append(
            f"| {_code(key)} | {kind}{', ' + limits if limits else ''} | {_default(field)} | {_cell(meaning)} |"
        )
    return "\n".join(rows)


def alerts() -> list[dict[str, Any]]:
    """Every alerting rule of the shipped rule files, in file order."""
    return [
        rule
        for path in sorted(RULES.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def alert_table() -> str:
    rows = ["| alert | severity | for | summary |", "|---|---|---|---|"]
    for rule in alerts():
        name = rule["alert"]
        rows.append(f"| [{name}](#{name.lower()}) | {rule['labels']['severity']} | {rule.get('for', '—')} "
                    f"| {_cell(rule['annotations']['summary'])} |")
    return "\n".join(rows)


TABLES = {
    "configuration.md": ("<!-- configuration-keys -->", configuration_table),
    "alerts.md": ("<!-- alert-table -->", alert_table),
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri not in TABLES:
        return markdown
    marker, build = TABLES[page.file.src_uri]
    if marker not in markdown:
        raise ValueError(f"{page.file.src_uri} has lost its marker {marker}: the generated table has nowhere to go")
    return markdown.replace(marker, build())
