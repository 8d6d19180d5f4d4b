"""Events of a run over a real loopback socket: JSON after an id, and Server-Sent Events
with every stored event in order, live ones, ``Last-Event-ID`` resume and an end frame."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from .conftest import (
    ApiProject,
    LiveServer,
    assert_error,
    chain_flow,
    get_run,
    launch,
    stored_events,
    wait_for,
    wait_status,
    wait_step,
)

SSE = {"Accept": "text/event-stream"}


@dataclass
class Frame:
    event: str
    id: str | None
    data: str

    @property
    def json(self) -> Any:
        return json.loads(self.data)


def read_frames(response: httpx.Response) -> Iterator[Frame]:
    """Parse a text/event-stream body into frames (comments such as pings are skipped)."""
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    event: str | None = None
    event_id: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if event is not None or data:
                yield Frame(event or "message", event_id, "\n".join(data))
            event, event_id, data = None, None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "id":
            event_id = value
        elif name == "data":
            data.append(value)


def follow(
    client: httpx.Client, run_id: str, headers: dict[str, str] | None = None, **params: Any
) -> list[Frame]:
    """Every frame of one SSE connection, until the end frame closes it."""
    with client.stream(
        "GET", f"/v1/runs/{run_id}/events", headers={**SSE, **(headers or {})}, params=params
    ) as response:
        frames = list(read_frames(response))
    assert frames and frames[-1].event == "end", frames
    return frames


def stored(frames: list[Frame]) -> list[Frame]:
    return [frame for frame in frames if frame.id is not None]


def chain(project: ApiProject, steps: int, seconds: float) -> str:
    project.flow("chain", chain_flow(steps, seconds))
    return "chain"


def test_sse_streams_stored_then_live_events_and_deltas_then_an_end_frame(
    project: ApiProject, client: httpx.Client
) -> None:
    run_id = launch(client, chain(project, 4, 0.15))
    frames: list[Frame] = []
    status_at_first_frame = None
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers=SSE) as response:
        assert response.headers["cache-control"] == "no-store"
        for frame in read_frames(response):
            if not frames:
                status_at_first_frame = get_run(client, run_id)["status"]
            frames.append(frame)
    assert status_at_first_frame == "running"  # the stream was live, not a replay
    assert frames[-1].event == "end" and frames[-1].id is None
    assert all(frame.event != "end" for frame in frames[:-1])

    events = stored_events(client, run_id)
    assert events[-1]["event"] == "run_completed"
    with_ids = stored(frames)
    assert [int(f.id) for f in with_ids] == list(range(1, len(events) + 1))  # type: ignore[arg-type]
    assert [f.json for f in with_ids] == events
    assert [f.event for f in with_ids] == [e["event"] for e in events]
    assert frames[-1].json == {"run_id": run_id, "last": len(events)}

    # token deltas of the streaming agent step: frames without an id, never stored
    deltas = [frame for frame in frames if frame.event == "delta"]
    assert deltas and all(frame.id is None for frame in deltas)
    assert {(d.json["run_id"], d.json["step_id"]) for d in deltas} == {(run_id, "talk")}
    assert "".join(d.json["text"] for d in deltas) == "done"
    assert "delta" not in {e["event"] for e in events}
    live = {"prompt", "delta", "end"}  # frames without an id
    assert set(frame.event for frame in frames) <= {e["event"] for e in events} | live


def test_a_dropped_client_resumes_with_last_event_id_and_sees_every_event_once(
    project: ApiProject, server: LiveServer, client: httpx.Client
) -> None:
    run_id = launch(client, chain(project, 6, 0.25))
    first: list[Frame] = []
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers=SSE) as response:
        for frame in read_frames(response):
            first.append(frame)
            if frame.event == "step_completed" and frame.json["step_id"] == "s0":
                break  # the client goes away mid-run
    last_seen = stored(first)[-1].id
    assert last_seen is not None
    # the server notices the dropped client and lets go of its subscription
    wait_for(lambda: run_id not in server.frames.queues, 5, "the stream to be dropped")
    assert get_run(client, run_id)["status"] == "running"
    time.sleep(0.3)  # events keep being stored while nobody listens

    second = follow(client, run_id, {"Last-Event-ID": last_seen})
    events = stored_events(client, run_id)
    assert events[-1]["event"] == "run_completed"
    ids = [int(f.id) for f in stored(first) + stored(second)]  # type: ignore[arg-type]
    assert ids == list(range(1, len(events) + 1)), ids  # no gap, no duplicate
    assert int(stored(second)[0].id) == int(last_seen) + 1  # type: ignore[arg-type]
    assert [f.json for f in stored(first) + stored(second)] == events
    assert second[-1].json == {"run_id": run_id, "last": len(events)}
    assert run_id not in server.frames.queues


def test_many_drops_and_resumes_still_deliver_every_event_exactly_once(
    project: ApiProject, server: LiveServer, client: httpx.Client
) -> None:
    run_id = launch(client, chain(project, 6, 0.2))
    received: list[Frame] = []
    connections = resumed_while_running = 0
    last: str | None = None
    ended = False
    while not ended:
        connections += 1
        assert connections < 60
        headers = {**SSE, **({"Last-Event-ID": last} if last else {})}
        if last and get_run(client, run_id)["status"] == "running":
            resumed_while_running += 1
        taken = 0
        with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as response:
            for frame in read_frames(response):
                if frame.event == "end":
                    ended = True
                    assert frame.json["last"] == int(received[-1].id)  # type: ignore[arg-type]
                    break
                if frame.id is None:
                    continue
                received.append(frame)
                last = frame.id
                taken += 1
                if taken == 2:
                    break  # drop after two events
    events = stored_events(client, run_id)
    assert [int(f.id) for f in received] == list(range(1, len(events) + 1))  # type: ignore[arg-type]
    assert [f.json for f in received] == events
    assert resumed_while_running >= 3, resumed_while_running
    wait_for(lambda: run_id not in server.frames.queues, 5, "every stream to be dropped")


def test_a_gate_keeps_the_stream_open_until_a_decision_ends_the_run(
    server: LiveServer, client: httpx.Client
) -> None:
    run_id = launch(client, "gate")
    seen: list[str] = []
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers=SSE) as response:
        for frame in read_frames(response):
            seen.append(frame.event)
            if frame.event == "step_waiting":
                with server.client("tok-bob") as bob:
                    approval = bob.post(
                        f"/v1/runs/{run_id}/steps/review/approve",
                        json={"payload": {"audience": "team"}},
                    )
                    assert approval.status_code == 200, approval.text
    assert seen[-1] == "end"
    stored_names = [name for name in seen if name not in ("prompt", "delta", "end")]
    assert stored_names == [e["event"] for e in stored_events(client, run_id)]
    assert stored_names.count("gate_decided") == 1
    assert stored_names[-1] == "run_completed"


def test_cancelling_a_run_ends_its_streams(client: httpx.Client) -> None:
    run_id = launch(client, "sleepy")
    names: list[str] = []
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers=SSE) as response:
        for frame in read_frames(response):
            names.append(frame.event)
            if frame.event == "step_started":
                assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 200
    assert names[-1] == "end"
    assert "run_cancelled" in names
    assert get_run(client, run_id)["status"] == "cancelled"


def test_a_finished_run_replays_everything_then_ends(client: httpx.Client) -> None:
    run_id = launch(client, "greet", {"name": "Ann"})
    wait_status(client, run_id)
    events = stored_events(client, run_id)
    count = len(events)
    frames = follow(client, run_id)
    assert [f.json for f in stored(frames)] == events
    assert [f.event for f in frames] == [e["event"] for e in events] + ["end"]
    # resuming where a client left off; the header wins over ?after=
    frames = follow(client, run_id, {"Last-Event-ID": str(count - 2)}, after=1)
    assert [int(f.id) for f in stored(frames)] == [count - 1, count]  # type: ignore[arg-type]
    frames = follow(client, run_id, after=count - 1)
    assert [int(f.id) for f in stored(frames)] == [count]  # type: ignore[arg-type]
    # nothing left: only the end frame
    (end,) = follow(client, run_id, {"Last-Event-ID": str(count)})
    assert end.json == {"run_id": run_id, "last": count}
    (end,) = follow(client, run_id, {"Last-Event-ID": str(count + 100)})
    assert end.event == "end"


def test_json_events_after_an_id(client: httpx.Client) -> None:
    run_id = launch(client, "gate")
    wait_step(client, run_id, "review", "waiting")
    events = stored_events(client, run_id)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert [e["event"] for e in events] == [
        "run_started",
        "step_started",
        "step_completed",
        "step_started",
        "step_waiting",
    ]
    for event in events:
        assert set(event) == {"id", "run_id", "step_id", "event", "payload", "at"}
        assert event["run_id"] == run_id
    assert events[0]["step_id"] is None and events[1]["step_id"] == "draft"
    assert events[4]["payload"] == {"message": "Publish the draft?", "deadline": None}
    assert stored_events(client, run_id, after=3) == events[3:]
    assert stored_events(client, run_id, after=len(events)) == []
    assert stored_events(client, run_id, after=10_000) == []
    # JSON is the default, whatever else the client accepts
    for accept in ("application/json", "*/*", "text/html"):
        response = client.get(f"/v1/runs/{run_id}/events", headers={"Accept": accept})
        assert response.json()["events"] == events
    assert_error(client.get(f"/v1/runs/{run_id}/events", params={"after": -1}), 422)


@pytest.mark.parametrize("accept", ["text/event-stream", "application/json"])
def test_events_of_an_unknown_run_or_without_a_token(
    server: LiveServer, client: httpx.Client, accept: str
) -> None:
    assert_error(client.get("/v1/runs/nope/events", headers={"Accept": accept}), 404, "not_found")
    run_id = launch(client, "greet", {"name": "Ann"})
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        response = anonymous.get(f"/v1/runs/{run_id}/events", headers={"Accept": accept})
        assert_error(response, 401, "unauthorized")


def test_a_steps_deltas_come_between_its_start_and_its_end(
    project: ApiProject, client: httpx.Client
) -> None:
    """Deltas are live and events are stored: the stream puts each delta after its step's
    step_started and before its step_completed (they came after it, and after the next
    step had started, when the stream took one live frame per store read)."""
    project.flow(
        "talks",
        "steps:\n"
        + "".join(
            f'  - {{id: t{n}, kind: agent, prompt: "Talk"{f", needs: [t{n - 1}]" if n else ""}}}\n'
            for n in range(6)
        ),
    )
    run_id = launch(client, "talks")
    frames = follow(client, run_id)
    where: dict[str, list[str]] = {}
    for frame in frames:
        step = frame.json.get("step_id") if frame.event != "end" else None
        if step is not None:
            where.setdefault(step, []).append(frame.event)
    assert set(where) == {f"t{n}" for n in range(6)}
    for step, seen in where.items():
        assert seen[0] == "step_started" and seen[-1] == "step_completed", (step, seen)
        assert seen[1] == "prompt" and set(seen[2:-1]) == {"delta"}, (step, seen)
