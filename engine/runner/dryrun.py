"""``run --dry-run``: every prompt, `with` value and gate message rendered in DAG order.

Nothing is stored and no agent or code is called. Earlier steps' results are
placeholders (``[output of steps.x]``), so a `when` that reads them may be
shown as skipped when the real run would not skip it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from engine.lint import CheckedFlow
from engine.model.documents import AgentStep, ApprovalStep, CodeStep
from engine.runner.outputs import compose
from engine.runner.render import Renderer, RenderError, RunView, StepView, context
from engine.runner.service import _band, check_values


class Placeholder:
    """A result a dry run cannot know: ``steps.x.data.y`` renders as ``[steps.x.data.y]``."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Placeholder:
        return Placeholder(f"{self._name}.{attribute}")

    def __getitem__(self, key: object) -> Placeholder:
        return Placeholder(f"{self._name}[{key!r}]")

    def __str__(self) -> str:
        return f"[{self._name}]"

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __bool__(self) -> bool:
        return True


def dry_run(checked: CheckedFlow, inputs: Mapping[str, Any], band: str | None, model: str) -> str:
    """The text ``run --dry-run`` prints."""
    flow = checked.flow
    values = check_values(flow.inputs, inputs, "input")
    chosen = _band(flow, band)
    renderer = Renderer()
    steps = {step.id: step for step in flow.steps}
    views: dict[str, StepView] = {}
    names = context(values, chosen, RunView("dry-run", flow.name, model), views)
    out = [f"# dry run of {flow.name} (band {chosen or 'none'}, model {model})"]
    for step_id in checked.order:
        step = steps[step_id]
        fields = step.fields if isinstance(step, AgentStep) else []
        views[step_id] = StepView(
            "completed",
            f"[output of steps.{step_id}]",
            {name: f"[{name} of steps.{step_id}]" for name in fields},
            Placeholder(f"steps.{step_id}.data"),
            False,
        )
        title = f"\n## {step_id} ({step.kind})"
        if chosen is not None and step.bands is not None and chosen not in step.bands:
            out.append(f"{title}: excluded from band {chosen}")
            continue
        try:
            if isinstance(step.when, str) and not renderer.run_sync(
                renderer.test, step.when, names, "when"
            ):
                out.append(f"{title}: skipped (`when` is false with placeholder results)")
                continue
            out.append(title)
            out.append(renderer.run_sync(_render, checked, step, renderer, names))
        except RenderError as exc:
            out.append(f"{title}: cannot render: {exc.message}")
    return "\n".join(out)


def _render(
    checked: CheckedFlow, step: AgentStep | CodeStep | ApprovalStep, renderer: Renderer, names: Any
) -> str:
    if isinstance(step, AgentStep):
        prompt = renderer.render(checked.prompts[step.id], names, "prompt")
        contracts = [checked.flow.contracts[c] for c in step.contracts or []]
        persona = f"[persona {step.persona}]" if step.persona else None
        return compose(persona, prompt, contracts)
    if isinstance(step, CodeStep):
        params = renderer.render_value(step.with_, names, "with")
        return f"{step.call}(ctx, **{json.dumps(params, ensure_ascii=False)})"
    return renderer.render(step.message, names, "message") if step.message else "(no message)"
