"""Rendering at run time: the sandboxed environment, the template context, a size cap.

Templates come from the run's snapshot only and are compiled once per worker.
Step outputs, inputs and approval payloads enter as data: a step output of
``{{ 7*7 }}`` is inserted as those characters and never rendered again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jinja2 import Template

from engine.core.plan import StepStatus
from engine.errors import FlowrunnerError
from engine.sandbox import ENVIRONMENT, Limits, SliceSpent, TemplateLimitError, limited
from engine.store.base import StepRecord

T = TypeVar("T")


class RenderError(FlowrunnerError):
    """A template failed at run time: undefined name, sandbox violation, size cap."""


@dataclass(frozen=True, slots=True)
class StepView:
    """What a template sees of a settled step: ``steps.<id>.output`` and friends."""

    status: str
    output: str
    fields: Mapping[str, str]
    data: Any
    skipped: bool

    @classmethod
    def of(cls, record: StepRecord) -> StepView:
        settled_empty = record.status in (StepStatus.SKIPPED, StepStatus.EXCLUDED)
        return cls(
            status=str(record.status),
            output="" if settled_empty else (record.output or ""),
            fields={} if settled_empty else record.fields,
            data=None if settled_empty else record.data,
            skipped=settled_empty,
        )


@dataclass(frozen=True, slots=True)
class RunView:
    id: str
    flow: str
    model: str


def context(
    inputs: Mapping[str, Any], band: str | None, run: RunView, steps: Mapping[str, Any]
) -> dict[str, Any]:
    """The names every template sees."""
    return {"inputs": inputs, "band": band, "run": run, "steps": steps}


@dataclass
class Renderer:
    """Compiles each template once and renders it within the sandbox's bounds.

    ``max_bytes`` caps the rendered text and each value a template builds;
    ``timeout`` the seconds one render (a prompt, a `with` mapping, a `when`)
    may take. :meth:`run` renders on the event loop for up to ``inline`` seconds
    and, when that is not enough, again in a thread, so that a slow template
    never holds up the worker's other steps, its heartbeats or ``serve``.
    """

    max_bytes: int = 1_000_000
    timeout: float = 2.0
    inline: float = 0.02
    _templates: dict[str, Template] = field(default_factory=dict)
    _expressions: dict[str, Any] = field(default_factory=dict)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)``, one of this renderer's, within its bounds, off the loop if slow."""
        try:
            with self._limits(self.inline, inline=True):
                return function(*args)
        except SliceSpent:
            pass
        return await asyncio.to_thread(self.run_sync, function, *args)

    def run_sync(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` within its bounds, on this thread."""
        with self._limits(self.timeout):
            return function(*args)

    def _limits(self, seconds: float, *, inline: bool = False) -> ContextManager[Limits]:
        now = time.monotonic()
        return limited(
            Limits(
                clock=time.monotonic,
                timeout=self.timeout,
                deadline=now + seconds,
                inline=inline,
                max_size=self.max_bytes,
                max_built=32 * self.max_bytes,
            )
        )

    def render(self, source: str, names: Mapping[str, Any], what: str) -> str:
        try:
            template = self._templates.get(source)
            if template is None:
                template = self._templates[source] = ENVIRONMENT.from_string(source)
            size, parts = 0, []
            for part in template.generate(**names):
                size += len(part.encode("utf-8"))
                if size > self.max_bytes:
                    raise RenderError(f"{what}: rendered text exceeds {self.max_bytes} bytes")
                parts.append(part)
            return "".join(parts)
        except Exception as exc:
            raise _error(what, exc) from exc

    def test(self, expression: str, names: Mapping[str, Any], what: str) -> bool:
        """The truth of an expression (`when`); an undefined result is an error too."""
        try:
            compiled = self._expressions.get(expression)
            if compiled is None:
                compiled = self._expressions[expression] = ENVIRONMENT.compile_expression(
                    expression, undefined_to_none=False
                )
            return bool(compiled(**names))
        except Exception as exc:
            raise _error(what, exc) from exc

    def render_value(self, value: Any, names: Mapping[str, Any], what: str) -> Any:
        """A `with` value: every string inside it rendered, other values as they are."""
        if isinstance(value, str):
            return self.render(value, names, what)
        if isinstance(value, dict):
            return {k: self.render_value(v, names, f"{what}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.render_value(v, names, f"{what}[{i}]") for i, v in enumerate(value)]
        return value


def _error(what: str, exc: Exception) -> RenderError:
    """A render's failure as a step error: a bound's own words, else the error's type and text.

    Any exception counts (a filter or test raising on the data is reported, never a crash).
    """
    if isinstance(exc, RenderError):
        return exc
    if isinstance(exc, TemplateLimitError):
        return RenderError(f"{what}: {exc}")
    return RenderError(f"{what}: {type(exc).__name__}: {exc}")
