"""The run commands through the real console script, in a throw-away project.

Each call is a subprocess of ``flowrunner`` with ``--project`` and the scripted
backend; independent calls run side by side to keep the file fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.runner import service
from engine.store.sqlite import SqliteStore

from .conftest import MODELINE, ProjectKit, idle, launch, scripted, steps_by_id

FLOWRUNNER = Path(sys.executable).parent / "flowrunner"

REPLIES = """
replies:
  - match: "Greet"
    reply: "Hello there!\\nmood: warm"
  - reply: "generic answer"
"""

HELLO = """
version: 1
name: hello
inputs:
  name: {type: string, default: world}
  times: {type: integer, default: 1}
steps:
  - id: greet
    kind: agent
    persona: greeter
    prompt: "Greet {{ inputs.name }} {{ inputs.times }} times."
    fields: [mood]
  - id: frame
    kind: code
    needs: [greet]
    call: PKG.steps:frame
    with: {text: "{{ steps.greet.fields.mood }}"}
report: "{{ inputs.name }}: {{ steps.frame.data.framed }}"
"""

GATED = """
version: 1
name: gated
steps:
  - {id: draft, kind: agent, prompt: "Draft it"}
  - id: gate
    kind: approval
    needs: [draft]
    message: "Ship {{ steps.draft.output }}?"
    approvers: [lead]
    form: {audience: {type: string, enum: [team, public], default: team}}
  - {id: ship, kind: agent, needs: [gate], prompt: "Ship to {{ steps.gate.data.payload.audience }}"}
"""

FAILING = """
version: 1
name: failing
steps:
  - {id: first, kind: agent, prompt: "first"}
  - {id: boom, kind: code, needs: [first], call: "PKG.steps:boom"}
  - {id: after, kind: agent, needs: [boom], prompt: "after"}
"""

CODE = """
from pathlib import Path

def frame(ctx, text):
    return {"framed": "[" + text + "]"}

def boom(ctx):
    if not (Path(__file__).parent / "fixed").exists():
        raise RuntimeError("kaboom")
    return "fixed now"
"""


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Cli:
    root: Path
    pkg: str
    env: dict[str, str]

    def __call__(self, *args: str) -> Result:
        done = subprocess.run(
            [str(FLOWRUNNER), "--project", str(self.root), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root.parent,
            timeout=60,
        )
        assert "Traceback" not in done.stderr, done.stderr
        assert "Traceback" not in done.stdout, done.stdout
        return Result(done.returncode, done.stdout, done.stderr)

    def many(self, *calls: Sequence[str]) -> list[Result]:
        """Independent calls, run side by side."""
        with ThreadPoolExecutor(len(calls)) as pool:
            return list(pool.map(lambda args: self(*args), calls))


@pytest.fixture
def cli(kit: ProjectKit) -> Cli:
    kit.persona("greeter", "You greet people.\n")
    kit.code(CODE)
    (kit.root / "replies.yaml").write_text(REPLIES, "utf-8")
    kit.flow(HELLO, "hello")
    kit.flow(GATED, "gated")
    kit.flow(FAILING, "failing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRUNNER_")}
    env.update(
        FLOWRUNNER_AGENT_BACKEND="scripted",
        FLOWRUNNER_SCRIPTED_REPLIES="replies.yaml",
        FLOWRUNNER_POLL_SECONDS="0.05",
        PYTHONDONTWRITEBYTECODE="1",
        COLUMNS="200",
    )
    return Cli(kit.root, kit.pkg, env)


def one_line_error(result: Result, *fragments: str) -> None:
    assert result.code != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("flowrunner: ")
    for fragment in fragments:
        assert fragment in lines[0]


RUN_KEYS = {"id", "flow", "status", "band", "model", "inputs", "report", "error"}
RUN_KEYS |= {"created_at", "updated_at", "steps"}
STEP_KEYS = {"id", "kind", "status", "attempts", "output", "fields", "data", "error"}


def test_run_json_completes_and_prints_the_run(cli: Cli) -> None:
    result = cli("run", "hello", "--json", "--input", "name=Ann", "--input", "times=3")
    assert result.code == 0, result.err
    run = result.json()
    assert set(run) >= RUN_KEYS
    assert run["status"] == "completed"
    assert run["flow"] == "hello"
    assert run["inputs"] == {"name": "Ann", "times": 3}
    assert [s["id"] for s in run["steps"]] == ["greet", "frame"]
    greet, frame = run["steps"]
    assert set(greet) >= STEP_KEYS
    assert (greet["status"], greet["attempts"], greet["fields"]) == (
        "completed",
        1,
        {"mood": "warm"},
    )
    assert greet["output"] == "Hello there!\nmood: warm"
    assert frame["data"] == {"framed": "[warm]"}
    assert run["report"] == "Ann: [warm]"


def test_a_failing_run_exits_1_and_retry_finishes_it(cli: Cli) -> None:
    result = cli("run", "failing", "--json")
    assert result.code == 1, result.err
    run = result.json()
    assert run["status"] == "failed"
    assert "kaboom" in run["error"]
    assert [s["status"] for s in run["steps"]] == ["completed", "failed", "cancelled"]

    (cli.root / cli.pkg / "fixed").touch()
    retried = cli("retry", run["id"], "--json")
    assert retried.code == 0, retried.err
    again = retried.json()
    assert again["status"] == "completed"
    assert [(s["status"], s["attempts"]) for s in again["steps"]] == [
        ("completed", 1),
        ("completed", 2),
        ("completed", 1),
    ]


def test_an_invalid_flow_exits_2_with_diagnostics_and_stores_nothing(cli: Cli) -> None:
    broken = cli.root / "flows" / "broken.yaml"
    broken.write_text(
        MODELINE
        + "version: 1\nname: broken\nsteps:\n"
        + "  - {id: a, kind: agent, prompt: hi, needs: [ghost]}\n",
        "utf-8",
    )
    result = cli("run", str(broken), "--json")
    assert result.code == 2
    assert "FR004" in result.err and "ghost" in result.err
    assert result.out == ""
    listed = cli("runs", "--json")
    assert listed.code == 0 and listed.json() == []


def stored_runs(root: Path) -> int:
    """How many runs the project's database holds (0 when it was never created)."""
    path = root / ".flowrunner" / "flowrunner.db"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM runs").fetchone()[0])


def test_bad_inputs_exit_2_and_store_nothing(cli: Cli) -> None:
    results = cli.many(
        ("run", "hello", "--input", "nobody=1"),
        ("run", "hello", "--input", "times=many", "--json"),
        ("run", "hello", "--band", "deep"),
    )
    unknown, wrong_type, band = results
    one_line_error(unknown, "nobody")
    one_line_error(wrong_type, "times", "expected integer")
    one_line_error(band, "band", "deep")
    assert [r.code for r in results] == [2, 2, 2]
    assert [r.out for r in results] == ["", "", ""]
    assert stored_runs(cli.root) == 0


def test_detach_then_worker_until_idle_listing_and_cancel(cli: Cli) -> None:
    first = cli("run", "hello", "--detach")
    assert first.code == 0, first.err
    first_id = first.out.strip()
    assert first_id and len(first_id.split()) == 1
    second = cli("run", "hello", "--detach", "--json", "--input", "name=Bo")
    second_id = second.json()["id"]
    assert second_id != first_id
    cancelled = cli("cancel", second_id)
    assert cancelled.code == 0, cancelled.err

    runs = cli("runs", "--json").json()
    assert [r["id"] for r in runs] == [second_id, first_id]  # newest first
    for run in runs:
        assert {"id", "flow", "status", "created_at"} <= set(run)
        assert run["flow"] == "hello"
    assert [r["status"] for r in runs] == ["cancelled", "running"]  # running once stored
    assert runs[0]["created_at"] >= runs[1]["created_at"]

    worker = cli("worker", "--until-idle")
    assert worker.code == 0, worker.err

    shown, again = cli.many(("show", first_id, "--json"), ("cancel", first_id))
    run = shown.json()
    assert set(run) >= RUN_KEYS
    assert (run["id"], run["flow"], run["status"], run["band"], run["error"]) == (
        first_id,
        "hello",
        "completed",
        None,
        None,
    )
    assert run["model"] == "qwen3"
    assert run["inputs"] == {"name": "world", "times": 1}
    assert run["report"] == "world: [warm]"
    assert run["updated_at"] >= run["created_at"]
    for step in run["steps"]:
        assert set(step) >= STEP_KEYS
    assert [(s["id"], s["kind"], s["status"], s["attempts"]) for s in run["steps"]] == [
        ("greet", "agent", "completed", 1),
        ("frame", "code", "completed", 1),
    ]
    one_line_error(again, "completed")  # cancelling a finished run is refused


async def test_approve_and_reject_exit_codes(cli: Cli, kit: ProjectKit) -> None:
    store = SqliteStore(cli.root / ".flowrunner" / "flowrunner.db")
    await store.open()
    try:
        checked = kit.check(kit.root / "flows" / "gated.yaml")
        to_approve = await launch(kit, store, checked)
        await idle(kit, store, to_approve, scripted("the draft"))
        to_reject = await launch(kit, store, checked)
        await idle(kit, store, to_reject, scripted("the draft"))
        outsider, bad_payload, rejected = await asyncio.to_thread(
            cli.many,
            ("approve", to_approve, "gate", "--as", "mallory"),
            ("approve", to_approve, "gate", "--as", "lead", "--payload", '{"audience": "all"}'),
            ("reject", to_reject, "gate", "--as", "lead", "--comment", "no thanks"),
        )
        one_line_error(outsider, "mallory", "approvers")
        one_line_error(bad_payload, "audience", "all")
        assert rejected.code == 0, rejected.err
        assert "rejected" in rejected.out

        approved = await asyncio.to_thread(
            cli,
            "approve",
            to_approve,
            "gate",
            "--as",
            "lead",
            "--payload",
            '{"audience": "public"}',
        )
        assert approved.code == 0, approved.err
        assert "approved" in approved.out
        twice = await asyncio.to_thread(cli, "reject", to_approve, "gate", "--as", "lead")
        one_line_error(twice, "not waiting")

        gate = steps_by_id(await service.details(store, to_approve))["gate"]
        assert gate.data["approved"] is True
        assert (gate.data["by"], gate.data["payload"]) == ("lead", {"audience": "public"})
        refused = await service.details(store, to_reject)
        assert str(refused.run.status) == "failed"
        assert refused.run.error == "step 'gate' rejected: no thanks"
        decided = [e for e in await store.events(to_approve) if e.event == "gate_decided"]
        assert [e.payload["by"] for e in decided] == ["lead"]
    finally:
        await store.close()


def test_dry_run_prints_prompts_in_dag_order_and_stores_nothing(cli: Cli) -> None:
    result = cli("run", "hello", "--dry-run", "--input", "name=Zed")
    assert result.code == 0, result.err
    out = result.out
    headings = [line for line in out.splitlines() if line.startswith("## ")]
    assert headings == ["## greet (agent)", "## frame (code)"]
    assert "Greet Zed 1 times." in out
    assert out.index("Greet Zed") < out.index("## frame")
    assert "[mood of steps.greet]" in out
    assert stored_runs(cli.root) == 0


def test_graph_prints_mermaid_and_dot(cli: Cli) -> None:
    mermaid, dot = cli.many(("graph", "gated"), ("graph", "gated", "--format", "dot"))
    assert mermaid.code == 0 and dot.code == 0
    lines = mermaid.out.splitlines()
    assert lines[0] == "flowchart TD"
    assert "    draft --> gate" in lines and "    gate --> ship" in lines
    assert any(line.strip().startswith("gate{") for line in lines)
    assert dot.out.startswith('digraph "gated" {')
    assert "    draft -> gate;" in dot.out and "    gate -> ship;" in dot.out
    assert "shape=diamond" in dot.out
    assert dot.out.rstrip().endswith("}")


def test_errors_are_one_line_without_traceback(cli: Cli) -> None:
    too_long = "x" * 300  # longer than a file name may be
    results = cli.many(
        ("show", "nope"),
        ("run", "no-such-flow"),
        ("retry", "nope"),
        ("run", too_long),
        ("lint", too_long),
    )
    fragments = ["nope", "no-such-flow", "nope", f"no flow '{too_long}'", too_long]
    for result, fragment in zip(results, fragments, strict=True):
        one_line_error(result, fragment)


def test_a_bad_backend_setting_exits_2_before_the_run_is_stored(cli: Cli) -> None:
    """``run`` builds the agent backend before it launches: a setting that cannot
    work leaves no run behind that nothing would ever execute."""
    bad = {
        "FLOWRUNNER_AGENT_BACKEND": "command",
        "FLOWRUNNER_AGENT_COMMAND": "agent --read-only",
        "FLOWRUNNER_AGENT_ENV": "FLOWRUNNER_API_TOKEN",
    }
    cli.env.update(bad)
    result = cli("run", "hello", "--json")
    assert result.code == 2
    one_line_error(result, "FLOWRUNNER_AGENT_ENV cannot pass FLOWRUNNER_API_TOKEN")
    del cli.env["FLOWRUNNER_AGENT_COMMAND"]
    one_line_error(cli("run", "hello"), "FLOWRUNNER_AGENT_COMMAND is not set")
    assert stored_runs(cli.root) == 0
