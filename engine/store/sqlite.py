"""The embedded store: one SQLite file (WAL, busy timeout), zero set-up.

SQLite has one writer at a time, which is what serializes advancing a run
across processes. In one process, transactions on the shared connection are
serialized by a lock. Every method below is one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from engine.core.decisions import GiveUp, after_lost_lease
from engine.core.plan import RunStatus, StepStatus
from engine.store.base import (
    AgentCall,
    Capacity,
    Claim,
    Conflict,
    Decision,
    Event,
    NewRun,
    NotFound,
    RunRecord,
    StepRecord,
    StepResult,
    Store,
    StoreError,
)
from engine.store.queries import load_migrations, load_queries

Q = load_queries("sqlite")

EventRow = tuple[str | None, str, Mapping[str, Any]]


def _statements(script: str) -> list[str]:
    """The statements of a migration, so they run inside the migration's transaction."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s.strip(" \n;")]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _run(row: sqlite3.Row) -> RunRecord:
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
    )


def _step(row: sqlite3.Row) -> StepRecord:
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


def _fence(claim: Claim) -> dict[str, Any]:
    return {
        "run_id": claim.run_id,
        "step_id": claim.step_id,
        "worker": claim.worker,
        "attempt": claim.attempt,
    }


class SqliteStore(Store):
    """The SQLite implementation of :class:`Store`."""

    def __init__(self, path: Path, busy_timeout: float = 30.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = await aiosqlite.connect(
                self.path, isolation_level=None, timeout=self.busy_timeout
            )
            self._db.row_factory = sqlite3.Row
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=NORMAL")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _migrate(self) -> None:
        async with self._tx() as db:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            cursor = await db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            row = await cursor.fetchone()
            current = row[0] if row else 0
            for migration in load_migrations("sqlite"):
                if migration.version > current:
                    for statement in _statements(migration.sql):
                        await db.execute(statement)
                    await db.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        (migration.version, migration.name, time.time()),
                    )

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            db = self.db
            try:
                await db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store busy or unavailable: {exc}") from exc
            try:
                yield db
            except BaseException:
                await db.rollback()
                raise
            else:
                try:
                    await db.commit()
                except sqlite3.Error as exc:
                    raise StoreError(f"SQLite commit failed: {exc}") from exc

    async def _read(self, query: str, params: Mapping[str, Any]) -> list[sqlite3.Row]:
        async with self._lock:
            try:
                cursor = await self.db.execute(Q[query], params)
                return list(await cursor.fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite read failed: {exc}") from exc

    @staticmethod
    async def _events(
        db: aiosqlite.Connection, run_id: str, rows: Sequence[EventRow], now: float
    ) -> None:
        if not rows:
            return
        cursor = await db.execute(
            Q["next_event_ids"], {"run_id": run_id, "count": len(rows), "now": now}
        )
        last = (await cursor.fetchone())[0]  # type: ignore[index]
        first = last - len(rows) + 1
        await db.executemany(
            Q["insert_event"],
            [
                {
                    "run_id": run_id,
                    "id": first + offset,
                    "step_id": step_id,
                    "event": event,
                    "payload": _json(dict(payload)),
                    "at": now,
                }
                for offset, (step_id, event, payload) in enumerate(rows)
            ],
        )

    # Runs

    async def create_run(self, run: NewRun, now: float) -> tuple[str, bool]:
        async with self._tx() as db:
            if run.idempotency_key is not None:
                cursor = await db.execute(Q["run_by_key"], {"key": run.idempotency_key})
                existing = await cursor.fetchone()
                if existing is not None:
                    if existing["request_hash"] != run.request_hash:
                        raise Conflict("this Idempotency-Key was used with another request body")
                    return existing["id"], False
            unsettled = sum(step.status is StepStatus.PENDING for step in run.steps)
            await db.execute(
                Q["insert_run"],
                {
                    "id": run.id,
                    "flow": run.flow,
                    "band": run.band,
                    "model": run.model,
                    "inputs": _json(dict(run.inputs)),
                    "snapshot": run.snapshot,
                    "snapshot_hash": run.snapshot_hash,
                    "launched_by": run.launched_by,
                    "idempotency_key": run.idempotency_key,
                    "request_hash": run.request_hash,
                    "replay_of": run.replay_of,
                    "max_parallel": run.max_parallel,
                    "unsettled": unsettled,
                    "now": now,
                },
            )
            await db.executemany(
                Q["insert_step"],
                [
                    {
                        "run_id": run.id,
                        "step_id": step.id,
                        "position": step.position,
                        "kind": step.kind,
                        "agent": int(step.agent),
                        "status": str(step.status),
                        "waiting_on": step.waiting_on,
                    }
                    for step in run.steps
                ],
            )
            excluded = [s.id for s in run.steps if s.status is StepStatus.EXCLUDED]
            await self._events(
                db,
                run.id,
                [
                    (None, "run_started", {"flow": run.flow, "band": run.band, "model": run.model}),
                    *((step, "step_excluded", {"band": run.band}) for step in excluded),
                ],
                now,
            )
            return run.id, True

    async def get_run(self, run_id: str) -> RunRecord:
        rows = await self._read("get_run", {"id": run_id})
        if not rows:
            raise NotFound(f"no run '{run_id}'")
        return _run(rows[0])

    async def get_snapshot(self, run_id: str) -> str:
        rows = await self._read("get_snapshot", {"id": run_id})
        if not rows:
            raise NotFound(f"no run '{run_id}'")
        return str(rows[0]["snapshot"])

    async def list_runs(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        waiting: bool | None = None,
        limit: int = 50,
        before: tuple[float, str] | None = None,
    ) -> list[RunRecord]:
        clauses, params = _run_filters(flow, status, waiting, before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = (
            Q["get_run"].split(" WHERE ")[0]
            + f" {where} ORDER BY created_at DESC, id DESC LIMIT :limit"
        )
        async with self._lock:
            cursor = await self.db.execute(query, {**params, "limit": limit})
            return [_run(row) for row in await cursor.fetchall()]

    async def get_steps(
        self, run_id: str, step_ids: Sequence[str] | None = None
    ) -> list[StepRecord]:
        if step_ids is None:
            return [_step(row) for row in await self._read("get_steps", {"run_id": run_id})]
        found: list[StepRecord] = []
        wanted = list(dict.fromkeys(step_ids))
        async with self._lock:
            for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
                chunk = wanted[start : start + 500]
                query = Q["get_some_steps"].format(ids=", ".join("?" * len(chunk)))
                cursor = await self.db.execute(query, [run_id, *chunk])
                found.extend(_step(row) for row in await cursor.fetchall())
        return sorted(found, key=lambda step: step.position)

    async def lease_owners(self) -> list[str]:
        return [row[0] for row in await self._read("lease_owners", {})]

    async def expire_leases(self, owner: str, now: float) -> None:
        async with self._tx() as db:
            await db.execute(Q["expire_leases"], {"owner": owner})

    async def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        rows = await self._read("events", {"run_id": run_id, "after": after, "limit": limit})
        return [
            Event(
                row["run_id"],
                row["id"],
                row["step_id"],
                row["event"],
                json.loads(row["payload"]),
                row["at"],
            )
            for row in rows
        ]

    # Scheduling

    async def claim(
        self,
        worker: str,
        now: float,
        lease: float,
        capacity: Capacity,
        max_crashes: int,
        run_id: str | None = None,
    ) -> list[Claim]:
        if capacity.agents <= 0 and capacity.others <= 0:
            return []
        limit = capacity.agents + capacity.others
        async with self._tx() as db:
            rows: list[sqlite3.Row] = []
            for query in ("claimable_expired", "claimable_ready"):
                params = {"now": now, "limit": limit, "run_id": run_id}
                cursor = await db.execute(Q[query], params)
                rows.extend(await cursor.fetchall())
            agents, others = capacity.agents, capacity.others
            running: dict[str, int] = {}
            claims = []
            for row in rows:
                if row["agent"]:
                    if agents <= 0 or not await self._run_has_room(db, row, running):
                        continue
                elif others <= 0:
                    continue
                claim = await self._take(db, row, worker, now, lease, max_crashes)
                if claim is None:
                    continue
                claims.append(claim)
                if row["agent"]:
                    agents -= 1
                    running[row["run_id"]] += 1
                else:
                    others -= 1
            return claims

    @staticmethod
    async def _run_has_room(
        db: aiosqlite.Connection, row: sqlite3.Row, running: dict[str, int]
    ) -> bool:
        run_id = row["run_id"]
        if run_id not in running:
            cursor = await db.execute(Q["running_agents"], {"run_id": run_id})
            running[run_id] = (await cursor.fetchone())[0]  # type: ignore[index]
        cap = row["max_parallel"]
        return cap is None or running[run_id] < cap

    async def _take(
        self,
        db: aiosqlite.Connection,
        row: sqlite3.Row,
        worker: str,
        now: float,
        lease: float,
        max_crashes: int,
    ) -> Claim | None:
        run_id, step_id = row["run_id"], row["step_id"]
        crashes = row["crashes"]
        events: list[EventRow] = []
        if row["status"] == "running":  # its worker stopped heartbeating
            crashes += 1
            events.append(
                (
                    step_id,
                    "lease_expired",
                    {"owner": row["lease_owner"], "attempt": row["attempts"]},
                )
            )
            decision = after_lost_lease(crashes, max_crashes)
            if isinstance(decision, GiveUp):
                await db.execute(
                    "UPDATE steps SET crashes = ? WHERE run_id = ? AND step_id = ?",
                    (crashes, run_id, step_id),
                )
                await self._events(db, run_id, events, now)
                fence = {
                    "run_id": run_id,
                    "step_id": step_id,
                    "worker": row["lease_owner"],
                    "attempt": row["attempts"],
                }
                await self._fail(db, fence, "running", decision.reason, now)
                return None
        attempt = row["attempts"] + 1
        await db.execute(
            Q["take_step"],
            {
                "run_id": run_id,
                "step_id": step_id,
                "attempt": attempt,
                "crashes": crashes,
                "worker": worker,
                "expires": now + lease,
                "now": now,
            },
        )
        events.append((step_id, "step_started", {"attempt": attempt, "worker": worker}))
        await self._events(db, run_id, events, now)
        return Claim(run_id, step_id, row["kind"], attempt, row["failures"], worker)

    async def heartbeat(
        self, worker: str, claims: Sequence[Claim], now: float, lease: float
    ) -> set[tuple[str, str]]:
        held: set[tuple[str, str]] = set()
        if not claims:
            return held
        async with self._tx() as db:
            for claim in claims:
                cursor = await db.execute(
                    Q["extend_lease"], {**_fence(claim), "expires": now + lease}
                )
                if cursor.rowcount:
                    held.add((claim.run_id, claim.step_id))
        return held

    async def _settle(
        self,
        db: aiosqlite.Connection,
        run_id: str,
        dependents: Iterable[str],
        now: float,
    ) -> None:
        await db.executemany(
            Q["settle_dependent"], [{"run_id": run_id, "step_id": d} for d in dependents]
        )
        await db.execute(Q["settle_run"], {"run_id": run_id, "now": now})

    async def _refuse_stale(self, db: aiosqlite.Connection, claim: Claim, now: float) -> None:
        await self._events(
            db,
            claim.run_id,
            [
                (
                    claim.step_id,
                    "stale_result_refused",
                    {"worker": claim.worker, "attempt": claim.attempt},
                )
            ],
            now,
        )

    async def complete_step(
        self, claim: Claim, result: StepResult, dependents: Sequence[str], now: float
    ) -> bool:
        async with self._tx() as db:
            cursor = await db.execute(
                Q["complete_step"],
                {
                    **_fence(claim),
                    "output": result.output,
                    "fields": _json(dict(result.fields)),
                    "data": _json(result.data) if result.data is not None else None,
                    "input": result.input,
                    "scripted": int(result.scripted),
                    "now": now,
                },
            )
            if not cursor.rowcount:
                await self._refuse_stale(db, claim, now)
                return False
            await self._settle(db, claim.run_id, dependents, now)
            payload = {"attempt": claim.attempt, "scripted": result.scripted}
            await self._events(db, claim.run_id, [(claim.step_id, "step_completed", payload)], now)
            return True

    async def skip_step(
        self, claim: Claim, reason: str, dependents: Sequence[str], now: float
    ) -> bool:
        async with self._tx() as db:
            cursor = await db.execute(Q["skip_step"], {**_fence(claim), "now": now})
            if not cursor.rowcount:
                await self._refuse_stale(db, claim, now)
                return False
            await self._settle(db, claim.run_id, dependents, now)
            await self._events(
                db, claim.run_id, [(claim.step_id, "step_skipped", {"reason": reason})], now
            )
            return True

    async def fail_attempt(
        self, claim: Claim, error: str, retry_at: float | None, now: float
    ) -> bool:
        async with self._tx() as db:
            if retry_at is not None:
                cursor = await db.execute(
                    Q["retry_step"], {**_fence(claim), "ready_at": retry_at, "error": error}
                )
                if not cursor.rowcount:
                    await self._refuse_stale(db, claim, now)
                    return False
                payload = {"attempt": claim.attempt, "error": error, "retry_at": retry_at}
                await self._events(
                    db, claim.run_id, [(claim.step_id, "step_retrying", payload)], now
                )
                return True
            if not await self._fail(db, _fence(claim), "running", error, now):
                await self._refuse_stale(db, claim, now)
                return False
            return True

    async def _fail(
        self,
        db: aiosqlite.Connection,
        fence: Mapping[str, Any],
        status: str,
        error: str,
        now: float,
    ) -> bool:
        """Fail a step, then its run, cancelling every step not yet finished."""
        cursor = await db.execute(
            Q["fail_step"], {**fence, "status": status, "error": error, "now": now}
        )
        if not cursor.rowcount:
            return False
        run_id, step_id = fence["run_id"], fence["step_id"]
        await self._events(db, run_id, [(step_id, "step_failed", {"error": error})], now)
        await self._end(db, run_id, RunStatus.FAILED, f"step '{step_id}' failed: {error}", now)
        return True

    async def _end(
        self,
        db: aiosqlite.Connection,
        run_id: str,
        status: RunStatus,
        error: str | None,
        now: float,
    ) -> None:
        cursor = await db.execute(Q["live_steps"], {"run_id": run_id})
        live = [row[0] for row in await cursor.fetchall()]
        await db.execute(Q["cancel_live_steps"], {"run_id": run_id, "now": now})
        await db.execute(
            Q["end_run"],
            {"run_id": run_id, "status": str(status), "error": error, "report": None, "now": now},
        )
        rows: list[EventRow] = [(step, "step_cancelled", {}) for step in live]
        rows.append((None, f"run_{status}", {"error": error} if error else {}))
        await self._events(db, run_id, rows, now)

    async def release(self, claims: Sequence[Claim], now: float) -> None:
        async with self._tx() as db:
            for claim in claims:
                cursor = await db.execute(Q["release_step"], _fence(claim))
                if cursor.rowcount:
                    await self._events(
                        db, claim.run_id, [(claim.step_id, "step_released", {})], now
                    )

    async def wait_for_gate(
        self, claim: Claim, message: str, deadline: float | None, now: float
    ) -> bool:
        async with self._tx() as db:
            cursor = await db.execute(
                Q["wait_step"], {**_fence(claim), "message": message, "deadline": deadline}
            )
            if not cursor.rowcount:
                await self._refuse_stale(db, claim, now)
                return False
            payload = {"message": message, "deadline": deadline}
            await self._events(db, claim.run_id, [(claim.step_id, "step_waiting", payload)], now)
            return True

    async def decide_gate(
        self,
        run_id: str,
        step_id: str,
        decision: Decision,
        settle: bool,
        dependents: Sequence[str],
        now: float,
    ) -> StepRecord:
        data = {
            "approved": decision.approved,
            "by": decision.by,
            "comment": decision.comment,
            "payload": dict(decision.payload),
            "at": now,
            "timed_out": decision.timed_out,
        }
        decided = (
            step_id,
            "gate_decided",
            {k: data[k] for k in ("approved", "by", "comment", "timed_out")},
        )
        async with self._tx() as db:
            params = {
                "run_id": run_id,
                "step_id": step_id,
                "output": decision.comment,
                "data": _json(data),
                "now": now,
            }
            if settle:
                cursor = await db.execute(Q["decide_complete"], params)
            else:
                error = "rejected" + (f": {decision.comment}" if decision.comment else "")
                cursor = await db.execute(Q["decide_fail"], {**params, "error": error})
            if not cursor.rowcount:
                await self._gate_conflict(db, run_id, step_id)
            if settle:
                await self._settle(db, run_id, dependents, now)
                await self._events(
                    db, run_id, [decided, (step_id, "step_completed", {"gate": True})], now
                )
            else:
                await self._events(
                    db, run_id, [decided, (step_id, "step_failed", {"error": error})], now
                )
                await self._end(db, run_id, RunStatus.FAILED, f"step '{step_id}' {error}", now)
            cursor = await db.execute(Q["get_steps"], {"run_id": run_id})
            return next(_step(row) for row in await cursor.fetchall() if row["step_id"] == step_id)

    @staticmethod
    async def _gate_conflict(db: aiosqlite.Connection, run_id: str, step_id: str) -> None:
        cursor = await db.execute(Q["step_status"], {"run_id": run_id, "step_id": step_id})
        row = await cursor.fetchone()
        if row is None:
            raise NotFound(f"no step '{step_id}' in run '{run_id}'")
        raise Conflict(f"step '{step_id}' is {row[0]}, not waiting for a decision")

    async def expired_gates(self, now: float) -> list[tuple[str, str]]:
        rows = await self._read("expired_gates", {"now": now})
        return [(row["run_id"], row["step_id"]) for row in rows]

    async def cancel_run(self, run_id: str, now: float) -> RunRecord:
        async with self._tx() as db:
            cursor = await db.execute(Q["get_run"], {"id": run_id})
            row = await cursor.fetchone()
            if row is None:
                raise NotFound(f"no run '{run_id}'")
            if row["status"] != "running":
                raise Conflict(f"run '{run_id}' is {row['status']}, not running")
            await self._end(db, run_id, RunStatus.CANCELLED, None, now)
        return await self.get_run(run_id)

    async def retry_run(self, run_id: str, resets: Mapping[str, int], now: float) -> RunRecord:
        async with self._tx() as db:
            cursor = await db.execute(
                Q["reopen_run"], {"run_id": run_id, "unsettled": len(resets), "now": now}
            )
            if not cursor.rowcount:
                cursor = await db.execute(Q["get_run"], {"id": run_id})
                row = await cursor.fetchone()
                if row is None:
                    raise NotFound(f"no run '{run_id}'")
                raise Conflict(
                    f"run '{run_id}' is {row['status']}: "
                    "only failed or cancelled runs can be retried"
                )
            await db.executemany(
                Q["reset_step"],
                [{"run_id": run_id, "step_id": s, "waiting_on": w} for s, w in resets.items()],
            )
            await self._events(db, run_id, [(None, "run_retried", {"steps": list(resets)})], now)
        return await self.get_run(run_id)

    async def finish_run(
        self, run_id: str, status: RunStatus, report: str | None, error: str | None, now: float
    ) -> bool:
        async with self._tx() as db:
            cursor = await db.execute(
                Q["finish_run"],
                {
                    "run_id": run_id,
                    "status": str(status),
                    "report": report,
                    "error": error,
                    "now": now,
                },
            )
            if not cursor.rowcount:
                return False
            await self._events(
                db, run_id, [(None, f"run_{status}", {"error": error} if error else {})], now
            )
            return True

    async def runs_to_finish(self) -> list[str]:
        return [row["id"] for row in await self._read("runs_to_finish", {})]

    async def has_work(self, now: float) -> bool:
        rows = await self._read("has_work", {})
        return bool(rows[0][0])

    async def next_wakeup(self, now: float) -> float | None:
        rows = await self._read("next_wakeup", {})
        value = rows[0][0]
        return float(value) if value is not None else None

    # Agent calls and notes

    async def record_agent_call(self, call: AgentCall) -> None:
        async with self._tx() as db:
            await db.execute(
                Q["record_agent_call"],
                {
                    "run_id": call.run_id,
                    "step_id": call.step_id,
                    "attempt": call.attempt,
                    "sequence": call.sequence,
                    "persona": call.persona,
                    "prompt": call.prompt,
                    "output": call.output,
                    "backend": call.backend,
                    "scripted": int(call.scripted),
                    "at": call.at,
                },
            )

    async def agent_calls(self, run_id: str, step_id: str | None = None) -> list[AgentCall]:
        rows = await self._read("agent_calls", {"run_id": run_id, "step_id": step_id})
        return [
            AgentCall(
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
            for row in rows
        ]

    async def append_event(
        self, run_id: str, step_id: str | None, event: str, payload: Mapping[str, Any], now: float
    ) -> None:
        async with self._tx() as db:
            await self._events(db, run_id, [(step_id, event, payload)], now)


def _run_filters(
    flow: str | None, status: str | None, waiting: bool | None, before: tuple[float, str] | None
) -> tuple[list[str], dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if flow is not None:
        clauses.append("flow = :flow")
        params["flow"] = flow
    if status is not None:
        clauses.append("status = :status")
        params["status"] = status
    if waiting is not None:
        exists = "EXISTS (SELECT 1 FROM steps WHERE run_id = runs.id AND status = 'waiting')"
        clauses.append(exists if waiting else f"NOT {exists}")
    if before is not None:
        clauses.append("(created_at, id) < (:before_at, :before_id)")
        params["before_at"], params["before_id"] = before
    return clauses, params
