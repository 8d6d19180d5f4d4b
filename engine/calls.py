"""Resolving a code step's ``call`` to a function, safely.

``module:function`` is looked up inside the code roots only, and where the
module's file lies is checked before anything is imported: ``os:system``,
``builtins:eval``, dunder names or a look-alike package outside the roots are
refused without importing them. A name without a colon is an entry point of
the ``flowrunner.code_steps`` group, which installed packages provide.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENTRY_POINT_GROUP = "flowrunner.code_steps"


class CallError(Exception):
    """A ``call`` that cannot be resolved, with the reason."""


class NotInRoots(CallError):
    """The module of a ``call`` is not inside any code root."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where a ``module:function`` call lives: a module file under a code root."""

    module: str
    function: str
    origin: Path
    root: Path


def _check_names(module: str, function: str) -> None:
    for part in (*module.split("."), function):
        if part.startswith("__"):
            raise CallError(f"dunder name '{part}' is not allowed in a call")


def _within(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def locate(call: str, roots: Sequence[Path]) -> Location:
    """Find the module file of ``module:function`` under one of ``roots``, importing nothing."""
    module, _, function = call.partition(":")
    _check_names(module, function)
    for root in roots:
        origin = _find_module(module, root)
        if origin is not None:
            return Location(module, function, origin, root)
    raise NotInRoots(f"module '{module}' is not found in the code roots")


def _find_module(module: str, root: Path) -> Path | None:
    """The file of ``module`` when it and every parent package lie inside ``root``."""
    search: list[str] = [str(root)]
    parts = module.split(".")
    spec = None
    for depth in range(1, len(parts) + 1):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth]), search)
        if spec is None:
            return None
        locations = list(spec.submodule_search_locations or [])
        if spec.origin is not None and not _within(Path(spec.origin), root):
            return None
        if any(not _within(Path(location), root) for location in locations):
            return None
        search = locations
    if spec is None or spec.origin is None:
        return None  # a namespace package has no function to call
    return Path(spec.origin)


@contextmanager
def _on_path(root: Path) -> Iterator[None]:
    entry = str(root)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _import(location: Location) -> Any:
    with _on_path(location.root):
        try:
            module = importlib.import_module(location.module)
        except Exception as exc:  # the user's module failed to import: report why
            raise CallError(
                f"importing '{location.module}' failed: {type(exc).__name__}: {exc}"
            ) from exc
    loaded = getattr(module, "__file__", None)
    if loaded is None or Path(loaded).resolve() != location.origin.resolve():
        raise CallError(
            f"module '{location.module}' is already imported from {loaded or 'elsewhere'}, "
            f"not from {location.origin}"
        )
    return module


def _entry_point(name: str) -> Callable[..., Any]:
    matches = [
        ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name
    ]
    if not matches:
        raise CallError(
            f"'{name}' is not module:function and no entry point '{name}' is in the group "
            f"{ENTRY_POINT_GROUP}"
        )
    try:
        function = matches[0].load()
    except Exception as exc:  # an installed package failed to load: report why
        raise CallError(f"loading entry point '{name}' failed: {exc}") from exc
    if not callable(function):
        raise CallError(f"entry point '{name}' is not callable")
    return function  # type: ignore[no-any-return]


def resolve(call: str, roots: Sequence[Path]) -> Callable[..., Any]:
    """The function a ``call`` names, or :class:`CallError`."""
    if ":" not in call:
        return _entry_point(call)
    location = locate(call, roots)
    module = _import(location)
    function = getattr(module, location.function, None)
    if function is None:
        raise CallError(f"module '{location.module}' has no function '{location.function}'")
    if not callable(function):
        raise CallError(f"'{call}' is not callable")
    return function  # type: ignore[no-any-return]


def signature_problem(function: Callable[..., Any], params: Iterable[str]) -> str | None:
    """Why ``function(ctx, **params)`` cannot be called, or None when it can."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None  # builtins without a signature cannot be checked ahead of time
    given = list(params)
    parameters = list(signature.parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return "it takes no positional parameter for ctx"
    if positional and positional[0].name in given:
        return f"its first parameter '{positional[0].name}' receives ctx, not the `with` value"
    problems = []
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        names = {p.name for p in parameters[1:] if p.kind is not p.POSITIONAL_ONLY}
        unexpected = [key for key in given if key not in names]
        if unexpected:
            problems.append("unexpected `with` keys: " + ", ".join(map(repr, unexpected)))
    try:
        signature.bind(None, **dict.fromkeys(given))
    except TypeError as exc:
        if not problems or "unexpected keyword" not in str(exc):
            problems.append(str(exc))
    return "; ".join(problems) or None
