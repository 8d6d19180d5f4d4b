"""Forms generated from a flow's typed values (a gate's ``form``, a flow's ``inputs``).

Each spec becomes one :class:`Field`: a choice for an enum, a checkbox for a boolean,
a number input for an integer or a number, a text input for a string and a JSON text
area for an array or an object. What the browser posts back (strings) is turned into
typed values by :func:`values`; a value that cannot be read is an error beside its
field, and the engine's own check (:func:`engine.runner.service.check_values`) reports
the rest the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.model.documents import InputSpec

EMPTY = ""


@dataclass(frozen=True, slots=True)
class Choice:
    value: str
    label: str
    selected: bool


@dataclass(frozen=True, slots=True)
class Field:
    """One input of a generated form, as the template draws it."""

    name: str
    type: str
    widget: str
    """``select``, ``checkbox``, ``number``, ``text`` or ``json``."""
    required: bool
    description: str | None
    value: str
    """What the input shows: the value posted, else the default."""
    choices: tuple[Choice, ...] = ()
    items: str | None = None
    error: str | None = None
    step: str = "any"


def shown(spec: InputSpec, value: Any) -> str:
    """A typed value as its input shows it."""
    if value is None and spec.required:
        return EMPTY
    if spec.type == "string" and isinstance(value, str):
        return value
    if spec.type in ("array", "object"):
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def fields(
    specs: Mapping[str, InputSpec],
    posted: Mapping[str, list[str]] | None = None,
    problems: Mapping[str, str] | None = None,
) -> list[Field]:
    """The fields of ``specs``, showing what was ``posted`` (else the defaults) and each
    field's problem."""
    made = []
    for name, spec in specs.items():
        if posted is not None and spec.type == "boolean" and spec.enum is None:
            value = "true" if name in posted else "false"
        elif posted is not None and name in posted:
            value = posted[name][0]
        else:
            value = EMPTY if spec.required else shown(spec, spec.default)
        made.append(_field(name, spec, value, (problems or {}).get(name)))
    return made


def _field(name: str, spec: InputSpec, value: str, error: str | None) -> Field:
    common: dict[str, Any] = {
        "name": name,
        "type": spec.type,
        "required": spec.required,
        "description": spec.description,
        "value": value,
        "items": spec.items,
        "error": error,
    }
    if spec.enum is not None:
        options = [Choice(shown(spec, item), shown(spec, item), False) for item in spec.enum]
        if spec.required:
            options.insert(0, Choice(EMPTY, "— choose —", False))
        picked = tuple(Choice(o.value, o.label, o.value == value) for o in options)
        return Field(widget="select", choices=picked, **common)
    widget = {"boolean": "checkbox", "integer": "number", "number": "number"}.get(spec.type)
    if widget is None:
        widget = "json" if spec.type in ("array", "object") else "text"
    return Field(widget=widget, step="1" if spec.type == "integer" else "any", **common)


def values(
    specs: Mapping[str, InputSpec], posted: Mapping[str, list[str]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The typed values of a posted form, and a problem per field that could not be read.

    An empty input is left out (the default applies, or the engine reports the field
    missing), but for an optional string, where it means the empty string. An unchecked
    checkbox is ``false``.
    """
    found: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, spec in specs.items():
        if spec.type == "boolean" and spec.enum is None:
            found[name] = name in posted
            continue
        text = posted.get(name, [None])[0]
        if text is None or (text.strip() == EMPTY and (spec.type != "string" or spec.required)):
            continue
        try:
            found[name] = _typed(spec, text)
        except ValueError as exc:
            problems[name] = str(exc)
    return found, problems


def _typed(spec: InputSpec, text: str) -> Any:
    if spec.type == "string":
        return text
    if spec.type == "integer":
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {text.strip()[:40]!r}") from None
    if spec.type == "number":
        try:
            return int(text.strip())  # 3 stays an integer, as JSON would read it
        except ValueError:
            pass
        try:
            number = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text.strip()[:40]!r}") from None
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    try:
        return json.loads(text)  # an array, an object, or an enum's JSON value
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
