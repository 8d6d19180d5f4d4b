"""Rendering at run time: the sandboxed environment, the template context, a size cap.

Templates come from the run's snapshot only and are compiled once per worker.
Step outputs, inputs and approval payloads enter as data: a step output of
``{{ 7*7 }}`` is inserted as those characters and never rendered again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Template, TemplateError
from jinja2.exceptions import SecurityError, UndefinedError

from engine.core.plan import StepStatus
from engine.errors import FlowrunnerError
from engine.store.base import StepRecord
from engine.templates import ENVIRONMENT


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
    """Compiles each template once and renders it with a cap on the output's size."""

    max_bytes: int = 1_000_000
    _templates: dict[str, Template] = field(default_factory=dict)
    _expressions: dict[str, Any] = field(default_factory=dict)

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
        except RenderError:
            raise
        except (SecurityError, UndefinedError, TemplateError) as exc:
            raise RenderError(f"{what}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # a filter or test raised on the data: report, never crash
            raise RenderError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def test(self, expression: str, names: Mapping[str, Any], what: str) -> bool:
        """The truth of an expression (`when`); an undefined result is an error too."""
        try:
            compiled = self._expressions.get(expression)
            if compiled is None:
                compiled = self._expressions[expression] = ENVIRONMENT.compile_expression(
                    expression, undefined_to_none=False
                )
            return bool(compiled(**names))
        except (SecurityError, UndefinedError, TemplateError) as exc:
            raise RenderError(f"{what}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # as above
            raise RenderError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def render_value(self, value: Any, names: Mapping[str, Any], what: str) -> Any:
        """A `with` value: every string inside it rendered, other values as they are."""
        if isinstance(value, str):
            return self.render(value, names, what)
        if isinstance(value, dict):
            return {k: self.render_value(v, names, f"{what}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.render_value(v, names, f"{what}[{i}]") for i, v in enumerate(value)]
        return value
