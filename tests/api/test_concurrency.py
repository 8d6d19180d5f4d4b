"""Many clients at once over a real loopback socket: idempotent launches, one decision per
gate, one cancel per run, and many runs launched together."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from typing import Any

import httpx

from .conftest import ApiProject, LiveServer, assert_error, wait_status, wait_step

CONCURRENCY = 50


def stored_runs(project: ApiProject) -> list[tuple[str, str | None]]:
    """(id, launched by) of every run in the server's SQLite file, read directly."""
    db = sqlite3.connect(project.root / ".flowrunner" / "api.db", timeout=30)
    try:
        return list(db.execute("SELECT id, launched_by FROM runs ORDER BY created_at"))
    finally:
        db.close()


async def launches(
    client: httpx.AsyncClient, bodies: list[tuple[str, dict[str, Any]]], key: str | None
) -> list[httpx.Response]:
    headers = {"Idempotency-Key": key} if key else {}
    return await asyncio.gather(
        *[
            client.post(f"/v1/flows/{flow}/runs", json=body, headers=headers)
            for flow, body in bodies
        ]
    )


async def test_the_same_key_and_body_from_50_clients_give_one_run(
    project: ApiProject, server: LiveServer
) -> None:
    body = {"inputs": {"name": "Ann"}, "band": "deep"}
    async with server.async_client() as client:
        responses = await launches(client, [("greet", body)] * CONCURRENCY, "key-1")
        assert [r.status_code for r in responses] == [201] * CONCURRENCY
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == 1
        assert sum(r.json()["created"] for r in responses) == 1
        (run_id,) = ids
        # again later: still the same run
        (again,) = await launches(client, [("greet", body)], "key-1")
        assert again.status_code == 201 and again.json() == {"id": run_id, "created": False}
        listed = (await client.get("/v1/runs")).json()["runs"]
        assert [run["id"] for run in listed] == [run_id]
    assert stored_runs(project) == [(run_id, "alice")]


async def test_the_same_key_with_another_body_is_422(
    project: ApiProject, server: LiveServer
) -> None:
    first = {"inputs": {"name": "Ann"}}
    async with server.async_client() as client:
        (response,) = await launches(client, [("greet", first)], "key-2")
        assert response.status_code == 201
        run_id = response.json()["id"]
        others: list[tuple[str, dict[str, Any]]] = [
            ("greet", {"inputs": {"name": "Bo"}}),
            ("greet", {"inputs": {"name": "Ann"}, "band": "deep"}),
            ("greet", {"inputs": {"name": "Ann"}, "model": "other"}),
            ("greet", {"inputs": {"name": "Ann", "count": 1}}),
            ("gate", {}),
        ]
        for other in others:
            (response,) = await launches(client, [other], "key-2")
            details = assert_error(response, 422, "invalid_input")
            assert details == {"idempotency_key": "key-2"}
            assert "Idempotency-Key" in response.json()["error"]["message"]
        # the first body is still answered with its run
        (response,) = await launches(client, [("greet", first)], "key-2")
        assert response.json() == {"id": run_id, "created": False}
    assert stored_runs(project) == [(run_id, "alice")]


async def test_two_bodies_racing_on_one_key_store_one_run(
    project: ApiProject, server: LiveServer
) -> None:
    one = ("greet", {"inputs": {"name": "One"}})
    two = ("greet", {"inputs": {"name": "Two"}})
    async with server.async_client() as client:
        responses = await launches(client, [one, two] * (CONCURRENCY // 2), "key-3")
    by_body: dict[str, list[httpx.Response]] = {"One": [], "Two": []}
    for (_, body), response in zip([one, two] * (CONCURRENCY // 2), responses, strict=True):
        by_body[body["inputs"]["name"]].append(response)
    winner = "One" if by_body["One"][0].status_code == 201 else "Two"
    loser = "Two" if winner == "One" else "One"
    assert {r.status_code for r in by_body[winner]} == {201}
    assert len({r.json()["id"] for r in by_body[winner]}) == 1
    for response in by_body[loser]:
        assert_error(response, 422, "invalid_input")
    ((run_id, _),) = stored_runs(project)
    assert by_body[winner][0].json()["id"] == run_id


async def test_50_launches_without_a_key_make_50_runs_that_all_complete(
    project: ApiProject, server: LiveServer
) -> None:
    bodies = [("greet", {"inputs": {"name": f"n{i}"}}) for i in range(CONCURRENCY)]
    async with server.async_client() as client:
        responses = await launches(client, bodies, None)
        assert [r.status_code for r in responses] == [201] * CONCURRENCY
        ids = [r.json()["id"] for r in responses]
        assert len(set(ids)) == CONCURRENCY

        async def finished() -> list[dict[str, Any]]:
            for _ in range(400):
                page = (await client.get("/v1/runs", params={"limit": 500})).json()["runs"]
                if all(run["status"] != "running" for run in page):
                    return list(page)
                await asyncio.sleep(0.05)
            raise AssertionError("runs did not finish")

        runs = await finished()
    assert sorted(run["id"] for run in runs) == sorted(ids)
    assert Counter(run["status"] for run in runs) == {"completed": CONCURRENCY}
    assert len(stored_runs(project)) == CONCURRENCY


async def test_50_concurrent_decisions_on_one_gate_exactly_one_wins(server: LiveServer) -> None:
    tokens = ["tok-alice", "tok-bob", "tok-lead"]
    with server.client() as sync:
        run_ids = [sync.post("/v1/flows/gate/runs", json={}).json()["id"] for _ in range(3)]
        for run_id in run_ids:
            wait_step(sync, run_id, "review", "waiting")
    clients = [server.async_client(token) for token in tokens]
    try:
        for run_id in run_ids:
            requests = []
            for n in range(CONCURRENCY):
                verb = "approve" if n % 2 == 0 else "reject"
                body = {"comment": f"decision {n}", "payload": {"audience": "team"}}
                url = f"/v1/runs/{run_id}/steps/review/{verb}"
                requests.append(clients[n % len(clients)].post(url, json=body))
            responses = await asyncio.gather(*requests)
            codes = Counter(r.status_code for r in responses)
            assert codes == {200: 1, 409: CONCURRENCY - 1}, codes
            (winner,) = [(n, r) for n, r in enumerate(responses) if r.status_code == 200]
            for response in responses:
                if response.status_code == 409:
                    assert_error(response, 409, "conflict")
            n, response = winner
            data = response.json()["data"]
            assert data["comment"] == f"decision {n}"
            assert data["approved"] is (n % 2 == 0)
            assert data["by"] == ["alice", "bob", "lead"][n % len(tokens)]

            events = (await clients[0].get(f"/v1/runs/{run_id}/events")).json()["events"]
            decided = [e for e in events if e["event"] == "gate_decided"]
            assert len(decided) == 1
            assert decided[0]["payload"]["by"] == data["by"]
            assert decided[0]["payload"]["comment"] == data["comment"]
            with server.client() as sync:
                run = wait_status(sync, run_id)
            assert run["status"] == ("completed" if data["approved"] else "failed")
            review = {s["id"]: s for s in run["steps"]}["review"]
            assert review["data"]["by"] == data["by"]
    finally:
        for client in clients:
            await client.aclose()


async def test_concurrent_cancels_of_one_run_exactly_one_wins(server: LiveServer) -> None:
    with server.client() as sync:
        run_id = sync.post("/v1/flows/sleepy/runs", json={}).json()["id"]
        wait_step(sync, run_id, "nap", "running")
    async with server.async_client() as client:
        responses = await asyncio.gather(
            *[client.post(f"/v1/runs/{run_id}/cancel") for _ in range(20)]
        )
        codes = Counter(r.status_code for r in responses)
        assert codes == {200: 1, 409: 19}, codes
        events = (await client.get(f"/v1/runs/{run_id}/events")).json()["events"]
    assert [e["event"] for e in events].count("run_cancelled") == 1
