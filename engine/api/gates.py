"""What a refused decision tells its sender: the decision that took the gate.

A client whose approve or reject got no answer (a timeout, a dropped connection)
sends it again and gets a 409, the gate being decided already. The 409 names that
decision (approved or rejected, by whom, when, with what comment and payload) and
says whether it is the sender's own (``same``: the same identity, verdict, comment
and, for an approval, payload once the form's defaults are applied), so a retry
learns that its first attempt won, or that someone else's did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import Conflict, InvalidInput
from engine.model.documents import ApprovalStep
from engine.runner import service
from engine.store.base import StepRecord, Store

DECISION_KEYS = ("approved", "by", "at", "comment", "payload", "timed_out")
"""What a gate's step stores as its data once decided (see ``Decision.data``)."""


@dataclass(frozen=True, slots=True)
class Asked:
    """The decision a request asked for."""

    approve: bool
    identity: str
    comment: str
    payload: Mapping[str, Any]


async def decided_conflict(
    store: Store, run_id: str, step_id: str, conflict: Conflict, asked: Asked
) -> Conflict:
    """``conflict`` (a gate not waiting) with the gate's status and the decision it holds
    (``None`` when it holds none: not reached yet, or reset by a retry) in its details."""
    steps = await store.get_steps(run_id, [step_id])
    if not steps or steps[0].kind != "approval":
        return conflict  # not a gate: nothing was decided
    step = steps[0]
    decision = decision_of(step)
    details: dict[str, Any] = {"status": str(step.status), "decision": decision}
    if decision is None:
        return Conflict(conflict.message, details)
    decision["same"] = await _same(store, run_id, step_id, decision, asked)
    verdict = "approved" if decision["approved"] else "rejected"
    by = "a timeout" if decision["timed_out"] else repr(decision["by"])
    return Conflict(f"{conflict.message}: {verdict} by {by}", details)


def decision_of(step: StepRecord) -> dict[str, Any] | None:
    """The decision a gate's step holds (its data once decided), or None."""
    data = step.data
    if not isinstance(data, dict) or not all(key in data for key in DECISION_KEYS):
        return None
    return {key: data[key] for key in DECISION_KEYS}


async def _same(
    store: Store, run_id: str, step_id: str, decision: dict[str, Any], asked: Asked
) -> bool:
    mine = (
        not decision["timed_out"]
        and decision["by"] == asked.identity
        and decision["approved"] == asked.approve
        and decision["comment"] == asked.comment
    )
    if not mine:
        return False
    if not asked.approve:
        return True  # a rejection stores no payload
    gate = (await service.compiled_flow(store, run_id)).steps.get(step_id)
    if not isinstance(gate, ApprovalStep):
        return False
    try:
        values = service.check_values(gate.form, asked.payload, "payload field")
    except InvalidInput:
        return False
    return bool(values == decision["payload"])
