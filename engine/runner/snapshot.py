"""The flow as launched: stored with the run and the only thing the run ever reads.

Editing a flow's YAML, its prompt files or its personas never changes a run
already started, including after a crash and resume: everything a run
renders comes from its snapshot. (Code steps call the code as it is when they
run; code is not snapshotted.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from engine.config import Project
from engine.core.plan import RunPlan, make_plan
from engine.errors import FlowrunnerError, InvalidFlow
from engine.lint import CheckedFlow
from engine.model.documents import PERSONA_NAME, AgentStep, ApprovalStep, CodeStep, Flow, Step
from engine.model.graph import Ancestry, StepGraph
from engine.model.source import load_yaml
from engine.templates import step_reads

MAX_PERSONA_BYTES = 256 * 1024


@dataclass(frozen=True)
class Snapshot:
    """What is stored with a run: the YAML text, prompt templates, personas and order."""

    path: str
    source: str
    prompts: dict[str, str]
    personas: dict[str, str]
    order: tuple[str, ...]

    @cached_property
    def encoded(self) -> tuple[str, str]:
        """The JSON text stored with the run, and its hash (computed once: the API reuses a
        flow's snapshot for every launch until a file changes)."""
        text = json.dumps(
            {
                "path": self.path,
                "source": self.source,
                "prompts": self.prompts,
                "personas": self.personas,
                "order": list(self.order),
            },
            ensure_ascii=False,
            sort_keys=True,
        )
        return text, hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        data = json.loads(text)
        return cls(
            data["path"], data["source"], data["prompts"], data["personas"], tuple(data["order"])
        )

    @classmethod
    def take(cls, checked: CheckedFlow, project: Project) -> Snapshot:
        """Snapshot a validated flow with the text of every persona of the project.

        All of them, not only those the agent steps name: a code step may
        `ctx.dispatch` to any persona, and that must not change mid-run either.
        """
        folder = project.personas_dir
        personas = {}
        for path in sorted(folder.glob("*.md")):
            if re.fullmatch(PERSONA_NAME, path.stem) and project.inside_personas(path):
                with contextlib.suppress(_Unusable):  # no step names it: leave it out
                    personas[path.stem] = _read_persona(path, MAX_PERSONA_BYTES)
        for step in checked.flow.steps:  # lint checked these exist, whatever their size
            if isinstance(step, AgentStep) and step.persona and step.persona not in personas:
                try:
                    personas[step.persona] = _read_persona(folder / f"{step.persona}.md")
                except _Unusable as exc:
                    raise InvalidFlow(f"persona '{step.persona}' {exc}", []) from None
        return cls(str(checked.path), checked.source, checked.prompts, personas, checked.order)


class SnapshotError(FlowrunnerError):
    """A stored snapshot that no longer loads (should not happen: it passed lint at launch)."""


class _Unusable(Exception):
    """A persona file that cannot be read as text; the message says why."""


def _read_persona(path: Path, limit: int | None = None) -> str:
    """The text of a persona file, or :class:`_Unusable` (missing, a dangling or looping
    link, unreadable, not UTF-8, or larger than ``limit`` bytes)."""
    try:
        data = path.read_bytes() if limit is None else _read_at_most(path, limit)
        return data.decode("utf-8")
    except OSError as exc:
        raise _Unusable(f"cannot be read: {(exc.strerror or str(exc)).lower()}") from None
    except UnicodeDecodeError:
        raise _Unusable("is not UTF-8 text") from None


def _read_at_most(path: Path, limit: int) -> bytes:
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise _Unusable(f"is larger than {limit} bytes")
    return data


@dataclass
class CompiledFlow:
    """A snapshot turned back into the flow, its plan per band and what each step reads."""

    snapshot: Snapshot
    flow: Flow
    steps: dict[str, Step]
    _plans: dict[str | None, RunPlan] = field(default_factory=dict)

    @classmethod
    def load(cls, snapshot: Snapshot) -> CompiledFlow:
        data, _ = load_yaml(snapshot.source)
        try:
            flow = Flow.model_validate(data).with_defaults()
        except ValueError as exc:
            raise SnapshotError(f"the stored flow no longer validates: {exc}") from exc
        return cls(snapshot, flow, {step.id: step for step in flow.steps})

    def plan(self, band: str | None) -> RunPlan:
        if band not in self._plans:
            self._plans[band] = make_plan(self.flow, self.snapshot.order, band)
        return self._plans[band]

    @cached_property
    def ancestry(self) -> Ancestry:
        graph = StepGraph({step.id: step.needs for step in self.flow.steps})
        return graph.ancestry(self.snapshot.order)

    @cached_property
    def reads(self) -> dict[str, frozenset[str] | None]:
        """The steps each step's templates read (None: all its ancestors)."""
        return {step_id: self._reads(step) for step_id, step in self.steps.items()}

    def _reads(self, step: Step) -> frozenset[str] | None:
        sources: list[tuple[str, bool]] = []
        if isinstance(step.when, str):
            sources.append((step.when, True))
        if isinstance(step, AgentStep):
            sources.append((self.snapshot.prompts[step.id], False))
        elif isinstance(step, CodeStep):
            sources.extend((text, False) for text in _strings(step.with_))
        elif isinstance(step, ApprovalStep) and step.message:
            sources.append((step.message, False))
        found: set[str] = set()
        for text, expression in sources:
            reads = step_reads(text, expression=expression)
            if reads is None:
                return None
            found |= reads
        return frozenset(found)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []
