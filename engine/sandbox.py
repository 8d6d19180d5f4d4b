"""The sandbox every flow template runs in: Jinja's immutable sandbox, bounded.

A template is untrusted input that runs inside a shared worker or ``serve``, so
whatever it can make Jinja do is bounded, checked before anything is built:

- **size**: no operation a template can reach (``*``, ``+``, ``%``, ``~``,
  ``**``, the padding, joining, replacing and formatting filters and ``str``
  methods, captured blocks and macros, turning a value into text) builds a
  value of more than ``max_size`` characters or items;
- **total**: one render builds at most ``max_built`` characters in all, so
  that many values each under the size cap (a macro recursing with a fresh
  megabyte per call) cannot add up to gigabytes;
- **time**: with :func:`limited` in effect, every loop iteration, call,
  filter and intercepted operator looks at the deadline and stops the render
  with :class:`RenderTimeout` past it. The clock is the caller's (this module
  reads none), so lint, which evaluates no filter, call or loop, needs none.

Jinja offers hooks for operators, calls and ``str.format``; loops and ``~``
have none, so each compiled template's tree is rewritten first: a loop's
iterable is wrapped in :func:`ticking` and ``a ~ b`` becomes :func:`joined`.
This is our own code rather than a library because no maintained library
bounds Jinja's sandbox (jinja2's ``MAX_RANGE`` covers ``range`` only).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import wraps
from string import Formatter
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

MAX_SIZE = 1_000_000
"""Largest string or list one operation may build (characters or items)."""
MAX_BUILT = 32_000_000
"""Characters one render may build in all."""
MAX_INT_BITS = 64_000
"""Largest integer an operator may build (about 19,000 digits)."""


class TemplateLimitError(SecurityError):
    """A template asked for more than the sandbox allows."""


class RenderTimeout(TemplateLimitError):
    """A render ran past its deadline."""


class SliceSpent(BaseException):
    """The inline slice of a render ran out: render again off the event loop.

    A BaseException so that no ``except Exception`` on the way swallows it.
    """


@dataclasses.dataclass(slots=True)
class Limits:
    """The bounds of the renders made under :func:`limited`."""

    clock: Callable[[], float] | None = None
    timeout: float = 0.0
    deadline: float = float("inf")
    inline: bool = False
    """Past the deadline raise :class:`SliceSpent`, not :class:`RenderTimeout`."""
    max_size: int = MAX_SIZE
    max_built: int = MAX_BUILT
    built: int = 0


_DEFAULT = Limits()
_LIMITS: ContextVar[Limits] = ContextVar("flowrunner_template_limits", default=_DEFAULT)


@contextmanager
def limited(limits: Limits) -> Iterator[Limits]:
    """Renders in this block are bounded by ``limits`` (per thread or task)."""
    token = _LIMITS.set(limits)
    try:
        yield limits
    finally:
        _LIMITS.reset(token)


def tick() -> None:
    """Stop the render if its deadline has passed."""
    limits = _LIMITS.get()
    if limits.clock is not None and limits.clock() > limits.deadline:
        if limits.inline:
            raise SliceSpent
        raise RenderTimeout(f"template rendering took longer than {limits.timeout:g} s")


def charge(size: int, what: str) -> None:
    """Refuse to build ``size`` characters past the bounds; count them otherwise."""
    limits = _LIMITS.get()
    if size > limits.max_size:
        raise TemplateLimitError(f"{what} would build {size:,} characters or items, "
                                 f"more than the {limits.max_size:,} allowed")  # fmt: skip
    if limits is _DEFAULT:  # outside limited(): each operation bounded, no total kept
        return
    limits.built += size
    if limits.built > limits.max_built:
        raise TemplateLimitError(
            f"the template built more than {limits.max_built:,} characters in all"
        )


def weight(value: Any, limit: int | None = None) -> int:
    """About how many characters ``value`` becomes as text; stops counting past ``limit``."""
    limit = _LIMITS.get().max_size if limit is None else limit
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes | bytearray):
            total += len(item)
        elif isinstance(item, bool | float) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, Namespace):
            stack.append(item._Namespace__attrs)
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            if total <= limit:
                stack.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            total += 16
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        else:
            total += 16
    return total


def _sized(value: Any, what: str) -> None:
    """Refuse a value whose text would be larger than the size cap (nothing is charged)."""
    size = weight(value)
    if size > _LIMITS.get().max_size:
        charge(size, what)


# Operators -------------------------------------------------------------------------------

_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def percent_size(form: str, args: Any) -> int:
    """An upper bound of ``form % args``: its text, each width and precision, the values."""
    size = len(form) + weight(args)
    for match in _PERCENT.finditer(form):
        for number in match.groups():
            if number == "*":
                raise TemplateLimitError("'*' widths in a % format are not allowed")
            size += int(number or 0)
    return size


def format_size(form: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """An upper bound of ``form.format(*args, **kwargs)``."""
    size = len(form) + weight(args) + weight(dict(kwargs))
    for _, field, spec, _ in Formatter().parse(form):
        if field is None or not spec:
            continue
        if "{" in spec:
            raise TemplateLimitError("nested fields in a format spec are not allowed")
        size += sum(int(number) for number in re.findall(r"\d+", spec))
    return size


def _product(left: Any, right: Any) -> int | None:
    """The size ``left * right`` builds, or None when it builds no sequence or integer."""
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(count, int):
            return weight(sequence) * max(count, 0)
    if isinstance(left, int) and isinstance(right, int):
        return (left.bit_length() + right.bit_length()) // 3
    return None


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        size = _product(left, right)
        if size is not None:
            charge(size, "'*'")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        if abs(left) > 1 and left.bit_length() * right > MAX_INT_BITS:
            raise TemplateLimitError(
                f"'**' would build an integer of more than {MAX_INT_BITS} bits"
            )
    elif operator == "+" and isinstance(left, str | list | tuple):
        charge(weight(left) + weight(right), "'+'")
    elif operator == "%" and isinstance(left, str):
        charge(percent_size(left, right), "'%'")


# str and int methods -----------------------------------------------------------------------


def _width(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    width = args[0] if args else kwargs.get("width", 0)
    return len(target) + (width if isinstance(width, int) else 0)


def _join_size(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    items = args[0] if args else ()
    count = len(items) if hasattr(items, "__len__") else MAX_SIZE + 1
    return weight(items) + len(target) * count


def _replace_size(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    old, new = [*args, kwargs.get("old", ""), kwargs.get("new", "")][:2]
    if not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return len(target)
    count = len(target) + 1 if not old else target.count(old)
    limit = args[2] if len(args) > 2 else kwargs.get("count", -1)
    if isinstance(limit, int) and limit >= 0:
        count = min(count, limit)
    return int(len(target) + count * max(len(new) - len(old), 0))


def _tabs_size(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    size = args[0] if args else kwargs.get("tabsize", 8)
    return int(len(target) + target.count("\t") * (size if isinstance(size, int) else 0))


def _translate_size(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    table = args[0] if args else {}
    longest = max((weight(v) for v in table.values()), default=1) if isinstance(table, dict) else 1
    return len(target) * max(longest, 1)


def _bytes_size(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    length = args[0] if args else kwargs.get("length", 1)
    return length if isinstance(length, int) else 0


_METHOD_SIZES: dict[str, Callable[[Any, tuple[Any, ...], dict[str, Any]], int]] = {
    "center": _width,
    "ljust": _width,
    "rjust": _width,
    "zfill": _width,
    "expandtabs": _tabs_size,
    "join": _join_size,
    "replace": _replace_size,
    "translate": _translate_size,
    "to_bytes": _bytes_size,
}


# Filters -----------------------------------------------------------------------------------


def _lines(text: Any) -> int:
    return str(text).count("\n") + 1


def _indent_size(a: dict[str, Any]) -> int:
    width = a["width"]
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    return weight(a["value"]) + _lines(a["value"]) * max(pad, 0)


def _wordwrap_size(a: dict[str, Any]) -> int:
    text, width = str(a["value"]), a["width"]
    breaks = len(text) // max(width if isinstance(width, int) else 1, 1) + _lines(text)
    return len(text) + breaks * len(a["wrapstring"] or "\n")


def _tojson_size(a: dict[str, Any]) -> int:
    indent = a["indent"] if isinstance(a["indent"], int) else 0
    if indent > 64:
        raise TemplateLimitError("tojson's indent is at most 64")
    return weight(a["value"]) * (2 + indent)


def _join_filter_size(a: dict[str, Any]) -> int:
    return weight(a["value"]) + len(str(a["d"])) * len(a["value"])


def _sum_size(a: dict[str, Any]) -> int:
    return 0 if isinstance(a["start"], int | float) else weight(a["value"]) + weight(a["start"])


_FILTER_SIZES: dict[str, Callable[[dict[str, Any]], int]] = {
    "center": lambda a: weight(a["value"]) + max(a["width"], 0),
    "indent": _indent_size,
    "wordwrap": _wordwrap_size,
    "replace": lambda a: _replace_size(str(a["value"]), (a["old"], a["new"], a["count"] or -1), {}),
    "format": lambda a: percent_size(str(a["value"]), a["args"] or a["kwargs"]),
    "join": _join_filter_size,
    "batch": lambda a: a["linecount"],
    "slice": lambda a: a["slices"],
    "tojson": _tojson_size,
    "pprint": lambda a: 3 * weight(a["value"]),
    "string": lambda a: weight(a["value"]),
    "list": lambda a: weight(a["value"]),
    "sum": _sum_size,
    "xmlattr": lambda a: 6 * weight(a["value"]),
}
_MATERIALISED = frozenset({"join", "sum", "list", "string", "pprint", "tojson"})


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with a deadline check, and for a sizing filter a check of what it builds."""
    size = _FILTER_SIZES.get(name)
    inner = inspect.unwrap(function)
    signature = inspect.signature(inner) if size else None
    # Jinja passes the context or environment first; async variants take one more.
    extra = int(hasattr(function, "jinja_pass_arg") and not hasattr(inner, "jinja_pass_arg"))
    subject = list(signature.parameters)[int(hasattr(inner, "jinja_pass_arg"))] if signature else ""

    @wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        tick()
        if size is None or signature is None:
            return function(*args, **kwargs)
        bound = signature.bind(*args[extra:], **kwargs)
        bound.apply_defaults()
        value = bound.arguments[subject]
        if name in _MATERIALISED and not isinstance(value, str | Mapping | list | tuple):
            value = bound.arguments[subject] = _taken(value)
        charge(size({**bound.arguments, "value": value}), f"the {name} filter")
        return function(*args[:extra], *bound.args, **bound.kwargs)

    return bounded


def _taken(values: Any) -> Any:
    """The items of an iterable as a list, refused past the size cap."""
    if not isinstance(values, Iterable):
        return values
    taken = []
    for item in values:
        taken.append(item)
        if len(taken) > _LIMITS.get().max_size:
            charge(len(taken), "a list")
    return taken


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:
    from jinja2.utils import generate_lorem_ipsum

    if not all(isinstance(v, int) and v <= 1000 for v in (n, min, max)):
        raise TemplateLimitError("lipsum takes numbers up to 1000")
    return generate_lorem_ipsum(n, html, min, max)


# Loops and ~ -----------------------------------------------------------------------------


def ticking(iterable: Any) -> Iterator[Any]:
    """A loop's items, with a deadline check before each (every ``for`` is rewritten to this)."""
    for item in iterable:
        tick()
        yield item


def joined(*values: Any) -> str:
    """``a ~ b ~ c``, with its size checked before it is built."""
    charge(sum(weight(value) for value in values), "'~'")
    return "".join(str(value) for value in values)


class _Bounding(NodeTransformer):
    """Rewrites loops and ``~`` so that they go through :func:`ticking` and :func:`joined`."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _call("ticking", [node.iter], node.lineno)  # type: ignore[list-item]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _call("joined", node.nodes, node.lineno)


def _call(function: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    name = nodes.ImportedName(f"{__name__}.{function}", lineno=lineno)
    return nodes.Call(name, args, [], None, None, lineno=lineno)


# The environment ---------------------------------------------------------------------------


class FlowEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with the bounds above."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.globals["lipsum"] = _lipsum

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> str:
        return super()._generate(_Bounding().visit(source), *args, **kwargs)

    def concat(self, parts: Iterable[str]) -> str:
        """Captured output (``{% set %}`` blocks, macros, ``{% filter %}``), size-checked."""
        parts = list(parts)
        charge(sum(len(part) for part in parts), "captured output")
        return "".join(parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        tick()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        tick()
        size = _METHOD_SIZES.get(getattr(__obj, "__name__", ""))
        receiver = getattr(__obj, "__self__", None)
        if size is not None and isinstance(receiver, str | bytes | bytearray | int):
            charge(size(receiver, args, kwargs), f"{type(receiver).__name__}.{__obj.__name__}")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        form, by_map = value.__self__, value.__name__ == "format_map"

        def format_bounded(*args: Any, **kwargs: Any) -> str:
            tick()
            names = args[0] if by_map and args and isinstance(args[0], Mapping) else kwargs
            charge(format_size(form, () if by_map else args, names), "str.format")
            assert wrapped is not None
            return wrapped(*args, **kwargs)

        return format_bounded


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}``: refused before it becomes text larger than the size cap."""
    if not isinstance(value, str):
        _sized(value, "the value")
    return value


ENVIRONMENT = FlowEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)
