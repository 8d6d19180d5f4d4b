"""What templates read, found by walking Jinja's syntax tree or by the simple-template route."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import TemplateSyntaxError

from engine.templates import (
    Reference,
    _simple_references,
    parse_expression,
    parse_template,
    references,
    template_references,
)


def read(source: str) -> set[tuple[str, str, str | None, int]]:
    return {(r.kind, r.name, r.field, r.lineno) for r in template_references(source)}


def test_steps_fields_and_inputs_are_found_with_their_lines() -> None:
    source = "Hi {{ inputs.name }}\n{{ steps.a.output | upper }}\n{{ steps['b'].fields.verdict }}"
    assert read(source) == {
        ("input", "name", None, 1),
        ("step", "a", None, 2),
        ("step", "b", None, 3),
        ("field", "b", "verdict", 3),
    }


def test_references_inside_statements_and_loops_are_found() -> None:
    source = "{% for d in inputs.dimensions %}{% if steps.x.data %}{{ d }}{% endif %}{% endfor %}"
    assert read(source) == {("input", "dimensions", None, 1), ("step", "x", None, 1)}


def test_raw_blocks_and_comments_read_nothing() -> None:
    assert read("{% raw %}{{ steps.x.output }}{% endraw %}{# inputs.y #}") == set()


def test_names_a_template_assigns_itself_are_not_references() -> None:
    assert read("{% set steps = {'a': 1} %}{{ steps.a }} {{ inputs.q }}") == {
        ("input", "q", None, 1)
    }


def test_plain_text_is_not_parsed() -> None:
    assert template_references("no markup at all: steps.a.output") == []


def test_syntax_errors_carry_their_line() -> None:
    with pytest.raises(TemplateSyntaxError) as caught:
        template_references("line one\n{% if %}")
    assert caught.value.lineno == 2


@pytest.mark.parametrize("source", ["{{ x }}", "a }}{{ b", "x ===", "steps.a and"])
def test_when_must_be_one_bare_expression(source: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_expression(source)


def test_when_expressions_are_walked_like_templates() -> None:
    tree = parse_expression("steps.gate.data.approved and 'x' in inputs.dims")
    found = {(r.kind, r.name) for r in references(tree)}
    assert found == {("step", "gate"), ("input", "dims")}


names = st.sampled_from(["steps", "inputs", "run", "band", "a", "fields", "x_1", "and", "none"])
paths = st.lists(names, min_size=1, max_size=5).map(".".join)
pieces = st.one_of(
    st.text(alphabet="ab \n{}%#-", max_size=6),
    paths.map(lambda p: "{{ " + p + " }}"),
    paths.map(lambda p: "{{" + p + "}}"),
    paths.map(lambda p: "{{- " + p + " }}"),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(pieces, max_size=6).map("".join))
def test_the_simple_route_agrees_with_jinja(source: str) -> None:
    simple = _simple_references(source)
    try:
        tree = parse_template(source)
    except TemplateSyntaxError:
        assert simple is None  # the fast route only accepts what Jinja parses
        return
    if simple is not None:

        def key(r: Reference) -> tuple[str, str, str | None, int]:
            return (r.kind, r.name, r.field, r.lineno)

        assert sorted(map(key, simple)) == sorted(map(key, references(tree)))
