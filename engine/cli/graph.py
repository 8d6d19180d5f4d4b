"""``flowrunner graph``: a flow's DAG as Mermaid or DOT."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from engine.cli.common import app, checked_flow, open_project
from engine.lint import CheckedFlow
from engine.model.documents import Flow


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    dot = "dot"


def mermaid(flow: Flow) -> str:
    shapes = {"agent": ("[", "]"), "code": ("[[", "]]"), "approval": ("{", "}")}
    lines = ["flowchart TD"]
    for step in flow.steps:
        left, right = shapes[step.kind]
        label = (step.title or step.id).replace('"', "'")
        lines.append(f'    {step.id}{left}"{label}"{right}')
    lines += [f"    {need} --> {step.id}" for step in flow.steps for need in step.needs]
    return "\n".join(lines)


def dot(flow: Flow) -> str:
    shapes = {"agent": "box", "code": "component", "approval": "diamond"}
    lines = [f'digraph "{flow.name}" {{', "    rankdir=TB;"]
    for step in flow.steps:
        label = (step.title or step.id).replace('"', "'")
        lines.append(f'    {step.id} [label="{label}", shape={shapes[step.kind]}];')
    lines += [f"    {need} -> {step.id};" for step in flow.steps for need in step.needs]
    lines.append("}")
    return "\n".join(lines)


@app.command()
def graph(
    flow: Annotated[str, typer.Argument(help="A flow file, or the name of a flow in flows/.")],
    output_format: Annotated[
        GraphFormat, typer.Option("--format", help="mermaid or dot.")
    ] = GraphFormat.mermaid,
) -> None:
    """Print a flow's DAG (Mermaid by default, or Graphviz DOT)."""
    checked: CheckedFlow = checked_flow(open_project(), flow)
    render = mermaid if output_format is GraphFormat.mermaid else dot
    typer.echo(render(checked.flow))
