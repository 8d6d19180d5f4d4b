"""Jinja templates of a flow: one sandboxed environment, parsing and reference extraction.

Every template of a flow (prompts, ``with`` strings, ``when``, ``message``,
``report``) is parsed by the same bounded sandbox (:mod:`engine.sandbox`) the
runtime renders with. Lint walks the parsed tree to find what a template reads:
``steps.<id>``, ``steps.<id>.fields.<name>`` and ``inputs.<name>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from jinja2 import TemplateSyntaxError, nodes
from jinja2.parser import Parser

from engine.sandbox import ENVIRONMENT

_DELIMITERS = ("{{", "{%", "{#")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SIMPLE_OUTPUT = re.compile(rf"\{{\{{ *({_NAME}(?:\.{_NAME})*) *\}}\}}")
_KEYWORDS = frozenset(
    {"and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False", "None"}
)


@dataclass(frozen=True, slots=True)
class Reference:
    """One thing a template reads: a step, a step's field or an input.

    ``text`` is how the reference is spelled (``steps.scope``) so a caller can
    find its column on ``lineno`` (1-based, within the template).
    """

    kind: Literal["step", "field", "input"]
    name: str
    field: str | None
    lineno: int
    text: str


def is_template(source: str) -> bool:
    """Whether ``source`` has any Jinja markup; plain text needs no parsing."""
    return any(delimiter in source for delimiter in _DELIMITERS)


def parse_template(source: str) -> nodes.Template:
    """The syntax tree of a template; raises ``TemplateSyntaxError``."""
    return ENVIRONMENT.parse(source)


def parse_expression(source: str) -> nodes.Expr:
    """The syntax tree of a bare expression (``when``); raises ``TemplateSyntaxError``."""
    if is_template(source):
        raise TemplateSyntaxError("write the expression without {{ }} or {% %}", 1)
    parser = Parser(ENVIRONMENT, source, state="variable")
    expression = parser.parse_expression()
    if not parser.stream.eos:
        token = parser.stream.current
        raise TemplateSyntaxError(f"unexpected '{token.value}' after the expression", token.lineno)
    return expression


def _shadowed(tree: nodes.Node) -> set[str]:
    """Names a template assigns itself (set, for, macro arguments)."""
    return {
        name.name
        for name in tree.find_all(nodes.Name)
        if name.ctx in ("store", "param") and name.name in ("steps", "inputs")
    }


def _member(node: nodes.Node) -> tuple[nodes.Expr, str] | None:
    """``(base, name)`` for ``base.name`` and ``base['name']``, else None."""
    if isinstance(node, nodes.Getattr):
        return node.node, node.attr
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return node.node, node.arg.value
    return None


def _root_member(node: nodes.Node, root: str) -> str | None:
    """``name`` when ``node`` is ``root.name`` (or ``root['name']``)."""
    member = _member(node)
    if member is None:
        return None
    base, name = member
    return name if isinstance(base, nodes.Name) and base.name == root else None


def _members(tree: nodes.Node) -> Iterator[nodes.Getattr | nodes.Getitem]:
    """Every attribute or item access in ``tree``, the root included, except method calls.

    ``inputs.get('x')`` and ``steps.items()`` call a mapping's methods: they are
    not references to an input named ``get`` or a step named ``items``.
    """
    called = {id(call.node) for call in tree.find_all(nodes.Call)}
    for node in (tree, *tree.find_all((nodes.Getattr, nodes.Getitem))):
        if isinstance(node, nodes.Getattr | nodes.Getitem) and id(node) not in called:
            yield node


def references(tree: nodes.Node) -> Iterator[Reference]:
    """Every ``steps.<id>``, ``steps.<id>.fields.<name>`` and ``inputs.<name>`` read."""
    shadowed = _shadowed(tree)
    for node in _members(tree):
        lineno = node.lineno
        if "inputs" not in shadowed and (name := _root_member(node, "inputs")) is not None:
            yield Reference("input", name, None, lineno, f"inputs.{name}")
        if "steps" in shadowed:
            continue
        if (step := _root_member(node, "steps")) is not None:
            yield Reference("step", step, None, lineno, f"steps.{step}")
            continue
        member = _member(node)
        if member is None:
            continue
        base, field = member
        fields = _member(base)
        if fields is not None and fields[1] == "fields":
            step = _root_member(fields[0], "steps")
            if step is not None:
                yield Reference("field", step, field, lineno, f"fields.{field}")


_EVALUATED = (nodes.Filter, nodes.Test, nodes.Call, nodes.Mul, nodes.Pow, nodes.Add, nodes.Mod)


def constant_value(expression: nodes.Expr) -> tuple[bool, object]:
    """``(True, value)`` when an expression is a constant (``1 > 2``), else ``(False, None)``.

    Only comparisons, logic and literals are folded: lint never runs a filter, a
    test, a call or an arithmetic operator of a user's expression, whose cost
    (``'x'|center(10**9)``) would be the linter's.
    """
    if isinstance(expression, _EVALUATED) or any(expression.find_all(_EVALUATED)):
        return False, None
    try:
        return True, expression.as_const(nodes.EvalContext(ENVIRONMENT))
    except Exception:  # nodes.Impossible, or an error folding it: not a usable constant
        return False, None


def _simple_references(source: str) -> list[Reference] | None:
    """References of a template whose only markup is ``{{ dotted.name }}``, else None.

    Most prompts are text with a few ``{{ steps.x.output }}``; for them the
    answer is read off with one regular expression instead of Jinja's lexer and
    parser (about 40x faster). Anything else (statements, comments, filters,
    whitespace control, subscripts, keywords, a lone CR) goes to Jinja. A
    hypothesis test checks that both routes agree on this subset.
    """
    if "{%" in source or "{#" in source or "\r" in source:
        return None
    matches = list(_SIMPLE_OUTPUT.finditer(source))
    starts = []
    position = source.find("{{")
    while position >= 0:
        starts.append(position)
        position = source.find("{{", position + 2)
    if starts != [match.start() for match in matches]:
        return None
    found: list[Reference] = []
    for match in matches:
        parts = match.group(1).split(".")
        if _KEYWORDS.intersection(parts):
            return None
        lineno = source.count("\n", 0, match.start()) + 1
        root, rest = parts[0], parts[1:]
        if root == "inputs" and rest:
            found.append(Reference("input", rest[0], None, lineno, f"inputs.{rest[0]}"))
        elif root == "steps" and rest:
            found.append(Reference("step", rest[0], None, lineno, f"steps.{rest[0]}"))
            if len(rest) >= 3 and rest[1] == "fields":
                found.append(Reference("field", rest[0], rest[2], lineno, f"fields.{rest[2]}"))
    return found


def template_references(source: str) -> list[Reference]:
    """What a template reads; raises ``TemplateSyntaxError`` when it does not parse."""
    if not is_template(source):
        return []
    simple = _simple_references(source)
    if simple is not None:
        return simple
    return list(references(parse_template(source)))


def step_reads(source: str, *, expression: bool = False) -> frozenset[str] | None:
    """The step ids a template reads, or None when it reads ``steps`` dynamically.

    ``steps[name]``, ``steps.items()`` or ``for s in steps`` cannot be known
    ahead of time; the runtime then provides every settled ancestor.
    """
    if not expression and not is_template(source):
        return frozenset()
    if not expression and (simple := _simple_references(source)) is not None:
        return frozenset(r.name for r in simple if r.kind == "step")
    tree = parse_expression(source) if expression else parse_template(source)
    found = [r for r in references(tree) if r.kind == "step"]
    loads = sum(
        1 for name in tree.find_all(nodes.Name) if name.name == "steps" and name.ctx == "load"
    )
    if loads > len(found) and "steps" not in _shadowed(tree):
        return None
    return frozenset(r.name for r in found)
