"""Driving the runner in-process: a throw-away project, a SQLite store, a worker.

A test builds its project in ``tmp_path`` with :class:`ProjectKit`: flows,
personas and a code package whose name is unique to the test (``PKG`` in a
flow's text is replaced by it), so modules never collide across tests; the
package is dropped from ``sys.modules`` afterwards.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.agents import AgentReply, AgentRequest, Backend, OnDelta, ScriptedBackend
from engine.config import Project
from engine.core.plan import RunStatus
from engine.lint import CheckedFlow, check_file
from engine.runner import service
from engine.runner.worker import Worker
from engine.store.base import Event, Store
from engine.store.sqlite import SqliteStore

MODELINE = "# yaml-language-server: $schema=../schema.json\n"


@dataclass
class ProjectKit:
    """A project under construction in a temporary folder."""

    root: Path
    pkg: str
    monkeypatch: pytest.MonkeyPatch
    _project: Project | None = None

    def flow(self, text: str, name: str = "x") -> Path:
        """Write ``flows/<name>.yaml`` (modeline added, ``PKG`` replaced); returns its path."""
        body = textwrap.dedent(text).replace("PKG", self.pkg).lstrip("\n")
        path = self.root / "flows" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(MODELINE + body, "utf-8")
        return path

    def persona(self, name: str, text: str) -> None:
        folder = self.root / "personas"
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.md").write_text(text, "utf-8")

    def code(self, source: str, module: str = "steps") -> str:
        """Write ``<pkg>/<module>.py``; returns ``<pkg>.<module>`` for `call`."""
        folder = self.root / self.pkg
        folder.mkdir(exist_ok=True)
        (folder / "__init__.py").touch()
        (folder / f"{module}.py").write_text(textwrap.dedent(source).lstrip("\n"), "utf-8")
        return f"{self.pkg}.{module}"

    def env(self, **values: Any) -> None:
        for key, value in values.items():
            self.monkeypatch.setenv(f"FLOWRUNNER_{key.upper()}", str(value))
        self._project = None

    @property
    def project(self) -> Project:
        if self._project is None:
            self._project = Project.open(self.root)
        return self._project

    def check(self, path: Path) -> CheckedFlow:
        result = check_file(path, self.project)
        assert result.checked is not None, [str(d) for d in result.diagnostics]
        return result.checked

    def checked(self, text: str, name: str = "x") -> CheckedFlow:
        return self.check(self.flow(text, name))


@pytest.fixture
def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProjectKit]:
    for name in [name for name in os.environ if name.startswith("FLOWRUNNER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FLOWRUNNER_POLL_SECONDS", "0.05")
    (tmp_path / "flows").mkdir()
    (tmp_path / "personas").mkdir()
    made = ProjectKit(tmp_path, f"rt_steps_{uuid.uuid4().hex[:10]}", monkeypatch)
    yield made
    for module in [m for m in sys.modules if m == made.pkg or m.startswith(made.pkg + ".")]:
        del sys.modules[module]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "db.sqlite")
    await opened.open()
    yield opened
    await opened.close()


def scripted(*rules: tuple[str | None, str] | str) -> ScriptedBackend:
    """A scripted backend: ``"reply"`` answers anything, ``(pattern, reply)`` a match."""
    replies = []
    for rule in rules:
        if isinstance(rule, str):
            replies.append({"reply": rule})
        else:
            pattern, reply = rule
            replies.append({"match": pattern, "reply": reply} if pattern else {"reply": reply})
    return ScriptedBackend.from_data({"replies": replies})


@dataclass
class RecordingBackend:
    """Answers with ``answer(request, n)`` (n counts calls from 0) and keeps every request."""

    answer: Callable[[AgentRequest, int], str]
    name: str = "recording"
    requests: list[AgentRequest] = field(default_factory=list)

    async def complete(self, request: AgentRequest, on_delta: OnDelta | None = None) -> AgentReply:
        count = len(self.requests)
        self.requests.append(request)
        text = self.answer(request, count)
        if on_delta is not None:
            on_delta(text)
        return AgentReply(text=text, backend=self.name)

    async def aclose(self) -> None:
        pass


def replies(*texts: str) -> RecordingBackend:
    """A backend answering the n-th call with ``texts[n]`` (the last one repeats)."""
    return RecordingBackend(lambda _request, n: texts[min(n, len(texts) - 1)])


async def is_finished(store: Store, run_id: str) -> bool:
    return (await store.get_run(run_id)).status is not RunStatus.RUNNING


async def launch(
    kit: ProjectKit,
    store: Store,
    checked: CheckedFlow,
    inputs: dict[str, Any] | None = None,
    **options: Any,
) -> str:
    options.setdefault("now", time.time())
    run_id, created = await service.launch(
        store, kit.project, checked, inputs=inputs or {}, **options
    )
    assert created
    return run_id


async def finish(
    kit: ProjectKit,
    store: Store,
    run_id: str,
    backend: Backend,
    *,
    clock: Callable[[], float] = time.time,
    timeout: float = 20.0,
) -> service.RunDetails:
    """Work on ``run_id`` until it ends (or ``timeout`` real seconds pass); its details."""
    worker = Worker(store, kit.project, backend, run_id=run_id, clock=clock)
    deadline = time.monotonic() + timeout

    async def done() -> bool:
        return await is_finished(store, run_id) or time.monotonic() > deadline

    await worker.run(until=done)
    return await service.details(store, run_id)


async def run_flow(
    kit: ProjectKit,
    store: Store,
    checked: CheckedFlow,
    backend: Backend,
    inputs: dict[str, Any] | None = None,
    **options: Any,
) -> service.RunDetails:
    run_id = await launch(kit, store, checked, inputs, **options)
    return await finish(kit, store, run_id, backend)


async def idle(
    kit: ProjectKit,
    store: Store,
    run_id: str,
    backend: Backend,
    clock: Callable[[], float] = time.time,
) -> service.RunDetails:
    """Work on ``run_id`` until nothing is left to do (gates waiting included)."""
    worker = Worker(store, kit.project, backend, run_id=run_id, clock=clock)
    await asyncio.wait_for(worker.run(until_idle=True), 20)
    return await service.details(store, run_id)


async def events(store: Store, run_id: str) -> list[Event]:
    return await store.events(run_id)


def steps_by_id(details: service.RunDetails) -> dict[str, Any]:
    return {step.id: step for step in details.steps}


def statuses(details: service.RunDetails) -> dict[str, str]:
    return {step.id: str(step.status) for step in details.steps}
