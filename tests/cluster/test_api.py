"""Two API processes and a worker process on one PostgreSQL.

Decisions on one gate sent through both API processes at once: exactly one
wins. An event stream opened on one API process sees every event of a run
launched through the other and executed by the worker process (the events
reach it through NOTIFY; the stream also reads the store).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cluster.conftest import ClusterProject
from tests.e2e.conftest import FLOWRUNNER, wait_for

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}

FLOW = """
steps:
  - id: draft
    kind: agent
    persona: helper
    prompt: "Draft it"
  - id: review
    kind: approval
    needs: [draft]
    message: "Ship {{ steps.draft.output }}?"
  - id: ship
    kind: agent
    persona: helper
    needs: [review]
    prompt: "Ship it"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(cluster: ClusterProject) -> str:
    """``flowrunner serve --no-worker`` on a free port; its base URL once it answers."""
    port = free_port()
    command = [str(FLOWRUNNER), "--project", str(cluster.root), "serve", "--no-worker"]
    log = (cluster.logs / f"serve-{port}.log").open("wb")
    with log:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=cluster.root,
            env=cluster.env,
            stdout=log,
            stderr=log,
        )
    cluster.processes.append(process)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 30, f"serve on port {port}")
    return base


@pytest.fixture
def apis(cluster: ClusterProject) -> Iterator[list[str]]:
    cluster.write("tokens.json", json.dumps(TOKENS))
    cluster.env["FLOWRUNNER_API_TOKENS_FILE"] = "tokens.json"
    cluster.write("personas/helper.md", "You help.\n")
    cluster.flow("ship", FLOW)
    cluster.worker()
    yield [serve(cluster), serve(cluster)]


def client(base: str, token: str = "tok-alice") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


async def wait_step(api: httpx.AsyncClient, run_id: str, step: str, status: str) -> None:
    for _ in range(300):
        run = (await api.get(f"/v1/runs/{run_id}")).json()
        if {s["id"]: s["status"] for s in run["steps"]}.get(step) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{step} of {run_id} never became {status}")


async def test_decisions_through_two_api_processes_exactly_one_wins(
    cluster: ClusterProject, apis: list[str]
) -> None:
    clients = [client(base, token) for base in apis for token in TOKENS]
    try:
        launched = await clients[0].post("/v1/flows/ship/runs", json={})
        run_id = launched.json()["id"]
        await wait_step(clients[1], run_id, "review", "waiting")
        requests = [
            clients[n % len(clients)].post(
                f"/v1/runs/{run_id}/steps/review/{'approve' if n % 2 == 0 else 'reject'}",
                json={"comment": f"decision {n}"},
            )
            for n in range(50)
        ]
        responses = await asyncio.gather(*requests)
        assert Counter(r.status_code for r in responses) == {200: 1, 409: 49}
        events = (await clients[3].get(f"/v1/runs/{run_id}/events")).json()["events"]
        assert [e["event"] for e in events].count("gate_decided") == 1
    finally:
        for each in clients:
            await each.aclose()


async def test_a_stream_on_one_api_sees_a_run_launched_through_the_other(
    cluster: ClusterProject, apis: list[str]
) -> None:
    first, second = client(apis[0]), client(apis[1], "tok-bob")
    try:
        run_id = (await first.post("/v1/flows/ship/runs", json={})).json()["id"]
        frames: list[dict[str, Any]] = []

        async def follow() -> None:
            headers = {"Accept": "text/event-stream"}
            async with second.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as got:
                event = None
                async for line in got.aiter_lines():
                    if line.startswith("event:"):
                        event = line.partition(":")[2].strip()
                    elif line.startswith("data:") and event not in (None, "prompt", "delta"):
                        frames.append({"event": event, **json.loads(line.partition(":")[2])})
                        if event == "end":
                            return

        stream = asyncio.create_task(follow())
        await wait_step(first, run_id, "review", "waiting")
        approved = await first.post(f"/v1/runs/{run_id}/steps/review/approve", json={})
        assert approved.status_code == 200, approved.text
        await asyncio.wait_for(stream, 30)
        stored = (await first.get(f"/v1/runs/{run_id}/events")).json()["events"]
    finally:
        await first.aclose()
        await second.aclose()

    assert [(f["id"], f["event"]) for f in frames[:-1]] == [(r["id"], r["event"]) for r in stored]
    assert frames[-1]["event"] == "end" and stored[-1]["event"] == "run_completed"
