"""The ``flowrunner`` command line: a thin shell over lint, the schema export and runs."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from engine import schema
from engine.cli import graph, runs, serve
from engine.cli.common import app, fail, open_project
from engine.lint import lint_paths
from engine.lint.output import FORMATS

__all__ = ["app", "graph", "main", "runs", "serve"]


class Format(StrEnum):
    text = "text"
    json = "json"
    github = "github"
    sarif = "sarif"


@app.command()
def lint(
    paths: Annotated[list[Path] | None, typer.Argument(help="Flow files or folders.")] = None,
    output_format: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.text,
) -> None:
    """Check flow files; exit 1 when any has an error (warnings are allowed)."""
    project = open_project()
    targets = paths or [project.flows_dir]
    missing = [str(p) for p in targets if not os.path.exists(p)]  # a name too long: missing
    if missing:
        raise fail(f"no such file or folder: {', '.join(missing)}")
    report = lint_paths(targets, project)
    text = FORMATS[output_format.value](report)
    if text:
        typer.echo(text)
    raise typer.Exit(1 if report.errors else 0)


@app.command("schema")
def schema_command(
    check: Annotated[bool, typer.Option("--check", help="Fail if the file is stale.")] = False,
    output: Annotated[Path | None, typer.Option(help="Where to write it.")] = None,
) -> None:
    """Write schema.json (the JSON Schema of flow files) or check that it is up to date."""
    target = output or open_project().root / "schema.json"
    text = schema.render()
    if check:
        current = target.read_text("utf-8") if target.is_file() else None
        if current != text:
            raise fail(f"{target} is stale: run 'flowrunner schema'", 1)
        typer.echo(f"{target} is up to date")
        return
    target.write_text(text, "utf-8")
    typer.echo(f"wrote {target}")


def main() -> None:
    """Entry point of the console script."""
    sys.exit(app())
