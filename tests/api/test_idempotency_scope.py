"""An ``Idempotency-Key`` belongs to the identity that sent it: another identity's same key
(same body or not, one at a time or all at once) neither returns the first identity's run
nor tells that the key was used; it launches a run of its own. On both stores."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from .conftest import LiveServer, get_run

BODY = {"inputs": {"name": "Ann"}}


def launch_with_key(client: httpx.Client, key: str, body: dict[str, object]) -> httpx.Response:
    return client.post("/v1/flows/greet/runs", json=body, headers={"Idempotency-Key": key})


def test_another_identitys_same_key_launches_its_own_run(any_store_server: LiveServer) -> None:
    with (
        any_store_server.client("tok-alice") as alice,
        any_store_server.client("tok-bob") as bob,
        any_store_server.client("tok-lead") as lead,
    ):
        first = launch_with_key(alice, "deploy-42", BODY)
        assert first.status_code == 201 and first.json()["created"] is True
        alices = first.json()["id"]

        theirs = launch_with_key(bob, "deploy-42", BODY)
        assert theirs.status_code == 201, theirs.text
        assert theirs.json()["created"] is True and theirs.json()["id"] != alices
        bobs = theirs.json()["id"]
        assert get_run(bob, bobs)["launched_by"] == "bob"

        # another body under the same key: no 422 that would tell the key exists
        leads = launch_with_key(lead, "deploy-42", {"inputs": {"name": "Lee"}})
        assert leads.status_code == 201, leads.text
        assert leads.json()["created"] is True

        # each identity's repeat still returns its own run
        assert launch_with_key(alice, "deploy-42", BODY).json() == {
            "id": alices,
            "created": False,
        }
        assert launch_with_key(bob, "deploy-42", BODY).json() == {"id": bobs, "created": False}
        # and each identity's key still refuses its own other body
        refused = launch_with_key(bob, "deploy-42", {"inputs": {"name": "Bo"}})
        assert refused.status_code == 422
        assert refused.json()["error"]["details"] == {"idempotency_key": "deploy-42"}

        runs = alice.get("/v1/runs").json()["runs"]
        assert sorted(run["id"] for run in runs) == sorted([alices, bobs, leads.json()["id"]])


async def test_identities_racing_on_one_key_get_one_run_each(
    any_store_server: LiveServer,
) -> None:
    tokens = ["tok-alice", "tok-bob", "tok-lead"]
    clients = [any_store_server.async_client(token) for token in tokens]
    try:
        requests = [
            clients[n % 3].post(
                "/v1/flows/greet/runs", json=BODY, headers={"Idempotency-Key": "same"}
            )
            for n in range(30)
        ]
        responses = await asyncio.gather(*requests)
    finally:
        for client in clients:
            await client.aclose()
    assert {r.status_code for r in responses} == {201}
    by_identity: dict[int, set[str]] = {}
    for n, response in enumerate(responses):
        by_identity.setdefault(n % 3, set()).add(response.json()["id"])
    assert all(len(ids) == 1 for ids in by_identity.values()), by_identity
    assert len(set.union(*by_identity.values())) == 3
    assert Counter(r.json()["created"] for r in responses) == {True: 3, False: 27}
