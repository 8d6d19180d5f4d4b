"""Execution semantics of runs, driven in-process: a real SQLite store (PostgreSQL where
said), a real worker."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.agents import AgentReply, AgentRequest, CommandBackend, OnDelta, OpenAIBackend
from engine.errors import Conflict, InvalidInput
from engine.runner import service
from engine.runner.outputs import SEPARATOR
from engine.runner.worker import Worker
from engine.store.base import Capacity, StepResult, Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore
from tests.fakes.chat_server import ChatServer
from tests.postgres import fresh_schema
from tests.store.conftest import opened_store

from .conftest import (
    ProjectKit,
    RecordingBackend,
    events,
    finish,
    is_finished,
    launch,
    replies,
    run_flow,
    scripted,
    statuses,
    steps_by_id,
)


def positions(found: list[Any], name: str) -> dict[str, int]:
    """Index in the event log of the first ``name`` event of each step."""
    seen: dict[str, int] = {}
    for index, event in enumerate(found):
        if event.event == name and event.step_id not in seen:
            seen[event.step_id] = index
    return seen


class FakeClock:
    """A clock the test moves: ``advance`` jumps ahead; it never moves by itself."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- DAG order and parallel waves ---------------------------------------------


class Barrier:
    """A backend whose ``left`` and ``right`` calls each wait until both have started."""

    name = "barrier"

    def __init__(self) -> None:
        self.started: set[str] = set()
        self.both = asyncio.Event()
        self.overlapped = False

    async def complete(self, request: AgentRequest, on_delta: OnDelta | None = None) -> AgentReply:
        if request.step_id in ("left", "right"):
            self.started.add(request.step_id)
            if len(self.started) == 2:
                self.both.set()
            await asyncio.wait_for(self.both.wait(), 5)
            self.overlapped = True
        return AgentReply(f"out of {request.step_id}", self.name)

    async def aclose(self) -> None:
        pass


async def test_steps_start_only_after_their_needs_and_waves_run_in_parallel(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: sink, kind: agent, needs: [left, right], prompt: "{{ steps.left.output }}"}
          - {id: left, kind: agent, needs: [root], prompt: "l"}
          - {id: right, kind: agent, needs: [root], prompt: "r"}
          - {id: root, kind: agent, prompt: "go"}
          - {id: tail, kind: agent, needs: [sink], prompt: "t"}
        """
    )
    backend = Barrier()
    details = await run_flow(kit, store, checked, backend)

    assert str(details.run.status) == "completed"
    assert details.steps[0].id == "root"
    assert backend.overlapped, "left and right never ran at the same time"
    log = await events(store, details.run.id)
    started, completed = positions(log, "step_started"), positions(log, "step_completed")
    needs = {"left": ["root"], "right": ["root"], "sink": ["left", "right"], "tail": ["sink"]}
    for step, wanted in needs.items():
        for need in wanted:
            assert completed[need] < started[step], f"{step} started before {need} settled"
    # the second wave started both of its steps before either finished
    assert max(started["left"], started["right"]) < min(completed["left"], completed["right"])
    assert [e.id for e in log] == sorted(e.id for e in log)
    assert log[-1].event == "run_completed"


async def test_max_parallel_caps_agent_steps_of_one_run(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        max_parallel: 1
        steps:
          - {id: a, kind: agent, prompt: "a"}
          - {id: b, kind: agent, prompt: "b"}
          - {id: c, kind: agent, prompt: "c"}
        """
    )
    backend = Sleepy(0.05)
    details = await run_flow(kit, store, checked, backend)
    assert str(details.run.status) == "completed"
    assert backend.peak == 1


# --- when and bands ----------------------------------------------------------------


async def test_when_false_skips_the_step_and_its_dependents_still_run(
    kit: ProjectKit, store: SqliteStore
) -> None:
    module = kit.code(
        """
        def summary(ctx, seen, skipped):
            return {"seen": seen, "skipped": skipped, "status": ctx.steps["maybe"].status}
        """
    )
    checked = kit.checked(
        f"""
        version: 1
        name: x
        inputs:
          flag: {{type: boolean, default: false}}
        steps:
          - {{id: first, kind: agent, prompt: "go"}}
          - id: maybe
            kind: agent
            needs: [first]
            when: inputs.flag and steps.first.output == "go on"
            prompt: "never asked"
          - id: after
            kind: code
            needs: [maybe]
            call: {module}:summary
            with:
              seen: "[{{{{ steps.maybe.output }}}}]"
              skipped: "{{{{ steps.maybe.skipped }}}}"
        """
    )
    backend = replies("go on")
    details = await run_flow(kit, store, checked, backend)

    assert statuses(details) == {"first": "completed", "maybe": "skipped", "after": "completed"}
    assert [r.step_id for r in backend.requests] == ["first"]
    assert steps_by_id(details)["after"].data == {
        "seen": "[]",
        "skipped": "True",
        "status": "skipped",
    }
    skipped = [e for e in await events(store, details.run.id) if e.event == "step_skipped"]
    assert [(e.step_id, e.payload["reason"]) for e in skipped] == [("maybe", "`when` is false")]

    # the same flow with the flag set runs the step
    details = await run_flow(kit, store, checked, replies("go on"), {"flag": True})
    assert statuses(details)["maybe"] == "completed"


async def test_a_when_that_errors_fails_the_step(kit: ProjectKit, store: SqliteStore) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: a, kind: agent, prompt: "go"}
          - {id: b, kind: agent, needs: [a], when: "steps.a.data.missing > 1", prompt: "b",
             retries: 3}
        """
    )
    details = await run_flow(kit, store, checked, replies("plain text"))
    b = steps_by_id(details)["b"]
    assert (str(b.status), b.attempts) == ("failed", 1)  # a template error is not retried
    assert "when" in b.error and "Undefined" in b.error
    assert str(details.run.status) == "failed"


async def test_a_when_that_is_undefined_fails_the_step_once_with_a_clear_error(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: a, kind: agent, prompt: "go"}
          - {id: b, kind: agent, needs: [a], when: "steps.a.data.approved", prompt: "b",
             retries: 2}
        """
    )
    details = await run_flow(kit, store, checked, replies("plain text, so data is none"))
    b = steps_by_id(details)["b"]
    assert str(b.status) == "failed"
    assert b.error.startswith("step 'b' when: UndefinedError:")
    assert b.attempts == 1  # like every other template error: a retry would fail the same way


async def test_bands_exclude_steps_which_still_satisfy_their_dependents(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        bands: [quick, deep]
        steps:
          - {id: scan, kind: agent, prompt: "scan in {{ band }}"}
          - {id: deep_dive, kind: agent, bands: [deep], needs: [scan], prompt: "dive"}
          - id: wrap
            kind: agent
            needs: [deep_dive]
            prompt: "dive said [{{ steps.deep_dive.output }}] {{ steps.deep_dive.status }}"
        """
    )
    backend = RecordingBackend(lambda request, n: f"answer {n}")
    details = await run_flow(kit, store, checked, backend)  # default band: the first, quick

    assert details.run.band == "quick"
    assert statuses(details) == {"scan": "completed", "deep_dive": "excluded", "wrap": "completed"}
    assert [r.prompt for r in backend.requests] == ["scan in quick", "dive said [] excluded"]
    log = await events(store, details.run.id)
    assert [e.step_id for e in log if e.event == "step_excluded"] == ["deep_dive"]
    assert [e.step_id for e in log if e.event == "step_started"] == ["scan", "wrap"]
    assert steps_by_id(details)["deep_dive"].attempts == 0

    backend = RecordingBackend(lambda request, n: f"answer {n}")
    details = await run_flow(kit, store, checked, backend, band="deep")
    assert statuses(details) == {"scan": "completed", "deep_dive": "completed", "wrap": "completed"}
    assert backend.requests[-1].prompt == "dive said [answer 1] completed"


# --- agent output: fields and JSON ----------------------------------------------------


FIELDS_FLOW = """
version: 1
name: x
steps:
  - id: judge
    kind: agent
    prompt: "judge"
    fields: [verdict, score]
    retries: RETRIES
"""


async def test_fields_are_the_first_matching_line_any_case_trimmed(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(FIELDS_FLOW.replace("RETRIES", "0"))
    text = "Some prose.\nVERDICT:   approve with care  \nverdict: second\nScore: 7\nscore: 8\n"
    details = await run_flow(kit, store, checked, replies(text))
    judge = steps_by_id(details)["judge"]
    assert str(judge.status) == "completed"
    assert judge.fields == {"verdict": "approve with care", "score": "7"}
    assert judge.output == text


async def test_a_missing_field_fails_the_attempt_and_a_retry_repairs_it(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(FIELDS_FLOW.replace("RETRIES", "1"))
    backend = replies("verdict: ok\n(no score)", "verdict: ok\nscore: 3")
    details = await run_flow(kit, store, checked, backend)

    judge = steps_by_id(details)["judge"]
    assert (str(judge.status), judge.attempts, judge.fields) == (
        "completed",
        2,
        {"verdict": "ok", "score": "3"},
    )
    assert len(backend.requests) == 2
    retrying = [e for e in await events(store, details.run.id) if e.event == "step_retrying"]
    assert len(retrying) == 1 and "score" in retrying[0].payload["error"]
    calls = await store.agent_calls(details.run.id, "judge")
    assert [(c.attempt, c.output) for c in calls] == [
        (1, "verdict: ok\n(no score)"),
        (2, "verdict: ok\nscore: 3"),
    ]


async def test_a_missing_field_without_retries_fails_the_run(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(FIELDS_FLOW.replace("RETRIES", "0"))
    details = await run_flow(kit, store, checked, replies("score: 1"))
    judge = steps_by_id(details)["judge"]
    assert str(judge.status) == "failed"
    assert "verdict" in judge.error
    assert str(details.run.status) == "failed"
    assert details.run.error.startswith("step 'judge' failed:")


JSON_FLOW = """
version: 1
name: x
steps:
  - id: rate
    kind: agent
    prompt: "rate it"
    output:
      type: json
      schema:
        type: object
        required: [score]
        properties: {score: {type: integer}}
  - id: raw
    kind: agent
    prompt: "raw json"
    output: json
"""


async def test_json_output_accepts_a_fenced_block_and_checks_the_schema(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(JSON_FLOW)
    backend = scripted(
        ("rate it", 'Here you go:\n```json\n{"score": 4, "why": "fine"}\n```\nThanks.'),
        ("raw json", '  [1, "two", null]  '),
    )
    details = await run_flow(kit, store, checked, backend)
    found = steps_by_id(details)
    assert str(details.run.status) == "completed"
    assert found["rate"].data == {"score": 4, "why": "fine"}
    assert found["raw"].data == [1, "two", None]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ('{"score": "high"}', "does not match the schema at score"),
        ('{"other": 1}', "does not match the schema"),
        ("score: 4", "not valid JSON"),
    ],
)
async def test_json_output_that_does_not_parse_or_validate_fails_the_attempt(
    kit: ProjectKit, store: SqliteStore, reply: str, message: str
) -> None:
    checked = kit.checked(JSON_FLOW)
    backend = scripted(("rate it", reply), ("raw json", "{}"))
    details = await run_flow(kit, store, checked, backend)
    rate = steps_by_id(details)["rate"]
    assert str(rate.status) == "failed"
    assert message in rate.error
    assert rate.data is None
    assert str(details.run.status) == "failed"


# --- retries, backoff, timeouts ---------------------------------------------------------


async def test_retry_delay_doubles_each_attempt(kit: ProjectKit, store: SqliteStore) -> None:
    module = kit.code(
        """
        def flaky(ctx):
            raise RuntimeError("still broken")
        """
    )
    checked = kit.checked(
        f"""
        version: 1
        name: x
        steps:
          - {{id: flaky, kind: code, call: "{module}:flaky", retries: 3, retry_delay: 10s}}
        """
    )
    clock = FakeClock()
    run_id = await launch(kit, store, checked, now=clock())
    worker = Worker(store, kit.project, replies("unused"), run_id=run_id, clock=clock)

    async def done() -> bool:
        clock.advance(3)  # fake time passes 3 s per loop of the worker
        return await is_finished(store, run_id)

    await asyncio.wait_for(worker.run(until=done), 20)
    log = await events(store, run_id)
    retrying = [e for e in log if e.event == "step_retrying"]
    delays = [e.payload["retry_at"] - e.at for e in retrying]
    assert delays == pytest.approx([10.0, 20.0, 40.0])
    assert [e.payload["attempt"] for e in retrying] == [1, 2, 3]
    started = [e for e in log if e.event == "step_started"]
    for retry, start in zip(retrying, started[1:], strict=True):
        assert start.at >= retry.payload["retry_at"], "an attempt started before its retry_at"
    flaky = steps_by_id(await service.details(store, run_id))["flaky"]
    assert (str(flaky.status), flaky.attempts) == ("failed", 4)
    assert flaky.error == "RuntimeError: still broken (after 4 attempts)"


class Sleepy(RecordingBackend):
    """Sleeps ``delays[n]`` seconds on the n-th call before answering."""

    def __init__(self, *delays: float) -> None:
        super().__init__(lambda request, n: f"answer {n}")
        self.delays = delays
        self.calls = 0
        self.cancelled = 0
        self.running = 0
        self.peak = 0

    async def complete(self, request: AgentRequest, on_delta: OnDelta | None = None) -> AgentReply:
        delay = self.delays[min(self.calls, len(self.delays) - 1)]
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return await super().complete(request, on_delta)


async def test_a_step_timeout_fails_the_attempt_and_the_retry_runs(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: slow, kind: agent, prompt: "hurry", timeout: 1s, retries: 1}
        """
    )
    backend = Sleepy(30, 0)
    started = time.monotonic()
    details = await run_flow(kit, store, checked, backend)
    assert time.monotonic() - started < 10
    slow = steps_by_id(details)["slow"]
    assert (str(slow.status), slow.attempts, slow.output) == ("completed", 2, "answer 0")
    assert backend.cancelled == 1
    retrying = [e for e in await events(store, details.run.id) if e.event == "step_retrying"]
    assert [e.payload["error"] for e in retrying] == ["timed out after 1s"]


async def test_a_step_timeout_without_retries_fails_the_run(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: slow, kind: agent, prompt: "hurry", timeout: 1s}
          - {id: next, kind: agent, needs: [slow], prompt: "never"}
        """
    )
    details = await run_flow(kit, store, checked, Sleepy(30))
    assert statuses(details) == {"slow": "failed", "next": "cancelled"}
    assert steps_by_id(details)["slow"].error == "timed out after 1s"
    assert details.run.error == "step 'slow' failed: timed out after 1s"


async def test_cancelling_a_run_stops_its_running_step(kit: ProjectKit, store: SqliteStore) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: slow, kind: agent, prompt: "slow"}
          - {id: next, kind: agent, needs: [slow], prompt: "next"}
        """
    )
    backend = Sleepy(30)
    run_id = await launch(kit, store, checked)
    worker = Worker(store, kit.project, backend, run_id=run_id)
    task = asyncio.create_task(worker.run(until=lambda: is_finished(store, run_id)))
    for _ in range(200):
        if backend.calls:
            break
        await asyncio.sleep(0.01)
    assert backend.calls == 1
    started = time.monotonic()
    cancelled = await service.cancel(store, run_id, time.time())
    assert str(cancelled.status) == "cancelled"
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 3
    assert backend.cancelled == 1
    details = await service.details(store, run_id)
    assert statuses(details) == {"slow": "cancelled", "next": "cancelled"}
    log = [e.event for e in await events(store, run_id)]
    assert "step_completed" not in log
    assert log[-1] == "run_cancelled"


async def test_a_worker_for_one_run_is_idle_when_that_run_is(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: a, kind: agent, prompt: "a"}
        """
    )
    other = await launch(kit, store, checked)  # ready work, but not this worker's run
    mine = await launch(kit, store, checked)
    worker = Worker(store, kit.project, replies("done"), run_id=mine)
    try:
        await asyncio.wait_for(worker.run(until_idle=True), 1.5)
    except TimeoutError:
        pytest.fail("the worker for one run never became idle")
    assert str((await store.get_run(mine)).status) == "completed"
    assert str((await store.get_run(other)).status) == "running"


# --- code steps ------------------------------------------------------------------------


async def test_an_async_code_step_is_cancelled_by_its_timeout(
    kit: ProjectKit, store: SqliteStore
) -> None:
    marker = kit.root / "finished"
    module = kit.code(
        f"""
        import asyncio
        from pathlib import Path

        async def slow(ctx):
            await asyncio.sleep(30)
            Path({str(marker)!r}).touch()
        """
    )
    checked = kit.checked(
        f"""
        version: 1
        name: x
        steps:
          - {{id: slow, kind: code, call: "{module}:slow", timeout: 1s}}
        """
    )
    started = time.monotonic()
    details = await run_flow(kit, store, checked, replies("unused"))
    assert time.monotonic() - started < 10
    assert steps_by_id(details)["slow"].error == "timed out after 1s"
    assert not marker.exists()


async def test_code_step_return_values(kit: ProjectKit, store: SqliteStore) -> None:
    module = kit.code(
        """
        def text(ctx):
            return "plain text"

        def mapping(ctx, n):
            return {"n": n, "nested": {"ok": True}, "word": "café"}

        def listing(ctx):
            return [1, "two", None]

        def nothing(ctx):
            return None

        async def later(ctx, n):
            import asyncio
            await asyncio.sleep(0.01)
            return {"awaited": n}
        """
    )
    checked = kit.checked(
        f"""
        version: 1
        name: x
        steps:
          - {{id: text, kind: code, call: "{module}:text"}}
          - {{id: mapping, kind: code, call: "{module}:mapping", with: {{n: 3}}}}
          - {{id: listing, kind: code, call: "{module}:listing"}}
          - {{id: nothing, kind: code, call: "{module}:nothing"}}
          - {{id: later, kind: code, call: "{module}:later", with: {{n: "{{{{ 2 + 2 }}}}"}}}}
        """
    )
    details = await run_flow(kit, store, checked, replies("unused"))
    found = steps_by_id(details)
    assert str(details.run.status) == "completed"
    assert (found["text"].output, found["text"].data) == ("plain text", None)
    assert found["mapping"].data == {"n": 3, "nested": {"ok": True}, "word": "café"}
    assert json.loads(found["mapping"].output) == found["mapping"].data
    assert "café" in found["mapping"].output
    assert (found["listing"].data, json.loads(found["listing"].output)) == (
        [1, "two", None],
        [1, "two", None],
    )
    assert (found["nothing"].output, found["nothing"].data) == ("", None)
    assert found["later"].data == {"awaited": "4"}  # a rendered `with` string stays a string


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("raise ValueError('bad thing')", "ValueError: bad thing"),
        ("return {1, 2}", "the step returned a set, which is not JSON"),
        ("return 'x' + 1", "TypeError: can only concatenate str"),
    ],
)
async def test_code_step_errors_fail_the_step_with_their_message(
    kit: ProjectKit, store: SqliteStore, body: str, error: str
) -> None:
    module = kit.code(f"def broken(ctx):\n    {body}\n")
    checked = kit.checked(
        f"""
        version: 1
        name: x
        steps:
          - {{id: broken, kind: code, call: "{module}:broken"}}
        """
    )
    details = await run_flow(kit, store, checked, replies("unused"))
    broken = steps_by_id(details)["broken"]
    assert str(broken.status) == "failed"
    assert error in broken.error
    assert "Traceback" not in broken.error and "\n" not in broken.error
    assert details.run.error == f"step 'broken' failed: {broken.error}"


async def test_async_code_step_exception_is_reported(kit: ProjectKit, store: SqliteStore) -> None:
    module = kit.code(
        """
        async def broken(ctx):
            raise KeyError("gone")
        """
    )
    checked = kit.checked(
        f"""
        version: 1
        name: x
        steps:
          - {{id: broken, kind: code, call: "{module}:broken"}}
        """
    )
    details = await run_flow(kit, store, checked, replies("unused"))
    assert steps_by_id(details)["broken"].error == "KeyError: 'gone'"


async def test_ctx_carries_the_run_and_only_ancestor_steps(
    kit: ProjectKit, store: SqliteStore
) -> None:
    module = kit.code(
        """
        def look(ctx, label):
            try:
                ctx.steps["stranger"]
                stranger = "visible"
            except KeyError as exc:
                stranger = str(exc)
            try:
                ctx.steps["nosuch"]
                nosuch = "visible"
            except KeyError:
                nosuch = "refused"
            root = ctx.steps["root"]
            return {
                "keys": list(ctx.steps),
                "len": len(ctx.steps),
                "root": [root.status, root.output, dict(root.fields), root.data, root.skipped],
                "middle": ctx.steps["middle"].data,
                "stranger": stranger,
                "nosuch": nosuch,
                "inputs": dict(ctx.inputs),
                "band": ctx.band,
                "params": dict(ctx.params),
                "run_id": ctx.run_id,
                "flow": ctx.flow,
                "label": label,
            }

        def middle(ctx):
            return {"m": 1}
        """
    )
    checked = kit.checked(
        f"""
        version: 1
        name: x
        bands: [std]
        inputs:
          topic: {{type: string, default: "cats"}}
        steps:
          - {{id: root, kind: agent, prompt: "root", fields: [tone]}}
          - {{id: stranger, kind: agent, prompt: "stranger"}}
          - {{id: middle, kind: code, needs: [root], call: "{module}:middle"}}
          - id: look
            kind: code
            needs: [middle]
            call: "{module}:look"
            with: {{label: "about {{{{ inputs.topic }}}}"}}
        """
    )
    backend = scripted(("root", "root says\ntone: calm"), "other")
    details = await run_flow(kit, store, checked, backend)
    data = steps_by_id(details)["look"].data
    assert data["keys"] == ["root", "middle"]
    assert data["len"] == 2
    assert data["root"] == ["completed", "root says\ntone: calm", {"tone": "calm"}, None, False]
    assert data["middle"] == {"m": 1}
    assert "'stranger' is not a step that 'look' needs" in data["stranger"]
    assert data["nosuch"] == "refused"
    assert data["inputs"] == {"topic": "cats"}
    assert (data["band"], data["flow"], data["run_id"]) == ("std", "x", details.run.id)
    assert data["params"] == {"label": "about cats"} and data["label"] == "about cats"


async def test_dispatches_are_recorded_with_sequence_numbers(
    kit: ProjectKit, store: SqliteStore
) -> None:
    kit.persona("helper", "You help.\n")
    module = kit.code(
        """
        def sync_step(ctx):
            first = ctx.dispatch_sync("helper", "question one")
            second = ctx.dispatch_sync("helper", "question two")
            return [first, second]

        async def async_step(ctx):
            return {"answer": await ctx.dispatch("helper", "question three")}
        """
    )
    checked = kit.checked(
        f"""
        version: 1
        name: x
        steps:
          - {{id: sync_step, kind: code, call: "{module}:sync_step"}}
          - {{id: async_step, kind: code, call: "{module}:async_step"}}
        """
    )
    backend = RecordingBackend(lambda request, n: "reply to " + request.prompt.split("---")[-1])
    details = await run_flow(kit, store, checked, backend)
    found = steps_by_id(details)
    assert str(details.run.status) == "completed"
    assert found["sync_step"].data == ["reply to \n\nquestion one", "reply to \n\nquestion two"]
    assert found["async_step"].data == {"answer": "reply to \n\nquestion three"}

    recorded = await store.agent_calls(details.run.id)
    by_step = {
        step: [
            (c.sequence, c.attempt, c.persona, c.prompt, c.output)
            for c in recorded
            if c.step_id == step
        ]
        for step in ("sync_step", "async_step")
    }
    assert by_step["sync_step"] == [
        (1, 1, "helper", f"You help.{SEPARATOR}question one", "reply to \n\nquestion one"),
        (2, 1, "helper", f"You help.{SEPARATOR}question two", "reply to \n\nquestion two"),
    ]
    assert by_step["async_step"] == [
        (1, 1, "helper", f"You help.{SEPARATOR}question three", "reply to \n\nquestion three")
    ]
    assert sorted((r.step_id, r.sequence) for r in backend.requests) == [
        ("async_step", 1),
        ("sync_step", 1),
        ("sync_step", 2),
    ]


@pytest.mark.parametrize(
    ("persona", "error"),
    [
        ("../etc/passwd", "DispatchError: persona '../etc/passwd' is not in this run's snapshot"),
        ("ghost", "DispatchError: persona 'ghost' is not in this run's snapshot"),
    ],
)
async def test_a_dispatch_to_an_unknown_persona_fails_the_attempt(
    kit: ProjectKit, store: SqliteStore, persona: str, error: str
) -> None:
    module = kit.code(
        f"""
        def ask(ctx):
            return ctx.dispatch_sync({persona!r}, "hi")
        """
    )
    checked = kit.checked(
        f"""
        version: 1
        name: x
        steps:
          - {{id: ask, kind: code, call: "{module}:ask", retries: 1}}
        """
    )
    backend = replies("unused")
    details = await run_flow(kit, store, checked, backend)
    ask = steps_by_id(details)["ask"]
    assert (str(ask.status), ask.attempts) == ("failed", 2)  # a failed attempt: retried
    assert ask.error.startswith(error)
    assert backend.requests == []


# --- reports ---------------------------------------------------------------------------


async def test_the_default_report_is_the_output_of_each_sink(
    kit: ProjectKit, store: SqliteStore
) -> None:
    module = kit.code("def empty(ctx):\n    return ''\n")
    checked = kit.checked(
        f"""
        version: 1
        name: x
        steps:
          - {{id: a, kind: agent, prompt: "a"}}
          - {{id: b, kind: agent, needs: [a], prompt: "b"}}
          - {{id: c, kind: agent, needs: [a], prompt: "c"}}
          - {{id: quiet, kind: code, needs: [a], call: "{module}:empty"}}
        """
    )
    backend = RecordingBackend(lambda request, n: f"output of {request.step_id}")
    details = await run_flow(kit, store, checked, backend)
    assert details.run.report == "## b\n\noutput of b\n\n## c\n\noutput of c"


async def test_a_report_template_sees_inputs_steps_and_run(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        inputs:
          who: {type: string}
        steps:
          - {id: a, kind: agent, prompt: "a", fields: [mood]}
          - {id: b, kind: agent, needs: [a], when: "false", prompt: "b"}
        report: |
          # For {{ inputs.who }} ({{ run.flow }}, {{ run.model }}, {{ run.id }})
          {{ steps.a.output }} / {{ steps.a.fields.mood }} / [{{ steps.b.output }}]
          {%- if steps.b.skipped %} b skipped{% endif %}
        """
    )
    details = await run_flow(
        kit, store, checked, replies("mood: sunny"), {"who": "Ann"}, model="m1"
    )
    run = details.run
    assert str(run.status) == "completed"
    assert run.report == (f"# For Ann (x, m1, {run.id})\nmood: sunny / sunny / [] b skipped\n")


async def test_a_report_that_fails_to_render_fails_the_run(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: a, kind: agent, prompt: "a"}
        report: "{{ steps.a.data.missing }}"
        """
    )
    details = await run_flow(kit, store, checked, replies("text"))
    assert str(details.run.status) == "failed"
    assert statuses(details) == {"a": "completed"}
    assert details.run.report is None
    assert "report" in details.run.error and "UndefinedError" in details.run.error
    log = await events(store, details.run.id)
    assert log[-1].event == "run_failed"


# --- the composed prompt and the real backends ------------------------------------------


PROMPT_FLOW = """
version: 1
name: x
inputs:
  topic: {type: string}
contracts:
  cite: |
    Cite file:line.
  brief: "Be brief."
defaults:
  persona: reviewer
steps:
  - id: review
    kind: agent
    contracts: [cite, brief]
    prompt: |
      Review {{ inputs.topic }}.
      End with `verdict: <word>`.
    fields: [verdict]
  - id: bare
    kind: agent
    persona: plain
    needs: [review]
    prompt: "Say {{ steps.review.fields.verdict }}"
"""

EXPECTED_REVIEW = (
    f"You review code.\nCarefully.{SEPARATOR}Review the parser.\nEnd with `verdict: <word>`."
    "\n\nCite file:line.\n\nBe brief."
)


async def test_the_composed_prompt_is_persona_separator_prompt_and_contracts(
    kit: ProjectKit, store: SqliteStore
) -> None:
    kit.persona("reviewer", "You review code.\nCarefully.\n\n")
    kit.persona("plain", "Plain.")
    checked = kit.checked(PROMPT_FLOW)
    backend = replies("verdict: fine")
    details = await run_flow(kit, store, checked, backend, {"topic": "the parser"})
    assert [r.prompt for r in backend.requests] == [EXPECTED_REVIEW, f"Plain.{SEPARATOR}Say fine"]
    assert steps_by_id(details)["review"].fields == {"verdict": "fine"}
    calls = await store.agent_calls(details.run.id, "review")
    assert [(c.prompt, c.persona, c.sequence) for c in calls] == [(EXPECTED_REVIEW, "reviewer", 0)]


async def test_a_step_without_persona_starts_with_the_prompt(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        contracts: {c: "Contract."}
        steps:
          - {id: a, kind: agent, prompt: "\\nJust this.\\n", contracts: [c]}
        """
    )
    backend = replies("ok")
    await run_flow(kit, store, checked, backend)
    assert backend.requests[0].prompt == "Just this.\n\nContract."


async def test_openai_backend_end_to_end_streams_deltas_to_subscribers(
    kit: ProjectKit, store: SqliteStore
) -> None:
    kit.persona("reviewer", "You review code.\nCarefully.\n")
    kit.persona("plain", "Plain.")
    checked = kit.checked(PROMPT_FLOW)

    def reply(prompt: str) -> str:
        return "looks good to me\nverdict: fine" if "Review" in prompt else "fine indeed"

    with ChatServer(reply) as server:
        backend = OpenAIBackend(server.url, None)
        run_id = await launch(kit, store, checked, {"topic": "the parser"}, model="tiny")
        worker = Worker(store, kit.project, backend, run_id=run_id)
        frames: list[dict[str, Any]] = []
        worker.subscribers.append(frames.append)
        try:
            await asyncio.wait_for(worker.run(until=lambda: is_finished(store, run_id)), 20)
        finally:
            await backend.aclose()
        bodies = list(server.requests)

    details = await service.details(store, run_id)
    found = steps_by_id(details)
    assert str(details.run.status) == "completed"
    assert found["review"].output == "looks good to me\nverdict: fine"
    assert found["review"].fields == {"verdict": "fine"}
    assert found["bare"].output == "fine indeed"
    assert found["review"].scripted is False
    assert [b["messages"] for b in bodies] == [
        [{"role": "user", "content": EXPECTED_REVIEW}],
        [{"role": "user", "content": f"Plain.{SEPARATOR}Say fine"}],
    ]
    assert all(b["model"] == "tiny" and b["stream"] is True for b in bodies)
    deltas = [f for f in frames if f["event"] == "delta"]
    review_frames = [f for f in deltas if f["step_id"] == "review"]
    assert len(review_frames) > 1, "the reply did not arrive in several deltas"
    assert "".join(f["text"] for f in review_frames) == found["review"].output
    live = {(run_id, "prompt"), (run_id, "delta"), (run_id, "changed")}
    assert {(f["run_id"], f["event"]) for f in frames} == live
    prompts = [f for f in frames if f["event"] == "prompt"]
    assert {(f["step_id"], f["attempt"], f["text"]) for f in prompts} == {
        ("review", 1, EXPECTED_REVIEW),
        ("bare", 1, f"Plain.{SEPARATOR}Say fine"),
    }
    assert frames.index(prompts[0]) < frames.index(review_frames[0])  # before the first delta


async def test_openai_backend_http_error_fails_the_attempt(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: a, kind: agent, prompt: "hi"}
        """
    )
    with ChatServer(fail_status=503) as server:
        backend = OpenAIBackend(server.url, None)
        try:
            details = await run_flow(kit, store, checked, backend)
        finally:
            await backend.aclose()
    assert "HTTP 503" in steps_by_id(details)["a"].error
    assert str(details.run.status) == "failed"


AGENT_SCRIPT = """
import sys
data = sys.stdin.read()
if "FAIL" in data:
    sys.stderr.write("the agent broke\\n")
    sys.exit(3)
print("seen " + str(len(data)) + " chars: " + data.replace("\\n", "|"))
print("verdict: ok")
"""


async def test_command_backend_end_to_end_with_a_real_subprocess(
    kit: ProjectKit, store: SqliteStore, tmp_path: Path
) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT_SCRIPT, "utf-8")
    kit.persona("p", "Persona.")
    checked = kit.checked(
        """
        version: 1
        name: x
        inputs:
          mode: {type: string, default: "work"}
        steps:
          - {id: a, kind: agent, persona: p, prompt: "Do {{ inputs.mode }}", fields: [verdict]}
        """
    )
    backend = CommandBackend([sys.executable, script.as_posix()])
    details = await run_flow(kit, store, checked, backend)
    a = steps_by_id(details)["a"]
    prompt = f"Persona.{SEPARATOR}Do work"
    assert str(a.status) == "completed"
    assert a.output == f"seen {len(prompt)} chars: {prompt.replace(chr(10), '|')}\nverdict: ok\n"
    assert a.fields == {"verdict": "ok"}

    details = await run_flow(kit, store, checked, backend, {"mode": "FAIL"})
    a = steps_by_id(details)["a"]
    assert str(a.status) == "failed"
    assert "exited with code 3" in a.error and "the agent broke" in a.error


# --- replay and retry -----------------------------------------------------------------------


class Refusing:
    """A backend that must not be called."""

    name = "refusing"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: AgentRequest, on_delta: OnDelta | None = None) -> AgentReply:
        self.calls += 1
        raise AssertionError(f"the backend was called for {request.step_id}")

    async def aclose(self) -> None:
        pass


async def test_replay_answers_agent_steps_from_the_recorded_run(
    kit: ProjectKit, store: SqliteStore
) -> None:
    kit.persona("helper", "Help.")
    module = kit.code(
        """
        def combine(ctx, text):
            extra = ctx.dispatch_sync("helper", "more about " + text)
            return {"text": text, "extra": extra}
        """
    )
    checked = kit.checked(
        f"""
        version: 1
        name: x
        steps:
          - {{id: ask, kind: agent, prompt: "ask", fields: [topic]}}
          - id: combine
            kind: code
            needs: [ask]
            call: "{module}:combine"
            with: {{text: "{{{{ steps.ask.fields.topic }}}}"}}
        """
    )
    recorded = await run_flow(
        kit, store, checked, scripted(("ask", "topic: owls"), ("more about", "owls hoot"))
    )
    assert str(recorded.run.status) == "completed"

    refusing = Refusing()
    replay_id = await launch(kit, store, checked, replay_of=recorded.run.id)
    replayed = await finish(kit, store, replay_id, refusing)
    assert refusing.calls == 0
    assert str(replayed.run.status) == "completed"
    assert replayed.run.replay_of == recorded.run.id
    old, new = steps_by_id(recorded), steps_by_id(replayed)
    assert new["ask"].output == old["ask"].output == "topic: owls"
    assert new["combine"].data == old["combine"].data == {"text": "owls", "extra": "owls hoot"}
    assert new["ask"].scripted is True  # a replayed scripted reply stays marked scripted
    calls = await store.agent_calls(replay_id)
    assert {(c.step_id, c.sequence, c.backend) for c in calls} == {
        ("ask", 0, "replay"),
        ("combine", 1, "replay"),
    }


async def test_replay_of_an_unknown_run_is_refused(kit: ProjectKit, store: SqliteStore) -> None:
    from engine.errors import NotFound

    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: a, kind: agent, prompt: "a"}
        """
    )
    with pytest.raises(NotFound):
        await launch(kit, store, checked, replay_of="nope")
    assert await store.list_runs() == []


async def test_retry_keeps_completed_steps_and_reruns_the_rest(
    kit: ProjectKit, store: SqliteStore, tmp_path: Path
) -> None:
    switch = tmp_path / "fixed"
    module = kit.code(
        f"""
        from pathlib import Path

        def gate(ctx, text):
            if not Path({str(switch)!r}).exists():
                raise RuntimeError("not fixed yet")
            return "fixed: " + text
        """
    )
    checked = kit.checked(
        f"""
        version: 1
        name: x
        steps:
          - {{id: first, kind: agent, prompt: "first"}}
          - id: check
            kind: code
            needs: [first]
            call: "{module}:gate"
            with: {{text: "{{{{ steps.first.output }}}}"}}
          - {{id: last, kind: agent, needs: [check], prompt: "last {{{{ steps.check.output }}}}"}}
        """
    )
    backend = RecordingBackend(lambda request, n: f"{request.step_id} #{n}")
    failed = await run_flow(kit, store, checked, backend)
    assert str(failed.run.status) == "failed"
    assert statuses(failed) == {"first": "completed", "check": "failed", "last": "cancelled"}
    first_output = steps_by_id(failed)["first"].output
    with pytest.raises(Conflict):
        await service.cancel(store, failed.run.id, time.time())

    switch.touch()
    retried = await service.retry(store, failed.run.id, time.time())
    assert str(retried.status) == "running"
    details = await finish(kit, store, failed.run.id, backend)
    found = steps_by_id(details)
    assert str(details.run.status) == "completed"
    assert (found["first"].attempts, found["first"].output) == (1, first_output)
    assert (found["check"].attempts, found["check"].output) == (2, f"fixed: {first_output}")
    assert (str(found["last"].status), found["last"].attempts) == ("completed", 1)
    assert [r.step_id for r in backend.requests] == ["first", "last"]
    assert backend.requests[-1].prompt == f"last fixed: {first_output}"
    log = await events(store, details.run.id)
    (retry_event,) = [e for e in log if e.event == "run_retried"]
    assert sorted(retry_event.payload["steps"]) == ["check", "last"]
    assert log[-1].event == "run_completed"

    with pytest.raises(Conflict):  # only failed or cancelled runs can be retried
        await service.retry(store, details.run.id, time.time())


async def test_retry_of_a_cancelled_run(kit: ProjectKit, store: SqliteStore) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: a, kind: agent, prompt: "a"}
          - {id: b, kind: agent, needs: [a], prompt: "b"}
        """
    )
    run_id = await launch(kit, store, checked)
    cancelled = await service.cancel(store, run_id, time.time())
    assert str(cancelled.status) == "cancelled"
    assert statuses(await service.details(store, run_id)) == {"a": "cancelled", "b": "cancelled"}
    await service.retry(store, run_id, time.time())
    details = await finish(kit, store, run_id, replies("done"))
    assert statuses(details) == {"a": "completed", "b": "completed"}
    assert str(details.run.status) == "completed"


# --- launching with bad inputs ------------------------------------------------------------------


INPUTS_FLOW = """
version: 1
name: x
bands: [quick, deep]
inputs:
  question: {type: string}
  count: {type: integer, default: 2}
  level: {type: string, enum: [low, high], default: low}
  tags: {type: array, items: string, default: []}
steps:
  - {id: a, kind: agent, prompt: "{{ inputs.question }}"}
"""


@pytest.mark.parametrize(
    ("inputs", "band", "problem"),
    [
        ({}, None, "question"),
        ({"question": "q", "extra": 1}, None, "extra"),
        ({"question": 3}, None, "question"),
        ({"question": "q", "count": "two"}, None, "count"),
        ({"question": "q", "count": True}, None, "count"),
        ({"question": "q", "level": "medium"}, None, "level"),
        ({"question": "q", "tags": ["a", 1]}, None, "tags"),
        ({"question": "q"}, "ultra", "band"),
    ],
)
async def test_bad_launches_are_refused_and_store_nothing(
    kit: ProjectKit,
    store: SqliteStore,
    inputs: dict[str, Any],
    band: str | None,
    problem: str,
) -> None:
    checked = kit.checked(INPUTS_FLOW)
    with pytest.raises(InvalidInput) as caught:
        await launch(kit, store, checked, inputs, band=band)
    assert problem in caught.value.message
    assert problem in caught.value.details
    assert await store.list_runs() == []


async def test_a_launch_lists_every_problem_and_applies_defaults(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(INPUTS_FLOW)
    with pytest.raises(InvalidInput) as caught:
        await launch(kit, store, checked, {"extra": 1, "level": "x"})
    assert set(caught.value.details) == {"extra", "question", "level"}

    run_id = await launch(kit, store, checked, {"question": "why"})
    run = await store.get_run(run_id)
    assert run.inputs == {"question": "why", "count": 2, "level": "low", "tags": []}
    assert run.band == "quick"


class SlowEmptyClaims(SqliteStore):
    """The real store, except that a claim with no room for code steps returns only after
    the running code step has finished (its worker's wake-up comes during the claim)."""

    finished: asyncio.Event

    async def claim(
        self, worker: str, now: float, lease: float, capacity: Any, *rest: Any, **options: Any
    ):  # type: ignore[no-untyped-def]
        if capacity.others == 0:
            await asyncio.wait_for(self.finished.wait(), 10)
            await asyncio.sleep(0.05)  # the step's task has ended and set the wake-up
            self.finished.clear()
        return await super().claim(worker, now, lease, capacity, *rest, **options)

    async def complete_step(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        settled = await super().complete_step(*args, **kwargs)
        self.finished.set()
        return settled


async def test_a_wake_up_during_a_claim_is_not_lost(kit: ProjectKit, tmp_path: Path) -> None:
    """A step that ends while the worker's claim is in flight wakes the worker: it does not
    wait for the poll to find the steps that slot can now run."""
    kit.env(max_code=1, poll_seconds=10)
    module = kit.code("def noop(ctx):\n    return 'ok'\n")
    checked = kit.checked(
        f"""
        version: 1
        name: fan
        steps:
          - {{id: root, kind: code, call: "{module}:noop"}}
          - {{id: a, kind: code, call: "{module}:noop", needs: [root]}}
          - {{id: b, kind: code, call: "{module}:noop", needs: [root]}}
          - {{id: c, kind: code, call: "{module}:noop", needs: [root]}}
        """
    )
    store = SlowEmptyClaims(tmp_path / "slow.db")
    store.finished = asyncio.Event()
    await store.open()
    try:
        run_id = await launch(kit, store, checked)
        started = time.monotonic()
        details = await finish(kit, store, run_id, scripted("-"), timeout=8)
        assert statuses(details) == dict.fromkeys(["root", "a", "b", "c"], "completed")
        assert time.monotonic() - started < 5  # not one 10 s poll
    finally:
        await store.close()


class Counting(SqliteStore):
    """The real store, counting the claims, step reads, run finishes and agent call records
    a worker makes on their own."""

    claims = 0
    reads = 0
    finishes = 0
    calls = 0

    async def finish_run(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        self.finishes += 1
        return await super().finish_run(*args, **kwargs)

    async def record_agent_call(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        self.calls += 1
        return await super().record_agent_call(*args, **kwargs)

    async def claim(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        self.claims += 1
        return await super().claim(*args, **kwargs)

    async def get_steps(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        self.reads += 1
        return await super().get_steps(*args, **kwargs)


async def claims_for_a_chain(kit: ProjectKit, tmp_path: Path, step: str) -> int:
    """The claims a worker makes to run a 12-step chain of ``step`` (a step's fields
    after its id) to completion."""
    steps = "\n".join(
        f"  - {{id: s{i}, {step}" + (f", needs: [s{i - 1}]}}" if i else "}") for i in range(12)
    )
    checked = kit.checked(f"version: 1\nname: chain\nsteps:\n{steps}\n")
    store = Counting(tmp_path / "counting.db")
    await store.open()
    try:
        run_id = await launch(kit, store, checked)
        details = await finish(kit, store, run_id, scripted("-"))
        assert set(statuses(details).values()) == {"completed"}
        return store.claims
    finally:
        await store.close()


async def test_a_step_whose_slot_an_eager_claim_refilled_does_not_send_the_worker_looking(
    kit: ProjectKit, tmp_path: Path
) -> None:
    """With its code slot full (so its last claim was full), a worker running a chain of
    code steps still finds each next step through the settlement's eager claim, not
    through a claim after every step."""
    kit.env(max_code=1)
    module = kit.code("def noop(ctx):\n    return 'ok'\n")
    claims = await claims_for_a_chain(kit, tmp_path, f'kind: code, call: "{module}:noop"')
    assert claims < 6  # one after each of the 12 steps before


async def test_a_chain_of_agent_steps_is_claimed_by_its_settlements(
    kit: ProjectKit, tmp_path: Path
) -> None:
    """Each agent step's settlement takes the next one at once (the slot it frees), so a
    worker does not claim once per step (it made 25 claims for 12 steps before)."""
    kit.env(max_agents=1)
    assert await claims_for_a_chain(kit, tmp_path, 'kind: agent, prompt: "go"') < 6


def test_run_ids_sort_in_launch_order_and_do_not_repeat() -> None:
    first = [service.new_run_id() for _ in range(10_000)]
    time.sleep(0.002)
    later = service.new_run_id()
    assert all(len(run_id) == 20 and int(run_id, 16) >= 0 for run_id in first)
    assert len(set(first)) == len(first)
    assert sorted([later, *first])[-1] == later


async def test_a_stopping_worker_finishes_its_step_but_takes_no_next_one(
    kit: ProjectKit, store: SqliteStore
) -> None:
    module = kit.code("import time\n\ndef slow(ctx):\n    time.sleep(0.3)\n    return 'ok'\n")
    checked = kit.checked(
        f"""
        version: 1
        name: pair
        steps:
          - {{id: first, kind: code, call: "{module}:slow"}}
          - {{id: second, kind: code, call: "{module}:slow", needs: [first]}}
        """
    )
    run_id = await launch(kit, store, checked)
    worker = Worker(store, kit.project, scripted("-"), run_id=run_id)
    task = asyncio.create_task(worker.run(grace=5))
    for _ in range(200):
        if worker.active:
            break
        await asyncio.sleep(0.01)
    worker.stop()
    await asyncio.wait_for(task, 10)
    details = await service.details(store, run_id)
    assert statuses(details) == {"first": "completed", "second": "pending"}
    started = [e.step_id for e in await events(store, run_id) if e.event == "step_started"]
    assert started == ["first"]


async def test_a_worker_renders_the_report_from_the_steps_it_ran(
    kit: ProjectKit, tmp_path: Path
) -> None:
    """It knows their results already: finishing the run reads no step back."""
    module = kit.code("def word(ctx, text):\n    return text\n")
    checked = kit.checked(
        f"""
        version: 1
        name: words
        steps:
          - {{id: one, kind: code, call: "{module}:word", with: {{text: "a"}}}}
          - {{id: two, kind: code, call: "{module}:word", with: {{text: "b"}}, needs: [one]}}
        report: "{{{{ steps.one.output }}}}-{{{{ steps.two.output }}}}"
        """
    )
    store = Counting(tmp_path / "reads.db")
    await store.open()
    try:
        run_id = await launch(kit, store, checked)
        worker = Worker(store, kit.project, scripted("-"), run_id=run_id)
        await asyncio.wait_for(worker.run(until_idle=True), 20)
        assert store.reads == 0
        assert (await store.get_run(run_id)).report == "a-b"
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("report", "status", "ending"),
    [
        ("", "completed", "## last\n\ndone"),
        ('report: "{{ steps.first.output }}/{{ steps.ask.output }}"', "completed", "done/yes"),
        ('report: "{{ steps.ask.output | nosuchfilter }}"', "failed", "nosuchfilter"),
    ],
)
async def test_the_last_settlement_ends_the_run_and_an_agent_result_brings_its_call(
    kit: ProjectKit, tmp_path: Path, report: str, status: str, ending: str
) -> None:
    """The worker that settles the last step ends the run in that write, even when another
    worker ran the first step (a report template reads it back); an agent step's call is
    written with its result. Neither is a write of its own."""
    module = kit.code("def word(ctx):\n    return 'done'\n")
    checked = kit.checked(
        f"""
        version: 1
        name: ends
        steps:
          - {{id: first, kind: code, call: "{module}:word"}}
          - {{id: ask, kind: agent, prompt: "go", needs: [first]}}
          - {{id: last, kind: code, call: "{module}:word", needs: [ask]}}
        {report}
        """
    )
    store = Counting(tmp_path / "ends.db")
    await store.open()
    try:
        run_id = await launch(kit, store, checked)
        (first,) = await store.claim("elsewhere", 1.0, 30, Capacity(1, 1), 3)
        assert await store.complete_step(first, StepResult("done"), 1.0)
        worker = Worker(store, kit.project, scripted("yes"), run_id=run_id)
        await asyncio.wait_for(worker.run(until_idle=True), 20)
        assert (store.finishes, store.calls) == (0, 0)
        assert store.reads == (1 if report else 0)  # a report template may read any step
        run = await store.get_run(run_id)
        assert run.status == status
        assert ending in (run.report if status == "completed" else run.error or "")
        assert [c.output for c in await store.agent_calls(run_id)] == ["yes"]
        names = [e.event for e in await events(store, run_id)]
        assert names[-2:] == ["step_completed", f"run_{status}"]
    finally:
        await store.close()


class RunReads(PostgresStore):
    """The real PostgreSQL store, counting the runs read."""

    run_reads = 0

    async def get_run(self, run_id: str):  # type: ignore[no-untyped-def]
        self.run_reads += 1
        return await super().get_run(run_id)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema (asked for before ``kit``, which clears the environment)."""
    async with fresh_schema() as url:
        yield url


async def test_a_worker_on_postgres_takes_the_run_from_its_claim(
    postgres_url: str, kit: ProjectKit
) -> None:
    """The claim brings the run's record along: the worker reads no run to execute it."""
    module = kit.code("def word(ctx):\n    return 'done'\n")
    checked = kit.checked(
        f"""
        version: 1
        name: pair
        steps:
          - {{id: first, kind: code, call: "{module}:word"}}
          - {{id: second, kind: code, call: "{module}:word", needs: [first]}}
        """
    )
    store = RunReads(postgres_url)
    await store.open()
    try:
        run_id = await launch(kit, store, checked)
        worker = Worker(store, kit.project, scripted("-"), run_id=run_id)
        await asyncio.wait_for(worker.run(until_idle=True), 20)
        assert store.run_reads == 0
        assert (await store.get_run(run_id)).status == "completed"
    finally:
        await store.close()


@dataclass
class Gauge:
    """How many calls are inside at once, and the most there ever were."""

    inside: int = 0
    most: int = 0

    def enter(self) -> None:
        self.inside += 1
        self.most = max(self.most, self.inside)

    def leave(self) -> None:
        self.inside -= 1


@dataclass
class SlowAgent:
    """An agent backend whose calls take 2, 9, 5, 2, 9, ... ms, counting calls at once."""

    gauge: Gauge = field(default_factory=Gauge)
    calls: int = 0
    name: str = "slow"

    async def complete(self, request: AgentRequest, on_delta: OnDelta | None = None) -> AgentReply:
        self.gauge.enter()
        self.calls += 1
        try:
            await asyncio.sleep((0.002, 0.009, 0.005)[self.calls % 3])
        finally:
            self.gauge.leave()
        return AgentReply(text="ok", backend=self.name)

    async def aclose(self) -> None:
        pass


@pytest.fixture(params=["sqlite", "postgres"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store of each kind (asked for before ``kit``, which clears the environment)."""
    async with opened_store(request.param, tmp_path) as opened:
        yield opened


async def test_a_busy_worker_never_runs_more_steps_at_once_than_its_limits(
    any_store: Store, kit: ProjectKit
) -> None:
    """FLOWRUNNER_MAX_AGENTS and _MAX_CODE hold while claims and settlements race: a
    settlement's eager claims and a claim in flight must not both fill the same free slots
    (a worker of 8 agent slots ran 16 agent steps at once under load)."""
    kit.env(max_agents=2, max_code=2)
    module = kit.code(
        """
        import threading, time
        lock = threading.Lock()
        inside = most = 0

        def step(ctx):
            global inside, most
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.002)
            with lock:
                inside -= 1
            return 'ok'
        """
    )
    checked = kit.checked(
        f"""
        version: 1
        name: mixed
        steps:
          - {{id: before, kind: code, call: "{module}:step"}}
          - {{id: ask, kind: agent, prompt: go, needs: [before]}}
          - {{id: after, kind: code, call: "{module}:step", needs: [ask]}}
        """
    )
    run_ids = [await launch(kit, any_store, checked) for _ in range(100)]
    agent = SlowAgent()
    worker = Worker(any_store, kit.project, agent)

    async def all_done() -> bool:
        return all([await is_finished(any_store, run_id) for run_id in run_ids])

    await asyncio.wait_for(worker.run(until=all_done), 60)
    assert {(await any_store.get_run(run_id)).status for run_id in run_ids} == {"completed"}
    assert agent.gauge.most == 2
    assert sys.modules[module].most <= 2
