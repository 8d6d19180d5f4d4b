"""What every command shares: the Typer app, the project, one-line errors."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from engine.config import Project
from engine.lint import CheckedFlow, check_file
from engine.lint.output import as_text
from engine.lint.pipeline import LintReport
from engine.model.diagnostics import Diagnostic

T = TypeVar("T")

app = typer.Typer(
    name="flowrunner",
    help="Declarative YAML flows of LLM agents, code steps and approval gates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class State:
    project_dir: Path | None = None


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear line to stderr and return the exit to raise."""
    typer.echo(f"flowrunner: {message}", err=True)
    return typer.Exit(code)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop where it is installed (it is a dependency except on Windows):
    its event loop costs a fraction of asyncio's per request and per database round trip."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def log_to_stderr() -> None:
    """Show the engine's own log (a dead worker's steps taken over, a database outage, a
    shutdown) on stderr, with the time and level, for the long-running commands."""
    logger = logging.getLogger("flowrunner")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def exit_past_threads(code: int) -> NoReturn:
    """Exit now, after a worker stopped on a signal: code steps still running in threads past
    the grace were handed back (another worker runs them again), and a thread cannot be
    stopped, so the process must not wait for them."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def open_project() -> Project:
    try:
        return Project.open(State.project_dir)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise fail(f"bad configuration: {where}: {first['msg']}") from None
    except (ValueError, OSError) as exc:
        raise fail(f"bad configuration in flowrunner.toml: {exc}") from None


@app.callback()
def main_options(
    project: Annotated[
        Path | None,
        typer.Option(
            help="The project directory (flows/, personas/, code_steps/).", file_okay=False
        ),
    ] = None,
) -> None:
    State.project_dir = project


def print_diagnostics(diagnostics: Sequence[Diagnostic]) -> None:
    """Diagnostics as ``lint`` prints them, on stderr."""
    report = LintReport(diagnostics=list(diagnostics))
    typer.echo("\n".join(as_text(report).splitlines()[:-1]), err=True)


def checked_flow(project: Project, reference: str) -> CheckedFlow:
    path = project.find_flow(reference)
    if not os.path.isfile(path):  # False, not an error, for a name too long
        raise fail(f"no flow '{reference}' (not a file, nor a flow in {project.flows_dir})")
    result = check_file(path, project)
    if result.checked is None:
        print_diagnostics(result.diagnostics)
        raise fail(f"{result.path} is not a valid flow", 2)
    return result.checked
