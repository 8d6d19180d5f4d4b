"""Composing an agent's prompt and reading its output: fields and JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema

from engine.errors import FlowrunnerError

SEPARATOR = "\n\n---\n\n"
_FENCED_JSON = re.compile(r"```(?:json)?\s*\n(.*?)\n\s*```", re.DOTALL)


class OutputError(FlowrunnerError):
    """The output lacks a declared field, or is not the JSON the step asked for."""


def compose(persona: str | None, prompt: str, contracts: Sequence[str]) -> str:
    """Persona text, separator, the rendered prompt, then each contract, blank-line separated."""
    body = "\n\n".join([prompt.strip("\n"), *(c.strip("\n") for c in contracts)])
    return f"{persona.strip()}{SEPARATOR}{body}" if persona else body


def parse_fields(output: str, names: Sequence[str]) -> dict[str, str]:
    """For each name, the trimmed value of the first ``name: value`` line (any case)."""
    found = {}
    for name in names:
        match = re.search(rf"^[ \t]*{re.escape(name)}:[ \t]*(\S.*?)[ \t]*$", output, re.M | re.I)
        if match is None:
            raise OutputError(f"the output has no line '{name}: <value>'")
        found[name] = match.group(1)
    return found


def parse_json(output: str, schema: Mapping[str, Any] | None) -> Any:
    """The JSON value of an output (a fenced ```json block is accepted), checked by ``schema``."""
    text = output.strip()
    fenced = _FENCED_JSON.search(text)
    candidates = [text] + ([fenced.group(1)] if fenced else [])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if schema is not None:
            try:
                jsonschema.validate(value, schema)
            except jsonschema.ValidationError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "the output"
                raise OutputError(
                    f"JSON output does not match the schema at {where}: {exc.message}"
                ) from exc
        return value
    raise OutputError("the output is not valid JSON")
