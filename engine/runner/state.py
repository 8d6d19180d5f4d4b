"""What a worker keeps about a run it executes: the compiled snapshot and settled results."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.core.plan import RunPlan
from engine.runner.render import RunView, StepView, context
from engine.runner.snapshot import CompiledFlow
from engine.store.base import RunRecord


@dataclass
class RunState:
    """One run as a worker sees it; ``views`` caches settled steps (they never change),
    added through :meth:`add_view`."""

    record: RunRecord
    compiled: CompiledFlow
    views: dict[str, StepView] = field(default_factory=dict)
    settled_sinks: int = 0

    def add_view(self, step_id: str, view: StepView) -> None:
        if step_id not in self.views:
            self.views[step_id] = view
            self.settled_sinks += not self.plan[step_id].dependents

    def ends_with(self, step_id: str) -> bool:
        """Whether settling this step settles the run's last step, as far as this worker
        has seen: it is the one sink (a step nothing needs) not seen settled. Every step
        has settled once every sink has (a sink settles after all it needs)."""
        plan = self.plan
        return (
            not plan[step_id].dependents
            and step_id not in self.views
            and self.settled_sinks == plan.sinks - 1
        )

    @property
    def plan(self) -> RunPlan:
        return self.compiled.plan(self.record.band)

    @property
    def run_view(self) -> RunView:
        return RunView(self.record.id, self.record.flow, self.record.model)

    def ancestors(self, step_id: str) -> list[str]:
        """Every step ``step_id`` transitively needs, in DAG order."""
        seen: set[str] = set()
        frontier = [step_id]
        while frontier:
            for need in self.plan[frontier.pop()].needs:
                if need not in seen:
                    seen.add(need)
                    frontier.append(need)
        return sorted(seen, key=lambda s: self.plan[s].position)

    def needed(self, step_id: str) -> list[str]:
        """The settled steps a step's templates read."""
        reads = self.compiled.reads[step_id]
        if reads is None:
            return self.ancestors(step_id)
        return sorted(reads)

    def names(self, steps: Mapping[str, Any]) -> dict[str, Any]:
        return context(self.record.inputs, self.record.band, self.run_view, steps)


class LazySteps(Mapping[str, StepView]):
    """``ctx.steps`` of a code step: every settled ancestor, loaded when first read.

    Reading one entry costs O(1) once cached; listing them all walks the ancestors.
    ``load`` fetches views missing from the cache (it may block: code steps run
    in a worker thread).
    """

    def __init__(self, state: RunState, step_id: str, load: Any) -> None:
        self._state = state
        self._step = step_id
        self._load = load

    def __getitem__(self, key: str) -> StepView:
        if not self._is_ancestor(key):
            raise KeyError(f"'{key}' is not a step that '{self._step}' needs (directly or not)")
        if key not in self._state.views:
            self._load([key])
        view = self._state.views.get(key)
        if view is None:
            raise KeyError(f"step '{key}' has not settled")
        return view

    def _is_ancestor(self, key: str) -> bool:
        if key not in self._state.plan.steps:
            return False
        return bool(self._state.compiled.ancestry.ancestors_among(self._step, [key]))

    def __iter__(self) -> Iterator[str]:
        ancestors = self._state.ancestors(self._step)
        missing = [step for step in ancestors if step not in self._state.views]
        if missing:
            self._load(missing)
        return iter(ancestors)

    def __len__(self) -> int:
        return len(self._state.ancestors(self._step))
