"""A decision sent again after its answer was lost learns that its own decision won: the
409 of a gate decided already names that decision (verdict, by whom, when, comment,
payload) and says whether it is the sender's own (``same``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import ApiProject, LiveServer, assert_error, get_run, launch, wait_step

SHIP = {"comment": "ship it", "payload": {"audience": "team"}}


def decide(client: httpx.Client, run_id: str, verb: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(f"/v1/runs/{run_id}/steps/review/{verb}", json=body)


def refusal(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """The 409's message and details."""
    details = assert_error(response, 409, "conflict")
    return response.json()["error"]["message"], details


@pytest.fixture
def approved(server: LiveServer) -> tuple[str, dict[str, Any]]:
    """A run whose gate bob approved with :data:`SHIP`, and the gate's stored data."""
    with server.client("tok-bob") as bob:
        run_id = launch(bob, "gate")
        wait_step(bob, run_id, "review", "waiting")
        response = decide(bob, run_id, "approve", SHIP)
        assert response.status_code == 200, response.text
        return run_id, response.json()["data"]


def test_a_retried_approval_learns_that_it_won(
    server: LiveServer, approved: tuple[str, dict[str, Any]]
) -> None:
    run_id, data = approved
    with server.client("tok-bob") as bob:
        # the same request, and the same with the form's default written out
        for body in (SHIP, {**SHIP, "payload": {"audience": "team", "size": 1}}):
            message, details = refusal(decide(bob, run_id, "approve", body))
            assert details == {
                "status": "completed",
                "decision": {
                    "approved": True,
                    "by": "bob",
                    "at": data["at"],
                    "comment": "ship it",
                    "payload": {"audience": "team", "size": 1},
                    "timed_out": False,
                    "same": True,
                },
            }
            assert message.endswith("approved by 'bob'"), message
        assert [s["data"] for s in get_run(bob, run_id)["steps"] if s["id"] == "review"] == [data]


@pytest.mark.parametrize(
    ("token", "verb", "body"),
    [
        ("tok-alice", "approve", SHIP),  # another identity
        ("tok-bob", "reject", SHIP),  # another verdict
        ("tok-bob", "approve", {**SHIP, "comment": "go"}),  # another comment
        ("tok-bob", "approve", {**SHIP, "payload": {"audience": "public"}}),  # another payload
        ("tok-bob", "approve", {**SHIP, "payload": {"audience": "team", "size": 2}}),
    ],
)
def test_another_decision_learns_whose_won(
    server: LiveServer,
    approved: tuple[str, dict[str, Any]],
    token: str,
    verb: str,
    body: dict[str, Any],
) -> None:
    run_id, data = approved
    with server.client(token) as client:
        message, details = refusal(decide(client, run_id, verb, body))
    assert details["decision"]["same"] is False
    assert (details["decision"]["by"], details["decision"]["approved"]) == ("bob", True)
    assert details["decision"]["at"] == data["at"]
    assert "approved by 'bob'" in message


def test_a_retried_rejection_learns_that_it_won(server: LiveServer) -> None:
    with server.client("tok-lead") as lead:
        run_id = launch(lead, "gate")
        wait_step(lead, run_id, "review", "waiting")
        body = {"comment": "not yet"}
        assert decide(lead, run_id, "reject", body).status_code == 200
        message, details = refusal(decide(lead, run_id, "reject", body))
        assert details["status"] == "failed"
        decision = details["decision"]
        assert (decision["approved"], decision["by"], decision["comment"]) == (
            False,
            "lead",
            "not yet",
        )
        assert decision["payload"] == {} and decision["same"] is True
        assert message.endswith("rejected by 'lead'"), message
        # a rejection stores no payload: one sent with the retry changes nothing
        _, details = refusal(decide(lead, run_id, "reject", {**body, "payload": {"x": 1}}))
        assert details["decision"]["same"] is True


def test_a_gate_not_reached_yet_holds_no_decision(
    project: ApiProject, client: httpx.Client
) -> None:
    project.flow(
        "slowgate",
        """
        steps:
          - {id: nap, kind: code, call: "PKG.steps:pause", with: {seconds: 30, label: nap}}
          - {id: review, kind: approval, needs: [nap]}
        """,
    )
    run_id = launch(client, "slowgate")
    _, details = refusal(decide(client, run_id, "approve", {}))
    assert details == {"status": "pending", "decision": None}
    # a step that is no gate: a plain 409, nothing to tell
    _, details = refusal(client.post(f"/v1/runs/{run_id}/steps/nap/approve", json={}))
    assert details is None
    assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 200
