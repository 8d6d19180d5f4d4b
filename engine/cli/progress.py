"""Following a run at the terminal: a live table (TTY) or one line per event (pipes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from engine.store.base import Event, Store

STATUS_STYLE = {
    "pending": "dim",
    "running": "bold cyan",
    "waiting": "bold yellow",
    "completed": "green",
    "skipped": "dim",
    "excluded": "dim",
    "failed": "bold red",
    "cancelled": "magenta",
}


@dataclass
class StepLine:
    id: str
    kind: str
    status: str = "pending"
    attempt: int = 0
    started: float | None = None
    ended: float | None = None
    scripted: bool = False


@dataclass
class Progress:
    """The state of a run as its events tell it, plus streamed text of agent steps."""

    run_id: str
    steps: dict[str, StepLine]
    streams: dict[str, str] = field(default_factory=dict)
    focus: str | None = None
    finished: str | None = None

    def apply(self, event: Event) -> None:
        step = self.steps.get(event.step_id or "")
        name = event.event
        if name.startswith("run_") and name != "run_started" and name != "run_retried":
            self.finished = name.removeprefix("run_")
        if step is None:
            return
        if name == "step_started":
            step.status, step.attempt = "running", int(event.payload.get("attempt", 0))
            step.started, step.ended = event.at, None
            self.streams.pop(step.id, None)
            if step.kind == "agent":
                self.focus = step.id
        elif name.startswith("step_") and name not in ("step_retrying", "step_released"):
            step.status = name.removeprefix("step_")
            step.ended = event.at
            step.scripted = step.scripted or bool(event.payload.get("scripted"))
        elif name == "step_retrying":
            step.status, step.ended = "pending", event.at

    def delta(self, frame: dict[str, Any]) -> None:
        if frame["event"] != "delta":
            return
        step_id = frame["step_id"]
        self.streams[step_id] = (self.streams.get(step_id, "") + frame["text"])[-4000:]
        self.focus = step_id

    def table(self, now: float) -> Group:
        table = Table(title=f"run {self.run_id}", expand=False)
        for column in ("step", "kind", "status", "attempt", "elapsed"):
            table.add_column(column)
        for step in self.steps.values():
            elapsed = ""
            if step.started is not None:
                elapsed = f"{(step.ended or now) - step.started:.1f}s"
            status = Text(step.status, style=STATUS_STYLE.get(step.status, ""))
            if step.scripted:
                status.append(" [scripted]", style="dim")
            table.add_row(step.id, step.kind, status, str(step.attempt or ""), elapsed)
        parts: list[Any] = [table]
        if self.focus and self.streams.get(self.focus):
            tail = "\n".join(self.streams[self.focus].splitlines()[-8:])
            parts.append(Text(f"{self.focus} >\n{tail}", style="italic"))
        return Group(*parts)


def event_line(event: Event) -> str:
    """One event as a line of plain text, for logs and pipes."""
    when = time.strftime("%H:%M:%S", time.localtime(event.at))
    who = f" {event.step_id}" if event.step_id else ""
    details = ", ".join(f"{k}={v}" for k, v in event.payload.items() if v not in (None, ""))
    return f"{when}{who} {event.event}" + (f" ({details})" if details else "")


async def follow(
    store: Store,
    progress: Progress,
    console: Console,
    *,
    live: bool,
    on_waiting: Callable[[Event], Awaitable[None]],
    done: asyncio.Event,
) -> None:
    """Show events until ``done`` is set; ``on_waiting`` is called for each waiting gate."""
    after = 0
    display = Live(console=console, refresh_per_second=8, transient=False) if live else None
    with display or contextlib.nullcontext():
        while True:
            for event in await store.events(progress.run_id, after=after):
                after = event.id
                progress.apply(event)
                if display is None:
                    console.print(event_line(event), markup=False, highlight=False)
                if event.event == "step_waiting":
                    if display is not None:
                        display.stop()
                    await on_waiting(event)
                    if display is not None:
                        display.start()
            if display is not None:
                display.update(progress.table(time.time()))
            if done.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.2)
