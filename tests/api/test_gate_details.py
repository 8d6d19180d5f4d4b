"""``GET /v1/runs/{id}`` describes a waiting gate fully: its rendered message, who may
decide it, its deadline and its form, from the run's snapshot (not the current file)."""

from __future__ import annotations

from .conftest import ApiProject, LiveServer, launch, wait_step

GATED = """
steps:
  - {id: draft, kind: agent, prompt: "Draft it"}
  - id: review
    kind: approval
    needs: [draft]
    approvers: [alice, lead]
    timeout: 1h
    message: "Publish {{ steps.draft.output }}?"
    form:
      audience: {type: string, enum: [team, public], description: Who reads it.}
      size: {type: integer, default: 1}
  - {id: publish, kind: agent, needs: [review], prompt: "Publish it"}
"""


def test_a_waiting_gate_is_described_from_the_run_snapshot(
    project: ApiProject, server: LiveServer
) -> None:
    project.flow("gated", GATED)
    with server.client("tok-alice") as client:
        run_id = launch(client, "gated")
        project.flow("gated", GATED.replace("team, public", "nobody"))  # edited after launch
        run = wait_step(client, run_id, "review", "waiting")
    steps = {step["id"]: step for step in run["steps"]}
    gate = steps["review"]["gate"]
    assert gate["message"] == "Publish the draft?"
    assert gate["approvers"] == ["alice", "lead"]
    assert gate["deadline"] is not None and gate["deadline"] > run["created_at"] + 3500
    assert (gate["on_timeout"], gate["on_reject"], gate["prevent_self_approval"]) == (
        "reject",
        "fail",
        False,
    )
    assert gate["form"] == {
        "audience": {
            "type": "string",
            "enum": ["team", "public"],
            "description": "Who reads it.",
            "required": True,
        },
        "size": {"type": "integer", "default": 1, "required": False},
    }
    assert steps["draft"]["gate"] is None and steps["publish"]["gate"] is None
    assert steps["publish"]["status"] == "pending"
