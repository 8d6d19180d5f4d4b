"""FR003 duplicate ids, FR004 unknown needs, FR005 cycles, FR017 steps that never run."""

from __future__ import annotations

from jinja2 import TemplateSyntaxError

from engine.lint.reporter import Reporter
from engine.model.diagnostics import Severity
from engine.model.documents import Flow
from engine.model.graph import StepGraph
from engine.templates import constant_value, parse_expression


def check_graph(flow: Flow, report: Reporter) -> StepGraph:
    """Report graph problems; the graph returned holds the first step of each id."""
    first: dict[str, int] = {}
    for index, step in enumerate(flow.steps):
        first.setdefault(step.id, index)
    needs: dict[str, list[str]] = {}
    for index, step in enumerate(flow.steps):
        if first[step.id] != index:
            line = report.source.value_at(f"/steps/{first[step.id]}/id").line
            report.at_value(
                f"/steps/{index}/id",
                "FR003",
                f"duplicate step id '{step.id}' (first defined at line {line})",
            )
            continue
        needs[step.id] = list(step.needs)
        for position, need in enumerate(step.needs):
            if need not in first:
                report.at_value(
                    f"/steps/{index}/needs/{position}",
                    "FR004",
                    f"step '{step.id}' needs '{need}', which is not a step of this flow",
                )
    graph = StepGraph(needs)
    _check_cycles(flow, graph, first, report)
    _check_never_runs(flow, first, report)
    return graph


def _check_cycles(flow: Flow, graph: StepGraph, first: dict[str, int], report: Reporter) -> None:
    cycles = graph.cycles()
    for cycle in cycles:
        start = cycle.steps[0]
        following = cycle.steps[1] if len(cycle.steps) > 1 else start
        index = first[start]
        position = flow.steps[index].needs.index(following)
        report.at_value(f"/steps/{index}/needs/{position}", "FR005", f"dependency cycle: {cycle}")
    blocked = graph.blocked_by(step for cycle in cycles for step in cycle.steps)
    for step in sorted(blocked, key=first.__getitem__):
        report.at_value(
            f"/steps/{first[step]}/id",
            "FR017",
            f"step '{step}' can never run: it depends on a dependency cycle",
            Severity.WARNING,
        )


def _check_never_runs(flow: Flow, first: dict[str, int], report: Reporter) -> None:
    for index, step in enumerate(flow.steps):
        if first[step.id] != index:
            continue
        if step.bands is not None and not step.bands:
            report.at_value(
                f"/steps/{index}/bands",
                "FR017",
                f"step '{step.id}' is excluded from every band",
                Severity.WARNING,
            )
        if _always_false(step.when):
            report.at_value(
                f"/steps/{index}/when",
                "FR017",
                f"step '{step.id}' can never run: its `when` is always false",
                Severity.WARNING,
            )


def _always_false(when: str | bool | None) -> bool:
    if isinstance(when, bool) or when is None:
        return when is False
    try:
        constant, value = constant_value(parse_expression(when))
    except TemplateSyntaxError:
        return False  # FR016 reports it
    return constant and not value
