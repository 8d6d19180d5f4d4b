"""Rows of either database as the store's records (both drivers' rows index by column)."""

from __future__ import annotations

import json
from typing import Any, Protocol

from engine.core.plan import RunStatus, StepStatus
from engine.store.base import AgentCall, Event, RunRecord, StepRecord


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...

    def keys(self) -> Any: ...


def as_json(value: Any) -> str:
    """JSON text as both stores keep it: compact, not ASCII-escaped."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def run_record(row: Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        flow=row["flow"],
        status=RunStatus(row["status"]),
        band=row["band"],
        model=row["model"],
        inputs=json.loads(row["inputs"]),
        launched_by=row["launched_by"],
        replay_of=row["replay_of"],
        unsettled=row["unsettled"],
        report=row["report"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        snapshot_hash=row["snapshot_hash"],
        request_hash=row["request_hash"],
        last_event=row["last_event"] if "last_event" in row.keys() else 0,  # noqa: SIM118
    )


def step_record(row: Row) -> StepRecord:
    return StepRecord(
        run_id=row["run_id"],
        id=row["step_id"],
        kind=row["kind"],
        position=row["position"],
        status=StepStatus(row["status"]),
        attempts=row["attempts"],
        failures=row["failures"],
        crashes=row["crashes"],
        input=row["input"],
        output=row["output"],
        fields=json.loads(row["fields"]) if row["fields"] else {},
        data=json.loads(row["data"]) if row["data"] is not None else None,
        error=row["error"],
        scripted=bool(row["scripted"]),
        deadline=row["deadline"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def event_record(row: Row) -> Event:
    return Event(
        row["run_id"],
        row["id"],
        row["step_id"],
        row["event"],
        json.loads(row["payload"]),
        row["at"],
    )


def agent_call(row: Row) -> AgentCall:
    return AgentCall(
        row["run_id"],
        row["step_id"],
        row["attempt"],
        row["sequence"],
        row["persona"],
        row["prompt"],
        row["output"],
        row["backend"],
        bool(row["scripted"]),
        row["at"],
    )
