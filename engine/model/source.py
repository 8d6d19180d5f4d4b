"""Load one YAML document into plain values plus a JSON-Pointer-to-position index.

The document is read with libyaml's event parser (``ruamel.yaml.clib``) and the
values are built in one pass over the events, with an explicit stack instead of
recursion. Every mapping key and every value keeps its 1-based line and column,
so each later check can point at the exact node it complains about.

Hostile documents are refused with a positioned :class:`YamlProblem`, in time
and memory bounded by :class:`Limits`: oversized files, deep nesting, alias
expansion beyond a budget (a billion-laughs document never expands), merge
keys, explicit tags, duplicate keys and invalid UTF-8.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import ruamel.yaml
from ruamel.yaml import events as ev
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from engine.model.diagnostics import pointer_join


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a flow document may cost to load."""

    max_bytes: int = 8 * 1024 * 1024
    max_depth: int = 64
    max_aliases: int = 64
    max_nodes: int = 1_000_000


class Position(NamedTuple):
    """A 1-based line and column; ``style`` is the YAML scalar style ('' when plain)."""

    line: int
    column: int
    style: str = ""


@dataclass(slots=True)
class SourceMap:
    """Where each node of a loaded document stands in its file.

    ``keys`` holds the position of the key naming each mapping member, ``values``
    the position of every value; both are keyed by JSON Pointer.
    """

    text: str
    keys: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    values: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def value_at(self, pointer: str) -> Position:
        """The position of the value at ``pointer``, or of its nearest located ancestor."""
        return Position(*self._nearest(self.values, pointer))

    def key_at(self, pointer: str) -> Position:
        """The position of the key naming ``pointer``, or of the nearest located ancestor."""
        if pointer in self.keys:
            return Position(*self.keys[pointer])
        return self.value_at(pointer)

    def line_text(self, line: int) -> str:
        """The text of a 1-based line of the document ('' past its end)."""
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""

    @staticmethod
    def _nearest(index: dict[str, tuple[int, int, str]], pointer: str) -> tuple[int, int, str]:
        while pointer:
            if pointer in index:
                return index[pointer]
            pointer = pointer.rpartition("/")[0]
        return index.get("", (1, 1, ""))


class YamlProblem(Exception):
    """A document that cannot be loaded; ``rule`` is FR001 (syntax) or FR014 (duplicate key)."""

    def __init__(self, message: str, line: int, column: int, rule: str = "FR001") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.rule = rule


_INT = re.compile(r"[-+]?[0-9]+")
_OCT = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


_SPECIAL_START = frozenset("0123456789+-.~tTfFnN")


def resolve_plain(text: str) -> Any:
    """The value of a plain scalar under the YAML 1.2 core schema."""
    if text and text[0] not in _SPECIAL_START:
        return text
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if _INT.fullmatch(text):
        return int(text)
    if _OCT.fullmatch(text):
        return int(text[2:], 8)
    if _HEX.fullmatch(text):
        return int(text[2:], 16)
    if _FLOAT.fullmatch(text):
        return float(text)
    if _INF.fullmatch(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.fullmatch(text):
        return math.nan
    return text


@dataclass(slots=True)
class _Frame:
    """A mapping or sequence being built."""

    container: dict[str, Any] | list[Any]
    pointer: str
    anchor: str | None
    nodes_before: int
    key: str | None = None


def _child(pointer: str, token: str) -> str:
    if "/" in token or "~" in token:
        return pointer_join(pointer, token)
    return f"{pointer}/{token}"


class _Builder:
    """Turns the event stream of one document into values and a :class:`SourceMap`.

    This loop is the hot path of linting a large flow: it dispatches on the exact
    event type and stores positions as plain tuples.
    """

    def __init__(self, text: str, limits: Limits) -> None:
        self.limits = limits
        self.map = SourceMap(text)
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.aliases = 0
        self.nodes = 0
        self.root: Any = None
        self.documents = 0

    def build(self, parser: Any) -> Any:
        handlers = {
            ev.ScalarEvent: self._scalar,
            ev.MappingStartEvent: self._open,
            ev.SequenceStartEvent: self._open,
            ev.MappingEndEvent: self._close,
            ev.SequenceEndEvent: self._close,
            ev.AliasEvent: self._alias,
            ev.DocumentStartEvent: self._document,
        }
        get_event = parser.get_event
        while True:
            event = get_event()
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
            elif type(event) is ev.StreamEndEvent:
                return self.root

    def _document(self, event: Any) -> None:
        self.documents += 1
        if self.documents > 1:
            raise YamlProblem("a flow file holds exactly one YAML document", *_lc(event.start_mark))

    def _scalar(self, event: Any) -> None:
        mark = event.start_mark
        if event.tag is not None:
            raise _tag_problem(event)
        self.nodes += 1
        stack = self.stack
        parent = stack[-1] if stack else None
        style = event.style or ""
        if parent is not None and parent.key is None and type(parent.container) is dict:
            self._key(parent, event.value, style, mark)
            return
        value = resolve_plain(event.value) if not style and event.implicit[0] else event.value
        self._attach(parent, value, (mark.line + 1, mark.column + 1, style))
        if event.anchor:
            self.anchors[event.anchor] = (value, 1)

    def _open(self, event: Any) -> None:
        mark = event.start_mark
        if event.tag is not None:
            raise _tag_problem(event)
        self._count(1, mark)
        parent = self.stack[-1] if self.stack else None
        if parent is not None and parent.key is None and type(parent.container) is dict:
            raise YamlProblem("mapping keys must be plain strings", *_lc(mark))
        if len(self.stack) >= self.limits.max_depth:
            raise YamlProblem(f"nesting deeper than {self.limits.max_depth} levels", *_lc(mark))
        container: dict[str, Any] | list[Any] = {} if type(event) is ev.MappingStartEvent else []
        pointer = self._attach(parent, container, (mark.line + 1, mark.column + 1, ""))
        self.stack.append(_Frame(container, pointer, event.anchor, self.nodes))

    def _close(self, event: Any) -> None:
        frame = self.stack.pop()
        if frame.anchor:
            self.anchors[frame.anchor] = (frame.container, self.nodes - frame.nodes_before + 1)

    def _key(self, parent: _Frame, key: str, style: str, mark: Any) -> None:
        if key == "<<" and not style:
            raise YamlProblem("merge keys ('<<') are not supported", *_lc(mark))
        pointer = _child(parent.pointer, key)
        if key in parent.container:
            first = self.map.keys[pointer]
            raise YamlProblem(
                f"duplicate key '{key}' (first defined at line {first[0]})",
                *_lc(mark),
                rule="FR014",
            )
        parent.key = key
        self.map.keys[pointer] = (mark.line + 1, mark.column + 1, style)

    def _alias(self, event: Any) -> None:
        mark = event.start_mark
        parent = self.stack[-1] if self.stack else None
        if parent is not None and parent.key is None and type(parent.container) is dict:
            raise YamlProblem("mapping keys must be plain strings", *_lc(mark))
        self.aliases += 1
        if self.aliases > self.limits.max_aliases:
            raise YamlProblem(f"more than {self.limits.max_aliases} aliases", *_lc(mark))
        if event.anchor not in self.anchors:
            raise YamlProblem(f"unknown alias '*{event.anchor}'", *_lc(mark))
        value, size = self.anchors[event.anchor]
        self._count(size, mark)
        self._attach(parent, value, (mark.line + 1, mark.column + 1, ""))

    def _attach(self, parent: _Frame | None, value: Any, pos: tuple[int, int, str]) -> str:
        if parent is None:
            pointer = ""
            self.root = value
        elif parent.key is not None:
            pointer = _child(parent.pointer, parent.key)
            parent.container[parent.key] = value  # type: ignore[call-overload]
            parent.key = None
        else:
            container = parent.container
            assert isinstance(container, list)
            pointer = f"{parent.pointer}/{len(container)}"
            container.append(value)
        self.map.values[pointer] = pos
        return pointer

    def _count(self, nodes: int, mark: Any) -> None:
        self.nodes += nodes
        if self.nodes > self.limits.max_nodes:
            raise YamlProblem(
                f"the document expands to more than {self.limits.max_nodes} nodes", *_lc(mark)
            )


def _tag_problem(event: Any) -> YamlProblem:
    tag = str(event.tag).replace("tag:yaml.org,2002:", "!!")
    return YamlProblem(f"explicit tag '{tag}' is not allowed in a flow", *_lc(event.start_mark))


def _lc(mark: Any) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def read_document(path: Path, limits: Limits = Limits()) -> bytes:
    """The bytes of the file at ``path``, refusing one over ``limits.max_bytes`` before it
    is read whole: its size is looked at first, and no more than one byte past the limit
    is ever read (a file that grows meanwhile, a pipe). OSError when it cannot be read."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > limits.max_bytes:
            raise YamlProblem(_too_large(size, limits), 1, 1)
        data = file.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise YamlProblem(_too_large(None, limits), 1, 1)
    return data


def _too_large(size: int | None, limits: Limits) -> str:
    found = f"{size} bytes, " if size is not None else ""
    return f"file is {found}larger than the limit of {limits.max_bytes} bytes"


def decode(data: bytes, limits: Limits = Limits()) -> str:
    """UTF-8 text of a document, refusing oversized or undecodable input."""
    if len(data) > limits.max_bytes:
        raise YamlProblem(_too_large(len(data), limits), 1, 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        prefix = data[: exc.start].decode("utf-8", errors="replace")
        line, column = _line_col(prefix, len(prefix))
        raise YamlProblem(f"invalid UTF-8 (byte 0x{data[exc.start]:02x})", line, column) from exc
    return text.removeprefix("\ufeff")


def load_yaml(text: str, limits: Limits = Limits()) -> tuple[Any, SourceMap]:
    """Parse ``text`` into plain values and their positions, or raise :class:`YamlProblem`."""
    if len(text) > limits.max_bytes:
        raise YamlProblem(_too_large(None, limits), 1, 1)
    builder = _Builder(text, limits)
    try:
        root = builder.build(ruamel.yaml.CParser(text))  # type: ignore[attr-defined]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = _lc(mark) if mark is not None else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise YamlProblem(problem, line, column) from exc
    except YAMLError as exc:
        position = getattr(exc, "position", 0)
        line, column = _line_col(text, position if isinstance(position, int) else 0)
        raise YamlProblem(str(exc).splitlines()[0], line, column) from exc
    return root, builder.map
