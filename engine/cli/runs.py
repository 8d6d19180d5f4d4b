"""Commands that run flows and act on runs: a thin shell over engine.runner."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.prompt import Confirm, Prompt
from rich.table import Table

from engine.agents import Backend
from engine.cli.common import (
    app,
    checked_flow,
    exit_past_threads,
    fail,
    log_to_stderr,
    open_project,
    run_async,
)
from engine.cli.progress import Progress, StepLine, follow
from engine.config import Project
from engine.core.plan import RunStatus
from engine.errors import Conflict, FlowrunnerError, InvalidInput, NotAllowed, NotFound
from engine.model.documents import ApprovalStep
from engine.runner import service
from engine.runner.dryrun import dry_run
from engine.runner.setup import agent_backend, open_store
from engine.runner.worker import Worker
from engine.store.base import Event, Store

T = TypeVar("T")

EXIT = {
    RunStatus.COMPLETED: 0,
    RunStatus.FAILED: 1,
    RunStatus.CANCELLED: 3,
    RunStatus.RUNNING: 0,
}

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
AsOption = Annotated[
    str | None, typer.Option("--as", help="The identity deciding (default: your user name).")
]


def identity(name: str | None) -> str:
    return name or getpass.getuser()


def with_store(body: Callable[[Project, Store], Awaitable[T]], *, worker_only: bool = False) -> T:
    """Open the project's store, run ``body``, and turn engine errors into one line."""
    project = open_project()

    async def main() -> T:
        store = open_store(project, worker_only=worker_only)
        await store.open()
        try:
            return await body(project, store)
        finally:
            await store.close()

    try:
        return run_async(main())
    except InvalidInput as exc:
        raise fail(exc.message, 2) from None
    except (NotFound, Conflict, NotAllowed) as exc:
        raise fail(exc.message, 1) from None
    except FlowrunnerError as exc:
        raise fail(exc.message, 2) from None


def parse_inputs(
    pairs: list[str], file: Path | None, strings: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``--inputs FILE.json`` then each ``--input key=value``: JSON when it parses, except
    for inputs declared as strings (``strings``), which take the text as it is."""
    values: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = json.loads(file.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise fail(f"--inputs {file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise fail(f"--inputs {file}: expected a JSON object")
        values.update(loaded)
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or not key:
            raise fail(f"--input {pair!r}: expected key=value")
        if key in strings:
            values[key] = text
            continue
        try:
            values[key] = json.loads(text)
        except ValueError:
            values[key] = text
    return values


@app.command()
def run(
    flow: Annotated[str, typer.Argument(help="A flow file, or the name of a flow in flows/.")],
    input_: Annotated[
        list[str] | None, typer.Option("--input", help="key=value (JSON when it parses).")
    ] = None,
    inputs: Annotated[Path | None, typer.Option(help="A JSON file of inputs.")] = None,
    band: Annotated[str | None, typer.Option(help="The band (default: the flow's first).")] = None,
    model: Annotated[
        str | None, typer.Option(help="The model (default: FLOWRUNNER_MODEL).")
    ] = None,
    detach: Annotated[bool, typer.Option(help="Store the run and exit; a worker runs it.")] = False,
    json_out: JsonOption = False,
    dry: Annotated[
        bool, typer.Option("--dry-run", help="Print every rendered prompt; call nothing.")
    ] = False,
    replay: Annotated[
        str | None, typer.Option(help="Answer agent steps from this recorded run.")
    ] = None,
    as_: AsOption = None,
) -> None:
    """Launch a run and follow it (exit 0 completed, 1 failed, 2 invalid, 3 cancelled)."""
    project = open_project()
    checked = checked_flow(project, flow)
    strings = frozenset(k for k, spec in checked.flow.inputs.items() if spec.type == "string")
    values = parse_inputs(input_ or [], inputs, strings)
    if dry:
        try:
            typer.echo(dry_run(checked, values, band, model or project.settings.model))
        except FlowrunnerError as exc:
            raise fail(exc.message, 2) from None
        return

    async def body(project: Project, store: Store) -> int:
        backend = None if detach else agent_backend(project)  # a bad setting stores no run
        run_id, _ = await service.launch(
            store,
            project,
            checked,
            inputs=values,
            band=band,
            model=model,
            launched_by=identity(as_),
            replay_of=replay,
            now=time.time(),
        )
        if detach or backend is None:
            typer.echo(json.dumps({"id": run_id}) if json_out else run_id)
            return 0
        return await execute(project, store, run_id, json_out, backend)

    raise typer.Exit(with_store(body))


async def execute(
    project: Project, store: Store, run_id: str, json_out: bool, backend: Backend
) -> int:
    """Run one run in this process, showing progress, until it ends; its exit code."""
    worker = Worker(store, project, backend, run_id=run_id)
    console = Console(stderr=json_out)
    steps = await store.get_steps(run_id)
    progress = Progress(run_id, {s.id: StepLine(s.id, s.kind) for s in steps})
    worker.subscribers.append(progress.delta)
    done = asyncio.Event()
    interactive = sys.stdin.isatty() and console.is_terminal and not json_out

    async def finished() -> bool:
        return (await store.get_run(run_id)).status is not RunStatus.RUNNING

    async def on_waiting(event: Event) -> None:
        await answer_gate(store, run_id, event, console, interactive)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: asyncio.ensure_future(_cancel(store, run_id)))
    watcher = asyncio.create_task(
        follow(
            store,
            progress,
            console,
            live=console.is_terminal and not json_out,
            on_waiting=on_waiting,
            done=done,
        )
    )
    try:
        await worker.run(until=finished)
    finally:
        done.set()
        await watcher
        loop.remove_signal_handler(signal.SIGINT)
    details = await service.details(store, run_id)
    if json_out:
        typer.echo(json.dumps(details.as_json(), indent=2))
    else:
        show_end(console, details)
    return EXIT[details.run.status]


async def _cancel(store: Store, run_id: str) -> None:
    with contextlib.suppress(Conflict):
        await service.cancel(store, run_id, time.time())


async def answer_gate(
    store: Store, run_id: str, event: Event, console: Console, interactive: bool
) -> None:
    """Ask at the terminal when there is one; otherwise say how to decide."""
    step_id = event.step_id or ""
    message = event.payload.get("message") or f"Approve step {step_id}?"
    if not interactive:
        console.print(
            f"step {step_id} waits for approval: flowrunner approve {run_id} {step_id} (or reject)",
            markup=False,
        )
        return
    compiled = await service.compiled_flow(store, run_id)
    gate = compiled.steps[step_id]
    assert isinstance(gate, ApprovalStep)
    console.print(f"\n[bold yellow]{step_id}[/]: {message}")
    approve = await asyncio.to_thread(Confirm.ask, "Approve?", console=console)
    comment = await asyncio.to_thread(Prompt.ask, "Comment", default="", console=console)
    payload: dict[str, Any] = {}
    if approve:
        for name, spec in gate.form.items():
            default = None if spec.required else json.dumps(spec.default)
            text = await asyncio.to_thread(
                Prompt.ask, f"{name} ({spec.type})", default=default, console=console
            )
            try:
                payload[name] = json.loads(text) if text is not None else None
            except ValueError:
                payload[name] = text
    try:
        await service.decide(
            store,
            run_id,
            step_id,
            approve=approve,
            identity=getpass.getuser(),
            comment=comment,
            payload=payload,
            now=time.time(),
        )
    except (Conflict, NotAllowed, InvalidInput) as exc:
        console.print(f"[red]not recorded:[/] {exc.message}")


def show_end(console: Console, details: service.RunDetails) -> None:
    run = details.run
    style = {"completed": "green", "failed": "red", "cancelled": "magenta"}.get(str(run.status))
    console.print(f"run {run.id} [bold {style}]{run.status}[/]")
    if run.error:
        console.print(f"error: {run.error}", markup=False)
    if any(step.scripted for step in details.steps):
        console.print("[dim]agent output came from the scripted backend, not a model[/]")
    if run.report:
        console.print(run.report, markup=False, highlight=False)


@app.command()
def worker(
    until_idle: Annotated[
        bool, typer.Option(help="Exit once nothing is left to do (gates waiting included).")
    ] = False,
    max_agents: Annotated[
        int | None, typer.Option(min=1, help="Agent steps at once (default: the setting).")
    ] = None,
    max_code: Annotated[
        int | None,
        typer.Option(min=1, help="Code steps and gates at once (default: the setting)."),
    ] = None,
    grace: Annotated[
        float,
        typer.Option(min=0, help="On SIGTERM, seconds running steps get before hand-back."),
    ] = 10.0,
) -> None:
    """Execute every run's ready steps; takes over unfinished runs at start.

    SIGTERM or SIGINT stops claiming; running steps get the grace period to
    finish, then the rest are handed back for another worker.
    """

    async def body(project: Project, store: Store) -> int:
        limits = {"max_agents": max_agents, "max_code": max_code}
        update = {name: value for name, value in limits.items() if value is not None}
        project = replace(project, settings=project.settings.model_copy(update=update))
        runner = Worker(store, project, agent_backend(project))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stop)
        typer.echo(f"worker {runner.id} started (pid {os.getpid()})", err=True)
        await runner.run(until_idle=until_idle, grace=grace)
        stopped.append(runner.stopping.is_set())
        typer.echo(f"worker {runner.id} stopped", err=True)
        return 0

    stopped: list[bool] = []
    log_to_stderr()
    code = with_store(body, worker_only=True)
    if stopped and stopped[0]:
        exit_past_threads(code)
    raise typer.Exit(code)


@app.command()
def runs(
    flow: Annotated[str | None, typer.Option(help="Only runs of this flow.")] = None,
    status: Annotated[str | None, typer.Option(help="Only runs in this status.")] = None,
    waiting: Annotated[
        bool | None, typer.Option("--waiting/--not-waiting", help="Gates waiting or not.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    json_out: JsonOption = False,
) -> None:
    """List runs, newest first."""

    async def body(project: Project, store: Store) -> int:
        found = await store.list_runs(flow=flow, status=status, waiting=waiting, limit=limit)
        if json_out:
            typer.echo(json.dumps([service.summary(run) for run in found], indent=2))
            return 0
        table = Table()
        for column in ("id", "flow", "status", "band", "created"):
            table.add_column(column)
        for run in found:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.created_at))
            table.add_row(run.id, run.flow, str(run.status), run.band or "", created)
        Console().print(table)
        return 0

    raise typer.Exit(with_store(body))


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="A run id.")], json_out: JsonOption = False
) -> None:
    """A run with its steps and report."""

    async def body(project: Project, store: Store) -> int:
        details = await service.details(store, run_id)
        if json_out:
            typer.echo(json.dumps(details.as_json(), indent=2))
            return 0
        console = Console()
        table = Table(title=f"run {run_id} ({details.run.flow})")
        for column in ("step", "kind", "status", "attempts", "error"):
            table.add_column(column)
        for step in details.steps:
            status = str(step.status) + (" [scripted]" if step.scripted else "")
            table.add_row(step.id, step.kind, status, str(step.attempts), step.error or "")
        console.print(table)
        show_end(console, details)
        return 0

    raise typer.Exit(with_store(body))


def _decide(
    run_id: str, step: str, approve: bool, comment: str, payload: str | None, who: str | None
) -> None:
    values: dict[str, Any] = {}
    if payload is not None:
        try:
            values = json.loads(payload)
        except ValueError as exc:
            raise fail(f"--payload is not JSON: {exc}") from None
        if not isinstance(values, dict):
            raise fail("--payload must be a JSON object")

    async def body(project: Project, store: Store) -> int:
        record = await service.decide(
            store,
            run_id,
            step,
            approve=approve,
            identity=identity(who),
            comment=comment,
            payload=values,
            now=time.time(),
        )
        typer.echo(f"{step}: {'approved' if approve else 'rejected'} ({record.status})")
        return 0

    raise typer.Exit(with_store(body))


@app.command()
def approve(
    run_id: str,
    step: str,
    comment: Annotated[str, typer.Option(help="Why.")] = "",
    payload: Annotated[str | None, typer.Option(help="The form's values, as JSON.")] = None,
    as_: AsOption = None,
) -> None:
    """Approve a waiting gate."""
    _decide(run_id, step, True, comment, payload, as_)


@app.command()
def reject(
    run_id: str,
    step: str,
    comment: Annotated[str, typer.Option(help="Why.")] = "",
    as_: AsOption = None,
) -> None:
    """Reject a waiting gate."""
    _decide(run_id, step, False, comment, None, as_)


@app.command()
def cancel(run_id: str) -> None:
    """Cancel a running run: running agent calls and subprocesses are stopped."""

    async def body(project: Project, store: Store) -> int:
        run = await service.cancel(store, run_id, time.time())
        typer.echo(f"run {run.id} {run.status}")
        return 0

    raise typer.Exit(with_store(body))


@app.command()
def retry(
    run_id: str,
    detach: Annotated[bool, typer.Option(help="Only mark it; a worker runs it.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Run a failed or cancelled run again in place; completed steps keep their outputs."""

    async def body(project: Project, store: Store) -> int:
        backend = None if detach else agent_backend(project)  # a bad setting changes nothing
        await service.retry(store, run_id, time.time())
        if detach or backend is None:
            typer.echo(json.dumps({"id": run_id}) if json_out else run_id)
            return 0
        return await execute(project, store, run_id, json_out, backend)

    raise typer.Exit(with_store(body))
