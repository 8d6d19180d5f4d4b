"""The HTTP API served for real: uvicorn on a loopback port, with a worker beside it.

:class:`LiveServer` does what ``flowrunner serve`` does, in a background thread
with its own event loop: it opens a SQLite store, starts a
:class:`~engine.runner.worker.Worker` (answering agent steps with a scripted
backend) and serves ``create_app(Api(project, store, tokens, frames))`` with
uvicorn on ``127.0.0.1`` and a port the OS picks. Tests talk to it with httpx
over real sockets.

Each test gets an :class:`ApiProject` in its own ``tmp_path``: ``flows/``,
``personas/`` and a code package whose name is unique to the test (its modules
are dropped from ``sys.modules`` afterwards), plus the flows most tests use
(see :data:`FLOWS`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from engine.agents import ScriptedBackend
from engine.api.app import create_app
from engine.api.context import Api
from engine.api.frames import Frames
from engine.config import Project
from engine.runner.worker import Worker
from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore
from tests.postgres import URL_VARIABLE, fresh_schema

T = TypeVar("T")

FLOWRUNNER = Path(sys.executable).parent / "flowrunner"
"""The console script of the package under test."""

MODELINE = "# yaml-language-server: $schema=../schema.json\n"

TOKENS = {"tok-alice": "alice", "tok-bob": "bob", "tok-lead": "lead"}
"""Bearer tokens and the identities they stand for."""

TERMINAL = ("completed", "failed", "cancelled")

REPLIES = [
    {"match": "Greet", "reply": "Hello there, friend"},
    {"match": "Draft", "reply": "the draft"},
    {"reply": "done"},
]
"""What the scripted backend answers (first match wins)."""

CODE = """
import asyncio
from pathlib import Path


async def pause(ctx, seconds, label):
    await asyncio.sleep(float(seconds))
    return f"{label} after {seconds}s"


def needs_marker(ctx, marker):
    if not Path(marker).exists():
        raise RuntimeError("marker missing")
    return "marker found"
"""

FLOWS: dict[str, str] = {
    "greet": """
        description: Greets someone.
        inputs:
          name: {type: string, description: Who to greet.}
          count: {type: integer, default: 1}
          tone: {type: string, enum: [warm, dry], default: warm}
        bands: [quick, deep]
        steps:
          - {id: hello, kind: agent, prompt: "Greet {{ inputs.name }}"}
          - {id: shout, kind: agent, needs: [hello], prompt: "Shout {{ steps.hello.output }}"}
        """,
    "gate": """
        steps:
          - {id: draft, kind: agent, prompt: "Draft it"}
          - id: review
            kind: approval
            needs: [draft]
            message: "Publish {{ steps.draft.output }}?"
            form:
              audience: {type: string, enum: [team, public]}
              size: {type: integer, default: 1}
          - {id: publish, kind: agent, needs: [review], prompt: "Publish it"}
        """,
    "leadgate": """
        steps:
          - {id: review, kind: approval, approvers: [lead]}
          - {id: after, kind: agent, needs: [review], prompt: "After"}
        """,
    "selfgate": """
        steps:
          - {id: review, kind: approval, prevent_self_approval: true}
          - {id: after, kind: agent, needs: [review], prompt: "After"}
        """,
    "sleepy": """
        steps:
          - {id: nap, kind: code, call: "PKG.steps:pause", with: {seconds: 30, label: nap}}
        """,
    "fragile": """
        inputs:
          marker: {type: string}
        steps:
          - {id: first, kind: agent, prompt: "First"}
          - id: check
            kind: code
            needs: [first]
            call: "PKG.steps:needs_marker"
            with: {marker: "{{ inputs.marker }}"}
        """,
}


def chain_flow(steps: int, seconds: float) -> str:
    """A chain of code steps, each pausing ``seconds``, with an agent step in the middle."""
    lines = ["steps:"]
    previous = None
    middle = steps // 2
    for n in range(steps):
        needs = f", needs: [{previous}]" if previous else ""
        if n == middle:
            lines.append(f'  - {{id: talk, kind: agent, prompt: "Talk"{needs}}}')
            previous = "talk"
            needs = ", needs: [talk]"
        step = f"s{n}"
        lines.append(
            f'  - {{id: {step}, kind: code, call: "PKG.steps:pause"{needs}, '
            f"with: {{seconds: {seconds}, label: {step}}}}}"
        )
        previous = step
    return "\n".join(lines) + "\n"


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``predicate`` until it returns something true; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> Any:
    """The response is an error of the one shape with this status; its ``details``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    return body["error"]["details"]


LIVE: list[LiveServer] = []
"""Servers whose thread may still be running."""


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Before pytest formats a failure (or an expected failure), stop the servers.

    Formatting parses source with ``ast``; Python before 3.11.8 keeps the AST
    recursion counter in state shared between threads (CPython gh-106905), so a
    server thread compiling a template at that moment can make pytest crash with
    "SystemError: AST constructor recursion depth mismatch".
    """
    if call.excinfo is not None:
        for server in list(LIVE):
            server.halt()
    yield


@dataclass
class ApiProject:
    """A project in a temporary folder: flows, personas, a code package."""

    root: Path
    pkg: str

    def flow(self, name: str, body: str) -> Path:
        """``flows/NAME.yaml``: modeline, ``version``, ``name``, then ``body``; ``PKG`` replaced."""
        head = f"{MODELINE}version: 1\nname: {name}\n"
        text = head + textwrap.dedent(body).lstrip("\n").replace("PKG", self.pkg)
        path = self.root / "flows" / f"{name}.yaml"
        path.write_text(text, "utf-8")
        return path

    def project(self) -> Project:
        return Project.open(self.root)


@dataclass
class LiveServer:
    """The API and a worker on one event loop in a thread, served over loopback."""

    project: Project
    tokens: dict[str, str] | None = None
    max_body: int | None = None
    database_url: str | None = None
    """A PostgreSQL URL to serve from; by default a SQLite file in the project."""
    replies: list[dict[str, str]] = field(default_factory=lambda: list(REPLIES))
    url: str = ""
    frames: Frames = field(default_factory=Frames)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _failure: BaseException | None = None

    def start(self) -> LiveServer:
        ready = threading.Event()

        async def main() -> None:
            store: Store = (
                PostgresStore(self.database_url, retry_seconds=2)
                if self.database_url
                else SqliteStore(self.project.root / ".flowrunner" / "api.db")
            )
            await store.open()
            worker = Worker(
                store, self.project, ScriptedBackend.from_data({"replies": self.replies})
            )
            worker.subscribers.append(self.frames.publish)
            context = Api(self.project, store, self.tokens, self.frames)
            context.on_change = worker.wake.set  # as serve does
            app = (
                create_app(context)
                if self.max_body is None
                else create_app(context, max_body=self.max_body)
            )
            config = uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
                log_level="warning",
                lifespan="off",
                timeout_graceful_shutdown=2,
            )
            self._server = server = uvicorn.Server(config)
            work = asyncio.create_task(worker.run(grace=1.0))
            serving = asyncio.create_task(server.serve())
            try:
                while not server.started and not serving.done():
                    await asyncio.sleep(0.01)
                if server.started:
                    port = server.servers[0].sockets[0].getsockname()[1]
                    self.url = f"http://127.0.0.1:{port}"
                ready.set()
                await serving
            finally:
                worker.stop()
                await work
                await store.close()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by start() and stop()
                self._failure = exc
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name="api-server", daemon=True)
        self._thread.start()
        LIVE.append(self)
        assert ready.wait(15), "the server did not start"
        assert self.url, f"the server did not start: {self._failure!r}"
        return self

    def request_stop(self) -> None:
        """Ask the server (and its worker) to stop; :meth:`stop` waits for it."""
        if self._server is not None:
            self._server.should_exit = True

    def halt(self) -> None:
        """Stop the server and wait for its thread (failures are kept for :meth:`stop`)."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(15)
        if self in LIVE:
            LIVE.remove(self)

    def stop(self) -> None:
        self.halt()
        assert self._thread is None or not self._thread.is_alive(), "the server did not stop"
        if self._failure is not None:
            raise self._failure

    def client(self, token: str | None = "tok-alice", **options: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token and self.tokens else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=20, **options)

    def async_client(self, token: str | None = "tok-alice", **options: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token and self.tokens else {}
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        return httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=30, limits=limits, **options
        )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiProject]:
    for name in [name for name in os.environ if name.startswith("FLOWRUNNER_")]:
        if name != URL_VARIABLE:  # where the PostgreSQL tests find their server
            monkeypatch.delenv(name)
    monkeypatch.setenv("FLOWRUNNER_POLL_SECONDS", "0.05")
    root = tmp_path / "project"
    for folder in ("flows", "personas"):
        (root / folder).mkdir(parents=True)
    made = ApiProject(root, f"api_steps_{uuid.uuid4().hex[:10]}")
    (root / made.pkg).mkdir()
    (root / made.pkg / "__init__.py").touch()
    (root / made.pkg / "steps.py").write_text(textwrap.dedent(CODE).lstrip("\n"), "utf-8")
    for name, body in FLOWS.items():
        made.flow(name, body)
    yield made
    for module in [m for m in sys.modules if m == made.pkg or m.startswith(made.pkg + ".")]:
        del sys.modules[module]


@pytest.fixture(scope="session")
def stopping() -> Iterator[list[LiveServer]]:
    """Servers asked to stop; each takes a few ticks of uvicorn's loop to wind down, so
    they are waited for (and their failures raised) once, at the end of the session."""
    servers: list[LiveServer] = []
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def start_server(
    project: ApiProject, stopping: list[LiveServer]
) -> Iterator[Callable[..., LiveServer]]:
    """Start a :class:`LiveServer` on the test's project (asked to stop after the test)."""
    started: list[LiveServer] = []

    def start(**options: Any) -> LiveServer:
        server = LiveServer(project.project(), **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.request_stop()
    stopping.extend(started)


@pytest.fixture(params=["sqlite", "postgres"])
def any_store_server(
    request: pytest.FixtureRequest, project: ApiProject, start_server: Callable[..., LiveServer]
) -> Iterator[LiveServer]:
    """A server with bearer tokens (:data:`TOKENS`) on each store in turn: its SQLite file,
    then a fresh PostgreSQL schema (skipped without a test server), dropped once the
    server has stopped."""
    if request.param == "sqlite":
        yield start_server(tokens=TOKENS)
        return
    loop = asyncio.new_event_loop()
    schema = fresh_schema()
    try:
        url = loop.run_until_complete(schema.__aenter__())
        try:
            server = LiveServer(project.project(), tokens=TOKENS, database_url=url).start()
            try:
                yield server
            finally:
                server.stop()
        finally:
            loop.run_until_complete(schema.__aexit__(None, None, None))
    finally:
        loop.close()


@pytest.fixture
def server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """A server with bearer tokens (:data:`TOKENS`)."""
    return start_server(tokens=TOKENS)


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    """A client of :func:`server` holding alice's token."""
    with server.client("tok-alice") as made:
        yield made


def launch(client: httpx.Client, flow: str, inputs: dict[str, Any] | None = None) -> str:
    response = client.post(f"/v1/flows/{flow}/runs", json={"inputs": inputs or {}})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def get_run(client: httpx.Client, run_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def step_statuses(run: dict[str, Any]) -> dict[str, str]:
    return {step["id"]: step["status"] for step in run["steps"]}


def wait_status(client: httpx.Client, run_id: str, *statuses: str, timeout: float = 15) -> Any:
    """Poll the run until its status is one of ``statuses`` (default: any end); the run."""
    wanted = statuses or TERMINAL

    def check() -> dict[str, Any] | None:
        run = get_run(client, run_id)
        return run if run["status"] in wanted else None

    return wait_for(check, timeout, f"run {run_id} to be {'/'.join(wanted)}")


def wait_step(client: httpx.Client, run_id: str, step: str, status: str) -> dict[str, Any]:
    """Poll the run until ``step`` has ``status``; the run."""

    def check() -> dict[str, Any] | None:
        run = get_run(client, run_id)
        return run if step_statuses(run).get(step) == status else None

    return wait_for(check, 15, f"step {step} of run {run_id} to be {status}")


def stored_events(client: httpx.Client, run_id: str, after: int = 0) -> list[dict[str, Any]]:
    response = client.get(f"/v1/runs/{run_id}/events", params={"after": after})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
