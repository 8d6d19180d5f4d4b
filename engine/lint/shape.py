"""FR002: the document against the pydantic models, each error at its key or value."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from engine.lint.reporter import Reporter
from engine.model import documents
from engine.model.diagnostics import pointer_join
from engine.model.documents import Flow, json_type

_PATTERNS = {
    documents.STEP_ID: "a step id: a lowercase letter, then up to 63 lowercase letters, "
    "digits or '_'",
    documents.FLOW_NAME: "a flow name: lowercase letters, digits and '-', 64 at most",
    documents.PERSONA_NAME: "a persona name: lowercase letters, digits, '_' and '-', 64 at most",
    documents.NAME: "a name: a letter or '_', then letters, digits or '_', 64 at most",
    documents.DURATION: "a duration: an integer and one of s, m, h, d (e.g. 90s, 15m, 24h)",
    documents.CALL: "module:function or an entry point name",
}

_KEYS_BY_KIND: dict[str, type[BaseModel]] = {
    "agent": documents.AgentStep,
    "code": documents.CodeStep,
    "approval": documents.ApprovalStep,
}


def check_shape(data: Any, report: Reporter) -> Flow | None:
    """The validated flow, or None after reporting every FR002 problem."""
    if not isinstance(data, dict):
        report.at_value("", "FR002", f"a flow is a mapping of keys, not {json_type(data)}")
        return None
    try:
        return Flow.model_validate(data)
    except ValidationError as exc:
        reported: set[str] = set()
        for error in exc.errors():
            pointer = _pointer(error["loc"], data)[0]
            if pointer not in reported:  # a union yields one error per member: keep the first
                reported.add(pointer)
                _report(error, data, report)
        return None


def _pointer(loc: tuple[int | str, ...], data: Any) -> tuple[str, Any, Any]:
    """The JSON Pointer of a pydantic location, its value, and its parent's value.

    Discriminated-union tags ('agent', 'code', ...) are not in the document and
    are skipped by walking the data alongside the location.
    """
    pointer, node, parent = "", data, None
    last = len(loc) - 1
    for depth, part in enumerate(loc):
        in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            pointer, node, parent = pointer_join(pointer, part), node[part], node
        elif depth == last and isinstance(node, dict):
            return pointer_join(pointer, part), None, node
        # otherwise a union member's label ('agent', 'str', ...): not in the document
    return pointer, node, parent


def _report(error: ErrorDetails, data: Any, report: Reporter) -> None:
    loc = error["loc"]
    pointer, value, parent = _pointer(loc, data)
    kind = error["type"]
    key = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
    if kind == "extra_forbidden":
        report.at_key(pointer, "FR002", _unknown_key(key, parent))
    elif kind == "missing":
        owner = pointer.rpartition("/")[0]
        report.at_key(owner, "FR002", f"missing required key '{key}'")
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        kind_pointer = pointer_join(pointer, "kind")
        if isinstance(value, dict) and "kind" in value:
            message = f"unknown step kind {value['kind']!r}: expected agent, code or approval"
            report.at_value(kind_pointer, "FR002", message)
        else:
            report.at_value(pointer, "FR002", "a step needs 'kind': agent, code or approval")
    else:
        report.at_value(pointer, "FR002", _describe(error, key, value))


def _unknown_key(key: str, parent: Any) -> str:
    message = f"unknown key '{key}'"
    if isinstance(parent, dict):
        kind = parent.get("kind")
        model = _KEYS_BY_KIND.get(kind) if isinstance(kind, str) else None
        if model is not None:
            message += f" in a {kind} step"
            known = [field.alias or name for name, field in model.model_fields.items()]
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
    return message


def _describe(error: ErrorDetails, key: str, value: Any) -> str:
    kind = error["type"]
    prefix = f"{key}: " if key else ""
    if kind == "string_pattern_mismatch":
        pattern = str((error.get("ctx") or {}).get("pattern", ""))
        wanted = _PATTERNS.get(pattern, f"a string matching {pattern}")
        return f"{prefix}{value!r} is not {wanted}"
    if kind.endswith("_type") or kind == "model_attributes_type":
        expected = kind.removesuffix("_type").replace("model_attributes", "mapping")
        expected = {"dict": "mapping", "str": "string", "int": "integer", "bool": "boolean"}.get(
            expected, expected
        )
        return f"{prefix}expected {expected}, got {json_type(value)}"
    if kind == "literal_error":
        expected = (error.get("ctx") or {}).get("expected", "")
        return f"{prefix}{value!r} is not one of {expected}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{prefix}{message}"
