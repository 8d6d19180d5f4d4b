"""A throw-away project per test, driven through real ``flowrunner`` processes.

Each test gets an :class:`E2EProject` in its own ``tmp_path``: ``flows/``,
``personas/``, a code package with a name of its own, an agent script, and the
environment the ``flowrunner`` console script runs with (its own SQLite file,
the ``command`` agent backend running the agent script, which gets
``E2E_AGENT_LOG`` through ``FLOWRUNNER_AGENT_ENV``, short leases and polls).
Tests launch runs with ``run --detach``, start ``worker`` processes, kill,
stop and cancel them, and poll the SQLite file directly (a WAL reader never
blocks the workers).

The agent script reads its prompt from stdin and obeys tags found in it:
``[[id NAME]]`` names the call in the agent log, ``[[sleep SECONDS]]`` makes it
slow, ``[[grandchild yes]]`` makes it start ``sleep 60`` (in its own process
group) before sleeping. It appends one JSON line to the agent log when it
starts and one when it ends (id, pid, process group, grandchild pid), then
prints the lines ``marker: NAME``, ``pid: PID`` and ``answer: NAME by PID``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

T = TypeVar("T")

FLOWRUNNER = Path(sys.executable).parent / "flowrunner"
"""The console script of the package under test (``python -m engine.cli.main`` has no main)."""

AGENT_SCRIPT = r"""
import json
import os
import re
import subprocess
import sys
import time

prompt = sys.stdin.read()


def tag(name, default=None):
    found = re.search(r"\[\[" + name + r" ([^\]]*)\]\]", prompt)
    return found.group(1).strip() if found else default


marker = tag("id", "unknown")
log = os.environ["E2E_AGENT_LOG"]


def note(event, **extra):
    entry = {"event": event, "id": marker, "pid": os.getpid(), "pgid": os.getpgrp()}
    entry.update(extra, t=time.time())
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


child = None
if tag("grandchild") is not None:
    child = subprocess.Popen(["sleep", "60"])
note("start", child=child.pid if child else None)
time.sleep(float(tag("sleep", "0")))
note("end")
print(f"marker: {marker}")
print(f"pid: {os.getpid()}")
print(f"answer: {marker} by {os.getpid()}")
"""

TERMINAL = ("completed", "failed", "cancelled")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something true; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout:g}s waiting for {what}"
            raise AssertionError(f"{message}\n{detail()}" if detail else message)
        time.sleep(interval)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text.rpartition(")")[2].split()


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie runs nothing)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def stopped(pid: int) -> bool:
    """True when ``pid`` is stopped by a signal (SIGSTOP)."""
    fields = _stat(pid)
    return fields is not None and fields[0] == "T"


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class E2EProject:
    """A project directory, the environment of its processes, and ways to look inside."""

    def __init__(self, root: Path, package: str) -> None:
        self.root = root
        self.package = package
        self.db_path = root / ".flowrunner" / "flowrunner.db"
        self.agent_log = root / "agent.log"
        self.agent_script = root / "agent.py"
        self.logs = root / "logs"
        self.processes: list[subprocess.Popen[Any]] = []
        self._db: sqlite3.Connection | None = None
        self._workers = 0
        for folder in (root, root / "flows", root / "personas", root / package, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
        self.agent_script.write_text(AGENT_SCRIPT)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRUNNER_")}
        self.env.update(
            {
                "FLOWRUNNER_DATABASE_URL": f"sqlite:///{self.db_path}",
                "FLOWRUNNER_AGENT_BACKEND": "command",
                "FLOWRUNNER_AGENT_COMMAND": shlex.join([sys.executable, str(self.agent_script)]),
                "FLOWRUNNER_LEASE_SECONDS": "3",
                "FLOWRUNNER_POLL_SECONDS": "0.1",
                "FLOWRUNNER_AGENT_ENV": "E2E_AGENT_LOG",  # the agent inherits nothing else
                "E2E_AGENT_LOG": str(self.agent_log),
                "PYTHONUNBUFFERED": "1",
            }
        )

    # Writing the project

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), "utf-8")
        return path

    def flow(self, name: str, body: str) -> Path:
        """``flows/NAME.yaml``: the modeline, ``version`` and ``name``, then ``body``."""
        head = f"# yaml-language-server: $schema=../schema.json\nversion: 1\nname: {name}\n"
        return self.write(f"flows/{name}.yaml", head + textwrap.dedent(body).lstrip("\n"))

    def code(self, source: str) -> None:
        """The module ``PACKAGE.steps``; name its functions in flows with :meth:`call`."""
        self.write(f"{self.package}/steps.py", source)

    def call(self, function: str) -> str:
        return f"{self.package}.steps:{function}"

    # Processes

    def cli(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(FLOWRUNNER), "--project", str(self.root), *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"flowrunner {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def launch(self, flow: str, *inputs: str) -> str:
        """``run FLOW --detach --json``: the new run's id (no worker runs it yet)."""
        args = ["run", flow, "--detach", "--json"]
        for pair in inputs:
            args += ["--input", pair]
        return str(json.loads(self.cli(*args).stdout)["id"])

    def worker(
        self, *, until_idle: bool = False, extra: Sequence[str] = (), **env: str
    ) -> subprocess.Popen[bytes]:
        """Start ``flowrunner worker`` (its output goes to ``logs/worker-N.log``), with
        ``extra`` options."""
        self._workers += 1
        args = [str(FLOWRUNNER), "--project", str(self.root), "worker", *extra]
        if until_idle:
            args.append("--until-idle")
        log = (self.logs / f"worker-{self._workers}.log").open("wb")
        with log:
            process = subprocess.Popen(
                args, cwd=self.root, env={**self.env, **env}, stdout=log, stderr=log
            )
        self.processes.append(process)
        return process

    def serve(self, *extra: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
        """Start ``flowrunner serve`` (with its worker, unless ``extra`` says
        ``--no-worker``) on a free loopback port; the process and its base URL once
        ``/healthz`` answers."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        args = [str(FLOWRUNNER), "--project", str(self.root), "serve", "--port", str(port)]
        args += extra
        log = (self.logs / f"worker-serve-{port}.log").open("wb")
        with log:
            process = subprocess.Popen(
                args, cwd=self.root, env={**self.env, **env}, stdout=log, stderr=log
            )
        self.processes.append(process)
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return process.poll() is not None  # exited: fail below, not by timing out

        self.wait(healthy, 30, "serve to answer")
        assert process.poll() is None, self.worker_logs()
        return process, base

    def worker_logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.logs.glob("worker-*.log"))
        )

    @staticmethod
    def kill9(process: subprocess.Popen[bytes]) -> None:
        """SIGKILL and reap it (a zombie would still look alive to the other workers)."""
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def finish(self, process: subprocess.Popen[bytes], timeout: float = 30) -> int:
        """Wait for a process to exit by itself; its exit code."""
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {process.pid} still running after {timeout:g}s\n{self.worker_logs()}"
            ) from None

    # Looking inside

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            assert self.db_path.exists(), "no database yet: launch a run first"
            self._db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            self._db.row_factory = sqlite3.Row
        return self._db

    def query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        return list(self.db.execute(sql, params).fetchall())

    def run_status(self, run_id: str) -> str:
        return str(self.query("SELECT status FROM runs WHERE id = ?", run_id)[0]["status"])

    def run_row(self, run_id: str) -> dict[str, Any]:
        return dict(self.query("SELECT * FROM runs WHERE id = ?", run_id)[0])

    def steps(self, run_id: str) -> dict[str, dict[str, Any]]:
        rows = self.query("SELECT * FROM steps WHERE run_id = ? ORDER BY position", run_id)
        return {row["step_id"]: dict(row) for row in rows}

    def step_statuses(self, run_id: str) -> dict[str, str]:
        return {step_id: row["status"] for step_id, row in self.steps(run_id).items()}

    def events(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM events WHERE run_id = ? ORDER BY id", run_id)
        return [{**dict(row), "payload": json.loads(row["payload"])} for row in rows]

    def event_names(self, run_id: str, step_id: str | None = None) -> list[str]:
        return [
            e["event"] for e in self.events(run_id) if step_id is None or e["step_id"] == step_id
        ]

    def agent_calls(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT * FROM agent_calls WHERE run_id = ? ORDER BY step_id, attempt, sequence",
            run_id,
        )
        return [dict(row) for row in rows]

    def wait(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        """:func:`wait_for`, showing the workers' output and the agent log on a timeout."""
        return wait_for(predicate, timeout, what, detail=self.diagnostics)

    def diagnostics(self) -> str:
        runs = (
            [row["id"] for row in self.query("SELECT id FROM runs")]
            if self.db_path.exists()
            else []
        )
        text = "\n".join(f"run {run_id}:\n{self.describe(run_id)}" for run_id in runs)
        agents = self.agent_log.read_text() if self.agent_log.exists() else ""
        return f"{text or self.worker_logs()}\nagent log:\n{agents[-3000:]}"

    def agent_entries(self) -> list[dict[str, Any]]:
        """The agent log; a line still being written (no newline yet) is left out."""
        if not self.agent_log.exists():
            return []
        text = self.agent_log.read_text()
        return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]

    def starts(self, marker: str) -> int:
        """How many times the agent was called with ``[[id MARKER]]``."""
        return sum(e["event"] == "start" and e["id"] == marker for e in self.agent_entries())

    def started(self, marker: str) -> bool:
        return self.starts(marker) > 0

    def ended(self, marker: str) -> bool:
        return any(e["event"] == "end" and e["id"] == marker for e in self.agent_entries())

    def describe(self, run_id: str) -> str:
        """What a failed assertion should show: steps, events, the workers' output."""
        steps = {
            k: (v["status"], v["attempts"], v["crashes"], v["error"])
            for k, v in self.steps(run_id).items()
        }
        events = [(e["id"], e["step_id"], e["event"], e["payload"]) for e in self.events(run_id)]
        return f"steps: {steps}\nevents: {events}\n{self.worker_logs()}"

    def wait_terminal(self, run_id: str, timeout: float) -> str:
        return self.wait(
            lambda: (status := self.run_status(run_id)) in TERMINAL and status,
            timeout,
            f"run {run_id} to end",
        )

    # Cleaning up

    def leftover_agents(self) -> list[int]:
        """Processes started by the agent script (agents, grandchildren) still running."""
        groups = {e["pgid"] for e in self.agent_entries()}
        pids = {e["pid"] for e in self.agent_entries()}
        pids |= {e["child"] for e in self.agent_entries() if e.get("child")}
        found = set()
        for pgid in groups:
            found.update(group_members(pgid))
        found.update(pid for pid in pids if alive(pid))
        mine = str(self.agent_script)
        return sorted(
            pid for pid in found if mine in _cmdline(pid) or _cmdline(pid).startswith("sleep ")
        )

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
                    process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        for pid in self.leftover_agents():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._db is not None:
            self._db.close()
            self._db = None


@pytest.fixture
def project(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[E2EProject]:
    """A fresh project whose code package is named after the test module."""
    module = request.module.__name__.rpartition(".")[2]
    made = E2EProject(tmp_path / "project", f"e2e_{module}_steps")
    try:
        yield made
    finally:
        made.close()
