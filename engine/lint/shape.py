"""FR002: the document against the pydantic models, each error at its key or value."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
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
    documents.NAME: "a name: a letter or '_', then letters, digits or '_', 64 at most",
    documents.BAND_NAME: "a band name: lowercase letters, digits, '_' and '-', 64 at most",
    documents.DURATION: "a duration: an integer and one of s, m, h, d (e.g. 90s, 15m, 24h)",
    documents.CALL: "module:function or an entry point name",
}

# Persona and band names share one pattern, so the key holding the value tells them apart.
_PATTERNS_BY_KEY = {
    ("persona", documents.PERSONA_NAME): "a persona name: lowercase letters, digits, '_' "
    "and '-', 64 at most",
}

_STEP_MODELS: dict[str, type[BaseModel]] = {
    "agent": documents.AgentStep,
    "code": documents.CodeStep,
    "approval": documents.ApprovalStep,
}

# Which model describes the mapping at a pointer, for "did you mean" hints.
_MODELS_AT: list[tuple[re.Pattern[str], type[BaseModel]]] = [
    (re.compile(r""), documents.Flow),
    (re.compile(r"/defaults"), documents.Defaults),
    (re.compile(r"/inputs/[^/]+|/steps/\d+/form/[^/]+"), documents.InputSpec),
    (re.compile(r"/steps/\d+/output"), documents.OutputSpec),
]

_TYPE_NAMES = {"dict": "mapping", "str": "string", "int": "integer", "bool": "boolean"}


@dataclass(frozen=True, slots=True)
class _Located:
    error: ErrorDetails
    pointer: str
    value: Any
    parent: Any


def check_shape(data: Any, report: Reporter) -> Flow | None:
    """The validated flow, or None after reporting every FR002 problem."""
    if not isinstance(data, dict):
        report.at_value("", "FR002", f"a flow is a mapping of keys, not {json_type(data)}")
        return None
    try:
        return Flow.model_validate(data)
    except ValidationError as exc:
        located = [_locate(error, data) for error in exc.errors()]
        for item in _most_specific(located):
            _report(item, report)
        return None


def _most_specific(located: list[_Located]) -> list[_Located]:
    """One error per node, without the noise of union members that did not apply.

    A mapping checked against ``Literal | Model`` fails both members; the error
    found inside the mapping (or on it, by the model) says more than "not one of
    'text', 'json'", so a type or literal error on a container is dropped when
    another error stands at or below it.
    """
    kept: list[_Located] = []
    seen: set[str] = set()
    for item in located:
        if _union_noise(item, located) or item.pointer in seen:
            continue
        seen.add(item.pointer)
        kept.append(item)
    return kept


def _is_mismatch(item: _Located) -> bool:
    kind = item.error["type"]
    return kind == "literal_error" or kind.endswith("_type")


def _union_noise(item: _Located, located: list[_Located]) -> bool:
    if not isinstance(item.value, dict | list) or not _is_mismatch(item):
        return False
    return any(
        other.pointer.startswith(item.pointer + "/")
        or (other.pointer == item.pointer and not _is_mismatch(other))
        for other in located
    )


def _locate(error: ErrorDetails, data: Any) -> _Located:
    """Walk the data along a pydantic location; parts not in the data are union labels."""
    loc = error["loc"]
    pointer, node, parent = "", data, None
    for depth, part in enumerate(loc):
        in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            pointer, node, parent = pointer_join(pointer, part), node[part], node
        elif depth == len(loc) - 1 and error["type"] == "missing":
            return _Located(error, pointer_join(pointer, part), None, node)
    return _Located(error, pointer, node, parent)


def _report(item: _Located, report: Reporter) -> None:
    kind = item.error["type"]
    pointer, value = item.pointer, item.value
    if kind == "extra_forbidden":
        report.at_key(pointer, "FR002", _unknown_key(pointer, item.parent))
    elif kind == "missing":
        owner, _, key = pointer.rpartition("/")
        report.at_key(owner, "FR002", f"missing required key '{key}'")
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        if isinstance(value, dict) and "kind" in value:
            message = f"unknown step kind {value['kind']!r}: expected agent, code or approval"
            report.at_value(pointer_join(pointer, "kind"), "FR002", message)
        else:
            report.at_value(pointer, "FR002", "a step needs 'kind': agent, code or approval")
    elif kind == "value_error" and isinstance(value, dict):
        _report_model_error(item, report)
    else:
        message = _describe(item.error, value, pointer)
        report.at_value(pointer, "FR002", _prefixed(pointer, message))


def _report_model_error(item: _Located, report: Reporter) -> None:
    """A check across keys of one mapping; ``key: ...`` messages point at that key."""
    message = item.error["msg"].removeprefix("Value error, ")
    key, separator, rest = message.partition(": ")
    if separator and isinstance(item.value, dict) and key in item.value:
        child = pointer_join(item.pointer, key)
        report.at_value(child, "FR002", _prefixed(child, rest))
    else:
        report.at_value(item.pointer, "FR002", _prefixed(item.pointer, message))


def _prefixed(pointer: str, message: str) -> str:
    """``key: message`` when the pointer ends in a key (not a list index)."""
    key = pointer.rpartition("/")[2].replace("~1", "/").replace("~0", "~")
    return message if not key or key.isdigit() else f"{key}: {message}"


def _unknown_key(pointer: str, parent: Any) -> str:
    owner, _, key = pointer.rpartition("/")
    key = key.replace("~1", "/").replace("~0", "~")
    kind = parent.get("kind") if isinstance(parent, dict) else None
    if re.fullmatch(r"/steps/\d+", owner) and isinstance(kind, str) and kind in _STEP_MODELS:
        article = "an" if kind[0] in "aeiou" else "a"
        return f"unknown key '{key}' in {article} {kind} step" + _hint(key, _STEP_MODELS[kind])
    model = next((m for pattern, m in _MODELS_AT if pattern.fullmatch(owner)), None)
    return f"unknown key '{key}'" + (_hint(key, model) if model is not None else "")


def _hint(key: str, model: type[BaseModel]) -> str:
    known = [field.alias or name for name, field in model.model_fields.items()]
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _describe(error: ErrorDetails, value: Any, pointer: str) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        pattern = str(context.get("pattern", ""))
        key = pointer.rpartition("/")[2]
        what = _PATTERNS_BY_KEY.get((key, pattern)) or _PATTERNS.get(pattern)
        return f"{value!r} is not {what or f'a string matching {pattern}'}"
    if kind.endswith("_type") or kind == "model_attributes_type":
        expected = kind.removesuffix("_type").replace("model_attributes", "dict")
        return f"expected {_TYPE_NAMES.get(expected, expected)}, got {json_type(value)}"
    if kind == "literal_error":
        return f"{value!r} is not one of {context.get('expected', '')}"
    if kind == "too_short":
        return f"needs at least {context.get('min_length')} item(s)"
    if kind == "greater_than_equal":
        return f"must be at least {context.get('ge')}, not {value!r}"
    if kind == "less_than_equal":
        return f"must be at most {context.get('le')}, not {value!r}"
    return error["msg"].removeprefix("Value error, ")
