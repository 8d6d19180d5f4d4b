"""Code steps of the shipped flows, plus the few helpers they share.

A code step is a plain function ``f(ctx, **params)`` (sync or async) named in a
flow as ``call: code_steps.<module>:<function>``. The engine passes the step's
``with`` mapping as keyword arguments; string values arrive already rendered by
Jinja, so a number or a boolean written as a template (``"{{ inputs.limit }}"``)
arrives as text. The ``as_*`` helpers below turn such values back into typed ones.

The :class:`Context` and :class:`StepResult` protocols describe what a step may
rely on; the engine's own context object satisfies them structurally.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = [
    "Context",
    "StepResult",
    "as_bool",
    "as_float",
    "as_int",
    "as_str_list",
    "flow_name",
    "parse_verdict",
    "settled_data",
]


class StepResult(Protocol):
    """One settled ancestor step, as a code step sees it in ``ctx.steps``."""

    @property
    def status(self) -> str:
        """``completed``, ``skipped``, ``excluded``, ..."""

    @property
    def output(self) -> str:
        """The step's text output ("" when skipped or excluded)."""

    @property
    def fields(self) -> Mapping[str, str]:
        """Values of the step's declared ``fields``."""

    @property
    def data(self) -> Any:
        """Parsed JSON output or a code step's returned value, else None."""

    @property
    def skipped(self) -> bool:
        """True when the step did not run."""


class Context(Protocol):
    """What the engine hands to a code step as ``ctx``."""

    @property
    def inputs(self) -> Mapping[str, Any]:
        """Launch inputs, defaults applied."""

    @property
    def band(self) -> str:
        """The run's band."""

    @property
    def steps(self) -> Mapping[str, StepResult]:
        """Settled ancestor steps by id."""

    @property
    def params(self) -> Mapping[str, Any]:
        """The rendered ``with`` mapping."""

    @property
    def run_id(self) -> str:
        """The run's id."""

    @property
    def flow(self) -> Any:
        """The flow (its name, or an object with a ``name``)."""

    def dispatch_sync(self, persona: str, prompt: str) -> str:
        """Run a read-only sub-agent and return its whole output."""

    async def dispatch(self, persona: str, prompt: str) -> str:
        """Async twin of :meth:`dispatch_sync`."""


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0", "", "none"})


def as_bool(value: object) -> bool:
    """Read a boolean that may have been rendered to text (``"True"``, ``"no"``, ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if value is None:
        return False
    text = str(value).strip().casefold()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def as_int(value: object, name: str) -> int:
    """Read an integer that may have been rendered to text; ``name`` labels errors."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def as_float(value: object, name: str) -> float:
    """Read a number that may have been rendered to text; ``name`` labels errors."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def as_str_list(value: object) -> list[str]:
    """Read a list of names given as a YAML list or a comma separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(item).strip() for item in value if str(item).strip()]
    raise ValueError(f"expected a list of names, got {value!r}")


def flow_name(ctx: Context) -> str:
    """The run's flow name, whether ``ctx.flow`` is a name or a flow object."""
    flow = ctx.flow
    if isinstance(flow, str):
        return flow
    name = getattr(flow, "name", None)
    return name if isinstance(name, str) and name else "flow"


def settled_data(ctx: Context, step_id: str) -> Any:
    """The ``data`` of an ancestor step that completed, else None."""
    step = ctx.steps.get(step_id)
    if step is None or step.skipped or step.status != "completed":
        return None
    return step.data


_VERDICT = re.compile(r"^\s*verdict:\s*\**\s*([a-z-]+)", re.IGNORECASE | re.MULTILINE)


def parse_verdict(text: str, allowed: frozenset[str], default: str) -> str:
    """The last ``verdict: <word>`` line of a sub-agent's reply, or ``default``.

    The last line wins because agents sometimes restate the instructions
    (``verdict: confirmed or refuted``) before answering.
    """
    words: list[str] = _VERDICT.findall(text)
    for match in reversed(words):
        word = match.casefold()
        if word in allowed:
            return word
    return default
