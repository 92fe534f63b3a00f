"""Load an environments file into ``AppConfig`` and explain every problem in one line.

Validation runs before any construct exists. Each problem names the file, the environment, the field, the bad value
and what is allowed (`staging.network.vpc_cidr = '10.1.0.0/33': not an IPv4 network ... Allowed: ...`); all problems
are reported together.
"""

from __future__ import annotations

import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from config.model import AppConfig, Problem

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "environments.toml"
_MISSING = object()


class ConfigError(Exception):
    """Raised with every problem found; ``str()`` is the full message for the user."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = [f"Invalid configuration in {source}:"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def parse_config(text: str, source: str) -> AppConfig:
    """Validate TOML text; raise ``ConfigError`` listing every problem found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, [f"TOML syntax error: {error}"]) from None
    try:
        return AppConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(source, explain(error, data)) from None


def load_config(path: str | Path | None = None) -> AppConfig:
    """Read and validate a config file (default: ``config/environments.toml``)."""
    config_path = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(config_path), [f"cannot read the file: {error.strerror or error}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(config_path), ["the file is not UTF-8 text"]) from None
    return parse_config(text, str(config_path))


# --- messages -----------------------------------------------------------------------------------------------------


def explain(error: ValidationError, data: Any) -> list[str]:
    lines: list[str] = []
    items = error.errors(include_url=False)
    inner = {tuple(item["loc"]) for item in items}
    for item in items:
        loc = tuple(item["loc"])
        # A list whose every item failed is also "too short" to pydantic: the items' own errors already say why.
        if item["type"] == "too_short" and any(other[:len(loc)] == loc and len(other) > len(loc) for other in inner):
            continue
        if item["type"] == "config_rules":
            for found in item["ctx"]["problems"]:
                found: Problem
                lines.append(_line(_label(data, loc + found.loc), found.value, found.problem, found.allowed))
            continue
        value = item.get("input", _MISSING)
        label = _label(data, loc)
        lines.append(_line(label, _MISSING if item["type"] == "missing" else value, *_describe(item, loc, label)))
    return list(dict.fromkeys(lines))


MAX_SHOWN = 120  # characters of a value shown in a message


def _line(label: str, value: Any, problem: str, allowed: str) -> str:
    shown = "(missing)" if value is _MISSING else repr(value)
    if len(shown) > MAX_SHOWN and isinstance(value, list | tuple | dict):  # never a whole table on one line
        shown = f"[{len(value)} item(s)]" if isinstance(value, list | tuple) else f"{{a table of {len(value)} key(s)}}"
    return f"{label} = {shown}: {problem}. Allowed: {allowed}."


def _label(data: Any, loc: tuple[str | int, ...]) -> str:
    """`('environments', 0, 'network', 'vpc_cidr')` -> `staging.network.vpc_cidr` (by the environment's name)."""
    parts: list[str] = []
    node = data
    for index, key in enumerate(loc):
        named = isinstance(key, int) and index == 1 and loc[0] == "environments"
        name = node[key].get("name") if named and _has(node, key) and isinstance(node[key], dict) else None
        if named and isinstance(name, str) and name:
            parts = [name]
        elif isinstance(key, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{key}]"]
        else:
            parts.append(key)
        node = node[key] if _has(node, key) else None
    return ".".join(parts)


def _has(node: Any, key: str | int) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)


def _describe(item: dict, loc: tuple[str | int, ...], label: str) -> tuple[str, str]:
    """(what is wrong, what is allowed) for one of pydantic's errors."""
    kind, value, ctx = item["type"], item.get("input"), item.get("ctx") or {}
    got = type(value).__name__
    field, parent = _field_at(loc)
    allowed = (field.description if field is not None else None) or "see config/environments.schema.json"
    table = field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    if kind == "missing":
        return ("required table is missing", f"a [{label}] table") if table else ("required field is missing", allowed)
    if kind == "extra_forbidden":
        known = ", ".join(sorted(parent.model_fields)) if parent is not None else "the documented keys"
        return "unknown key", f"one of {known}"
    if kind == "config":
        return item["msg"], allowed
    messages = {
        "int_type": f"expected an integer, got {got}",
        "string_type": f"expected a string, got {got}",
        "bool_type": f"expected true or false, got {got}",
        "list_type": f"expected a list, got {got}",
        "tuple_type": f"expected a list, got {got}",
        "dict_type": f"expected a table, got {got}",
        "model_type": f"expected a table, got {got}",
        "model_attributes_type": f"expected a table, got {got}",
        "greater_than_equal": "out of range",
        "less_than_equal": "out of range",
        "too_short": f"needs at least {ctx.get('min_length')} item(s)",
    }
    if table and kind in ("dict_type", "model_type", "model_attributes_type"):
        allowed = f"a [{label}] table"
    return messages.get(kind, item["msg"]), allowed


def _field_at(loc: tuple[str | int, ...]):
    """The pydantic field a location points at, and the model that holds it (None where there is none)."""
    model: type[BaseModel] | None = AppConfig
    field = parent = None
    for key in loc:
        if isinstance(key, int):
            continue  # an item of a list: its field is the list's
        if model is None or key not in model.model_fields:
            return None, model
        field = model.model_fields[key]
        parent = model
        model = _model_of(field.annotation)
    return field, parent


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, directly or as the items of a tuple."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_of(typing.get_args(annotation)[0])
    if origin in (tuple, list, types.UnionType, typing.Union):
        for argument in typing.get_args(annotation):
            found = _model_of(argument)
            if found is not None:
                return found
    return None
