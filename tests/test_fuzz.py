"""Whatever the input, the pipeline returns a checked flow or diagnostics, never an exception."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import Project
from engine.lint import check_text
from engine.model.source import load_yaml

ROOT = Path(__file__).resolve().parent.parent
PROJECT = Project(ROOT)
SHIPPED = sorted((ROOT / "flows").glob("*.yaml"))
FLOWS = [load_yaml(path.read_text("utf-8"))[0] for path in SHIPPED]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
templates = st.sampled_from(
    ["{{ steps.scope.output }}", "{% if %}", "{{ inputs.nope }}", "{{ ''.__class__ }}", "{{", "}}"]
)


def outcome_is_sound(text: str) -> None:
    result = check_text(text, ROOT / "flows" / "fuzz.yaml", PROJECT)
    assert (result.checked is None) == any(d.severity == "error" for d in result.diagnostics)
    for diagnostic in result.diagnostics:
        assert diagnostic.line >= 1 and diagnostic.column >= 1
        assert diagnostic.rule.startswith("FR")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    outcome_is_sound(text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="{}[]:-,&*!|>'\"#?\n abc1", max_size=120))
def test_yaml_punctuation_soup(text: str) -> None:
    outcome_is_sound(text)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _mutate(document: Any, path: tuple[Any, ...], action: str, replacement: Any) -> Any:
    document = json.loads(json.dumps(document))
    if not path:
        return replacement
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "rename" and isinstance(parent, dict):
        parent[f"{last}x"] = parent.pop(last)
    else:
        parent[last] = replacement
    return document


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(FLOWS),
    st.data(),
    st.sampled_from(["replace", "delete", "rename", "template"]),
    json_values,
)
def test_mutated_shipped_flows(flow: Any, data: st.DataObject, action: str, value: Any) -> None:
    path = data.draw(st.sampled_from(_paths(flow)))
    if action == "template":
        action, value = "replace", data.draw(templates)
    mutated = _mutate(flow, path, action, value)
    outcome_is_sound(json.dumps(mutated))  # JSON is YAML
