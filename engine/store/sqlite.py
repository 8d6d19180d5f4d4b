"""The embedded store: one SQLite file (WAL, busy timeout), zero set-up.

SQLite has one writer at a time, which is what serializes advancing a run
across processes. Each store operation is one transaction, run whole as one
call on the store's own thread (``BEGIN IMMEDIATE`` ... ``COMMIT``): a thread
hop per transaction rather than per statement, which is what keeps the cost
of a persisted step well under a millisecond (see bench/overhead.py). Writes
that queue up behind a busy thread commit together (see ``_call``), and the
log is checkpointed when no write waits (see ``_checkpoint_when_idle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from engine.core.decisions import GiveUp, after_lost_lease, crash_counts
from engine.core.plan import RunStatus, StepStatus
from engine.store.base import (
    AgentCall,
    Capacity,
    Claim,
    Conflict,
    Decision,
    Eager,
    Event,
    Finish,
    NewRun,
    NotFound,
    RunRecord,
    Settled,
    StepRecord,
    StepResult,
    Store,
    StoreError,
)
from engine.store.datagrams import DATAGRAM_BYTES, Datagrams
from engine.store.queries import load_migrations, load_queries
from engine.store.rows import agent_call, as_json, event_record, run_record, step_record

log = logging.getLogger("flowrunner.store")

Q = load_queries("sqlite")
T = TypeVar("T")
Db = sqlite3.Connection
EventRow = tuple[str | None, str, Mapping[str, Any]]


CHECKPOINT_SECONDS = 0.2
"""How often, at most, the store's thread folds the write-ahead log into the database
when it has no write waiting (a passive checkpoint, right after delivering a commit).
Every 50 ms cost a fan-out of 5,000 steps 15% (hot pages copied again and again);
every 200 ms costs nothing measurable and keeps each checkpoint short."""

Write = tuple[Callable[[Db], Any], "asyncio.Future[Any]"]
Outcome = tuple[Any, BaseException | None]
"""A write's result, or the exception it raised."""


def _deliver(futures: list[asyncio.Future[Any]], outcomes: list[Outcome]) -> None:
    """Hand each waiting caller its write's outcome (on the event loop's thread)."""
    for future, (result, exc) in zip(futures, outcomes, strict=True):
        if future.cancelled():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


def _statements(script: str) -> list[str]:
    """The statements of a migration, so they run inside the migration's transaction."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s.strip(" \n;")]


def _fence(claim: Claim) -> dict[str, Any]:
    return {
        "run_id": claim.run_id,
        "step_id": claim.step_id,
        "worker": claim.worker,
        "attempt": claim.attempt,
    }


def _events(db: Db, run_id: str, rows: Sequence[EventRow], now: float) -> None:
    """Append events with the run's next ids, in the caller's transaction."""
    if not rows:
        return
    params = {"run_id": run_id, "count": len(rows), "now": now}
    last = db.execute(Q["next_event_ids"], params).fetchone()[0]
    first = last - len(rows) + 1
    db.executemany(
        Q["insert_event"],
        [
            {
                "run_id": run_id,
                "id": first + offset,
                "step_id": step_id,
                "event": event,
                "payload": as_json(dict(payload)),
                "at": now,
            }
            for offset, (step_id, event, payload) in enumerate(rows)
        ],
    )


def _refuse_stale(db: Db, claim: Claim, now: float, seen: str | None = None) -> bool:
    """A result whose fence did not hold: an event while its run goes on, else only a log
    line (a client that stops at the run's ending event must have seen every event)."""
    payload = {"worker": claim.worker, "attempt": claim.attempt}
    if seen is not None:
        payload["seen"] = seen
    status = db.execute(Q["run_status"], {"run_id": claim.run_id}).fetchone()
    if status is None or status[0] != RunStatus.RUNNING:
        log.info("a stale result of %s/%s came after its run ended", claim.run_id, claim.step_id)
        return False
    _events(db, claim.run_id, [(claim.step_id, "stale_result_refused", payload)], now)
    return True


def _settle(
    db: Db,
    run_id: str,
    dependents: str,
    now: float,
    eager: Eager | None = None,
    finish: Finish | None = None,
) -> Settled:
    """A step settled: count it off its run, and its dependents (a JSON list) wait on one
    need fewer. A dependent excluded by the band whose needs have now all settled is
    settled as excluded on the spot, and so on down the graph. With ``eager``, steps
    made ready are claimed at once, within its capacities and the run's max_parallel;
    with ``finish``, a run left with no unsettled step is finished."""
    queue = [dependents]
    unsettled = 0
    ready: list[str] = []
    while queue:
        unsettled = db.execute(Q["settle_run"], {"run_id": run_id, "now": now}).fetchone()[0]
        for step_id in json.loads(queue.pop()):
            params = {"run_id": run_id, "step_id": step_id, "now": now}
            row = db.execute(Q["settle_dependent"], params).fetchone()
            if row["waiting_on"] != 0 or row["status"] != "pending":
                continue
            if row["excluded"]:
                _mark_excluded(db, run_id, step_id, now)
                queue.append(row["dependents"])
            else:
                ready.append(step_id)
    claims: list[Claim] = []
    if eager is not None:
        found = []
        for step_id in ready:
            params = {"run_id": run_id, "step_id": step_id, "now": now}
            if (row := db.execute(Q["claimable_step"], params).fetchone()) is not None:
                found.append(row)
        capacity = Capacity(agents=eager.agents, others=eager.others)
        claims = _take_within(db, found, capacity, eager.worker, now, eager.lease, 1)
    finished = finish is not None and unsettled == 0 and _finish(db, run_id, finish, now)
    return Settled(unsettled, tuple(claims), len(claims) < len(ready), finished)


def _finish(db: Db, run_id: str, finish: Finish, now: float) -> bool:
    """Mark a running run whose steps have all settled as finished; False if it was not."""
    params = {
        "run_id": run_id,
        "status": str(finish.status),
        "report": finish.report,
        "error": finish.error,
        "now": now,
    }
    if not db.execute(Q["finish_run"], params).rowcount:
        return False
    _events(db, run_id, [(None, f"run_{finish.status}", finish.payload())], now)
    return True


def _record_call(db: Db, call: AgentCall) -> None:
    params = {
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
    }
    db.execute(Q["record_agent_call"], params)


def _mark_excluded(db: Db, run_id: str, step_id: str, now: float) -> None:
    db.execute(Q["exclude_step"], {"run_id": run_id, "step_id": step_id, "now": now})
    _events(db, run_id, [(step_id, "step_excluded", {})], now)


def _reach_excluded(db: Db, run_id: str, now: float) -> None:
    """Settle the excluded steps whose needs have all settled (at launch, after a retry)."""
    for row in db.execute(Q["reached_excluded"], {"run_id": run_id}).fetchall():
        _mark_excluded(db, run_id, row["step_id"], now)
        _settle(db, run_id, row["dependents"], now)


def _end(db: Db, run_id: str, status: RunStatus, error: str | None, now: float) -> None:
    """End a run: every step not finished is cancelled."""
    live = [row[0] for row in db.execute(Q["live_steps"], {"run_id": run_id})]
    db.execute(Q["cancel_live_steps"], {"run_id": run_id, "now": now})
    db.execute(
        Q["end_run"],
        {"run_id": run_id, "status": str(status), "error": error, "report": None, "now": now},
    )
    rows: list[EventRow] = [(step, "step_cancelled", {}) for step in live]
    rows.append((None, f"run_{status}", {"error": error} if error else {}))
    _events(db, run_id, rows, now)


def _fail(db: Db, fence: Mapping[str, Any], status: str, error: str, now: float) -> bool:
    """Fail a step, then its run. False when the fence no longer holds."""
    params = {**fence, "status": status, "error": error, "now": now}
    if not db.execute(Q["fail_step"], params).rowcount:
        return False
    run_id, step_id = fence["run_id"], fence["step_id"]
    _events(db, run_id, [(step_id, "step_failed", {"error": error})], now)
    _end(db, run_id, RunStatus.FAILED, f"step '{step_id}' failed: {error}", now)
    return True


class SqliteStore(Store):
    """The SQLite implementation of :class:`Store`."""

    def __init__(self, path: Path, busy_timeout: float = 30.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._db: Db | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fr-sqlite")
        self._writes: list[Write] = []
        self._writes_lock = threading.Lock()
        self._checkpoint_due = 0.0
        self._live = Datagrams(path)

    async def _call(self, body: Callable[[Db], T], *, write: bool = True) -> T:
        """Run ``body`` on the store's thread; when it writes, in a transaction.

        Writes that queue up while the thread is busy commit together (group
        commit): one ``BEGIN IMMEDIATE`` ... ``COMMIT`` for all of them, each in
        its own savepoint, so one that fails is rolled back alone and the others
        still commit. Each caller gets its result only after the commit.
        """
        loop = asyncio.get_running_loop()
        if not write:
            return await loop.run_in_executor(self._thread, self._read_body, body)
        future: asyncio.Future[T] = loop.create_future()
        with self._writes_lock:
            self._writes.append((body, future))
            first = len(self._writes) == 1
        if first:  # the thread takes every write queued by the time it starts
            try:
                self._thread.submit(self._commit_writes, loop)
            except RuntimeError:  # the store was closed: its thread is gone
                with self._writes_lock:
                    self._writes.clear()
                raise StoreError("the store is not open") from None
        return await future

    def _read_body(self, body: Callable[[Db], T]) -> T:
        if self._db is None:
            raise StoreError("the store is not open")
        try:
            return body(self._db)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _error(self, exc: BaseException) -> BaseException:
        """An exception as the caller gets it: SQLite's own errors become StoreError."""
        if isinstance(exc, sqlite3.Error):
            return StoreError(f"SQLite store {self.path}: {exc}")
        return exc

    def _commit_writes(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._writes_lock:
            writes, self._writes = self._writes, []
        writes = [write for write in writes if not write[1].cancelled()]
        if not writes:
            return
        try:
            outcomes = self._transaction([body for body, _ in writes])
        except BaseException as exc:  # the transaction as a whole failed: so did each write
            outcomes = [(None, self._error(exc))] * len(writes)
        with contextlib.suppress(RuntimeError):  # a loop closed meanwhile has no one waiting
            loop.call_soon_threadsafe(_deliver, [future for _, future in writes], outcomes)
        self._checkpoint_when_idle()

    def _checkpoint_when_idle(self) -> None:
        """Fold the log into the database now, while no write waits, a little at a time.

        SQLite otherwise checkpoints inside the commit that takes the log past 1,000
        pages: about 8 ms, which every write queued behind it waited for (most of a
        launch's p99 under 20 clients). That stays as the bound when writes never pause.
        """
        now = time.monotonic()
        # _writes is read without its lock: a race only moves a checkpoint
        if now < self._checkpoint_due or self._writes or self._db is None:
            return
        self._checkpoint_due = now + CHECKPOINT_SECONDS
        with contextlib.suppress(sqlite3.Error):  # busy (another process): the next one
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _transaction(self, bodies: list[Callable[[Db], Any]]) -> list[Outcome]:
        db = self._db
        if db is None:
            raise StoreError("the store is not open")
        outcomes: list[Outcome] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            if len(bodies) == 1:  # alone: its failure is the transaction's
                outcomes.append((bodies[0](db), None))
            else:
                for body in bodies:
                    db.execute("SAVEPOINT write")
                    try:
                        outcomes.append((body(db), None))
                    except Exception as exc:
                        db.execute("ROLLBACK TO write")
                        outcomes.append((None, self._error(exc)))
                    db.execute("RELEASE write")
            db.commit()
        except BaseException:
            db.rollback()
            raise
        return outcomes

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def connect() -> None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA cache_size=-65536")  # 64 MiB: a large run stays in memory
            self._db = db

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, connect)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from exc
        await self._call(self._migrate)

    async def close(self) -> None:
        self._live.close()
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown(wait=False)

    live_bytes = DATAGRAM_BYTES

    async def send_live(self, payloads: list[str]) -> None:
        try:
            self._live.send(payloads)
        except OSError as exc:
            raise StoreError(f"cannot send live frames to {self._live.path}: {exc}") from exc

    def listen_live(self, callback: Callable[[str], None]) -> None:
        self._live.listen(callback)

    @staticmethod
    def _migrate(db: Db) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        current = db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        for migration in load_migrations("sqlite"):
            if migration.version > current[0]:
                for statement in _statements(migration.sql):
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )

    async def _read(self, query: str, params: Mapping[str, Any]) -> list[sqlite3.Row]:
        return await self._call(lambda db: db.execute(Q[query], params).fetchall(), write=False)

    # Runs

    async def create_run(self, run: NewRun, now: float) -> tuple[str, bool]:
        def body(db: Db) -> tuple[str, bool]:
            if run.idempotency_key is not None:
                existing = db.execute(Q["run_by_key"], {"key": run.idempotency_key}).fetchone()
                if existing is not None:
                    if existing["request_hash"] != run.request_hash:
                        raise Conflict("this Idempotency-Key was used with another request body")
                    return existing["id"], False
            unsettled = len(run.steps)
            db.execute(Q["insert_snapshot"], {"hash": run.snapshot_hash, "body": run.snapshot})
            db.execute(
                Q["insert_run"],
                {
                    "id": run.id,
                    "flow": run.flow,
                    "band": run.band,
                    "model": run.model,
                    "inputs": as_json(dict(run.inputs)),
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
            db.executemany(
                Q["insert_step"],
                [
                    {
                        "run_id": run.id,
                        "step_id": step.id,
                        "position": step.position,
                        "kind": step.kind,
                        "agent": int(step.agent),
                        "status": str(StepStatus.PENDING),
                        "waiting_on": step.waiting_on,
                        "dependents": as_json(list(step.dependents)),
                        "excluded": int(step.excluded),
                        "now": now,
                    }
                    for step in run.steps
                ],
            )
            started = {"flow": run.flow, "band": run.band, "model": run.model}
            _events(db, run.id, [(None, "run_started", started)], now)
            if any(step.excluded for step in run.steps):
                _reach_excluded(db, run.id, now)
            return run.id, True

        return await self._call(body)

    async def get_run(self, run_id: str) -> RunRecord:
        rows = await self._read("get_run", {"id": run_id})
        if not rows:
            raise NotFound(f"no run '{run_id}'")
        return run_record(rows[0])

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
        rows = await self._call(
            lambda db: db.execute(query, {**params, "limit": limit}).fetchall(), write=False
        )
        return [run_record(row) for row in rows]

    async def get_steps(
        self, run_id: str, step_ids: Sequence[str] | None = None
    ) -> list[StepRecord]:
        if step_ids is None:
            return [step_record(row) for row in await self._read("get_steps", {"run_id": run_id})]
        wanted = list(dict.fromkeys(step_ids))

        def body(db: Db) -> list[sqlite3.Row]:
            rows: list[sqlite3.Row] = []
            for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
                chunk = wanted[start : start + 500]
                query = Q["get_some_steps"].format(ids=", ".join("?" * len(chunk)))
                rows.extend(db.execute(query, [run_id, *chunk]))
            return rows

        rows = await self._call(body, write=False)
        return sorted((step_record(row) for row in rows), key=lambda step: step.position)

    async def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        rows = await self._read("events", {"run_id": run_id, "after": after, "limit": limit})
        return [event_record(row) for row in rows]

    # Scheduling

    async def claim(
        self,
        worker: str,
        now: float,
        lease: float,
        capacity: Capacity,
        max_crashes: int,
        run_id: str | None = None,
        alone: bool = False,
    ) -> list[Claim]:
        if capacity.agents <= 0 and capacity.others <= 0:
            return []

        def body(db: Db) -> list[Claim]:
            params = {"now": now, "limit": capacity.agents + capacity.others, "run_id": run_id}
            if alone:
                lost = db.execute(Q["claimable_expired"], {**params, "limit": 1}).fetchone()
                if lost is not None:
                    claim = _take(db, lost, worker, now, lease, max_crashes)
                    return [] if claim is None else [claim]
            rows = db.execute(Q["claimable_ready"], params).fetchall()
            return _take_within(db, rows, capacity, worker, now, lease, max_crashes)

        return await self._call(body)

    async def lease_owners(self) -> list[str]:
        return [row[0] for row in await self._read("lease_owners", {})]

    async def expire_leases(self, owner: str, now: float) -> None:
        await self._call(lambda db: db.execute(Q["expire_leases"], {"owner": owner}))

    async def heartbeat(
        self, worker: str, claims: Sequence[Claim], now: float, lease: float
    ) -> set[tuple[str, str]]:
        if not claims:
            return set()

        def body(db: Db) -> set[tuple[str, str]]:
            held = set()
            for claim in claims:
                params = {**_fence(claim), "expires": now + lease}
                if db.execute(Q["extend_lease"], params).rowcount:
                    held.add((claim.run_id, claim.step_id))
            return held

        return await self._call(body)

    async def complete_step(
        self,
        claim: Claim,
        result: StepResult,
        now: float,
        eager: Eager | None = None,
        finish: Finish | None = None,
    ) -> Settled | None:
        params = {
            **_fence(claim),
            "output": result.output,
            "fields": as_json(dict(result.fields)),
            "data": as_json(result.data) if result.data is not None else None,
            "input": result.input,
            "scripted": int(result.scripted),
            "now": now,
        }

        def body(db: Db) -> Settled | None:
            if result.call is not None:
                _record_call(db, result.call)
            row = db.execute(Q["complete_step"], params).fetchone()
            if row is None:
                _refuse_stale(db, claim, now)
                return None
            payload = {"attempt": claim.attempt, "scripted": result.scripted}
            _events(db, claim.run_id, [(claim.step_id, "step_completed", payload)], now)
            return _settle(db, claim.run_id, row["dependents"], now, eager, finish)

        return await self._call(body)

    async def skip_step(
        self,
        claim: Claim,
        reason: str,
        now: float,
        eager: Eager | None = None,
        finish: Finish | None = None,
    ) -> Settled | None:
        def body(db: Db) -> Settled | None:
            row = db.execute(Q["skip_step"], {**_fence(claim), "now": now}).fetchone()
            if row is None:
                _refuse_stale(db, claim, now)
                return None
            _events(db, claim.run_id, [(claim.step_id, "step_skipped", {"reason": reason})], now)
            return _settle(db, claim.run_id, row["dependents"], now, eager, finish)

        return await self._call(body)

    async def fail_attempt(
        self, claim: Claim, error: str, retry_at: float | None, now: float
    ) -> bool:
        def body(db: Db) -> bool:
            if retry_at is None:
                if _fail(db, _fence(claim), "running", error, now):
                    return True
                _refuse_stale(db, claim, now)
                return False
            params = {**_fence(claim), "ready_at": retry_at, "error": error}
            if not db.execute(Q["retry_step"], params).rowcount:
                _refuse_stale(db, claim, now)
                return False
            payload = {"attempt": claim.attempt, "error": error, "retry_at": retry_at}
            _events(db, claim.run_id, [(claim.step_id, "step_retrying", payload)], now)
            return True

        return await self._call(body)

    async def release(self, claims: Sequence[Claim], now: float) -> None:
        def body(db: Db) -> None:
            for claim in claims:
                if db.execute(Q["release_step"], _fence(claim)).rowcount:
                    _events(db, claim.run_id, [(claim.step_id, "step_released", {})], now)

        await self._call(body)

    async def wait_for_gate(
        self, claim: Claim, message: str, deadline: float | None, now: float
    ) -> bool:
        def body(db: Db) -> bool:
            params = {**_fence(claim), "message": message, "deadline": deadline}
            if not db.execute(Q["wait_step"], params).rowcount:
                _refuse_stale(db, claim, now)
                return False
            payload = {"message": message, "deadline": deadline}
            _events(db, claim.run_id, [(claim.step_id, "step_waiting", payload)], now)
            return True

        return await self._call(body)

    async def decide_gate(
        self,
        run_id: str,
        step_id: str,
        decision: Decision,
        settle: bool,
        now: float,
    ) -> StepRecord:
        data, summary = decision.data(now), decision.summary()
        params = {
            "run_id": run_id,
            "step_id": step_id,
            "output": decision.comment,
            "data": as_json(data),
            "now": now,
        }
        error = decision.error

        def body(db: Db) -> StepRecord:
            if settle:
                row = db.execute(Q["decide_complete"], params).fetchone()
                changed = row is not None
            else:
                changed = bool(db.execute(Q["decide_fail"], {**params, "error": error}).rowcount)
            if not changed:
                _gate_conflict(db, run_id, step_id)
            decided: EventRow = (step_id, "gate_decided", summary)
            if settle:
                _events(db, run_id, [decided, (step_id, "step_completed", {"gate": True})], now)
                _settle(db, run_id, row["dependents"], now)
            else:
                _events(db, run_id, [decided, (step_id, "step_failed", {"error": error})], now)
                _end(db, run_id, RunStatus.FAILED, f"step '{step_id}' {error}", now)
            query = Q["get_some_steps"].format(ids="?")
            return step_record(db.execute(query, [run_id, step_id]).fetchone())

        return await self._call(body)

    async def expired_gates(self, now: float) -> list[tuple[str, str]]:
        rows = await self._read("expired_gates", {"now": now})
        return [(row["run_id"], row["step_id"]) for row in rows]

    async def waiting_steps(self, run_id: str) -> list[str]:
        return [row[0] for row in await self._read("waiting_steps", {"run_id": run_id})]

    async def cancel_run(self, run_id: str, now: float) -> RunRecord:
        def body(db: Db) -> RunRecord:
            row = db.execute(Q["get_run"], {"id": run_id}).fetchone()
            if row is None:
                raise NotFound(f"no run '{run_id}'")
            if row["status"] != "running":
                raise Conflict(f"run '{run_id}' is {row['status']}, not running")
            _end(db, run_id, RunStatus.CANCELLED, None, now)
            return run_record(db.execute(Q["get_run"], {"id": run_id}).fetchone())

        return await self._call(body)

    async def retry_run(self, run_id: str, resets: Mapping[str, int], now: float) -> RunRecord:
        def body(db: Db) -> RunRecord:
            params = {"run_id": run_id, "unsettled": len(resets), "now": now}
            if not db.execute(Q["reopen_run"], params).rowcount:
                row = db.execute(Q["get_run"], {"id": run_id}).fetchone()
                if row is None:
                    raise NotFound(f"no run '{run_id}'")
                raise Conflict(
                    f"run '{run_id}' is {row['status']}: "
                    "only failed or cancelled runs can be retried"
                )
            db.executemany(
                Q["reset_step"],
                [
                    {"run_id": run_id, "step_id": s, "waiting_on": w, "now": now}
                    for s, w in resets.items()
                ],
            )
            _events(db, run_id, [(None, "run_retried", {"steps": list(resets)})], now)
            _reach_excluded(db, run_id, now)
            return run_record(db.execute(Q["get_run"], {"id": run_id}).fetchone())

        return await self._call(body)

    async def finish_run(
        self, run_id: str, status: RunStatus, report: str | None, error: str | None, now: float
    ) -> bool:
        return await self._call(lambda db: _finish(db, run_id, Finish(status, report, error), now))

    async def runs_to_finish(self) -> list[str]:
        return [row["id"] for row in await self._read("runs_to_finish", {})]

    async def has_work(self, now: float, run_id: str | None = None) -> bool:
        rows = await self._read("has_work", {"run_id": run_id})
        return bool(rows[0][0])

    async def has_lost(self, now: float, run_id: str | None = None) -> bool:
        params = {"now": now, "limit": 1, "run_id": run_id}
        return bool(await self._read("claimable_expired", params))

    # Agent calls and notes

    async def record_agent_call(self, call: AgentCall) -> None:
        await self._call(lambda db: _record_call(db, call))

    async def agent_calls(self, run_id: str, step_id: str | None = None) -> list[AgentCall]:
        rows = await self._read("agent_calls", {"run_id": run_id, "step_id": step_id})
        return [agent_call(row) for row in rows]

    async def refuse_stale(self, claim: Claim, now: float, seen: str | None) -> bool:
        return await self._call(lambda db: _refuse_stale(db, claim, now, seen))


def _take_within(
    db: Db,
    rows: Sequence[sqlite3.Row],
    capacity: Capacity,
    worker: str,
    now: float,
    lease: float,
    max_crashes: int,
) -> list[Claim]:
    """Lease the claimable ``rows``, in order, that fit ``capacity`` and their runs'
    max_parallel (agent steps running at once)."""
    agents, others = capacity.agents, capacity.others
    running: dict[str, int] = {}
    claims = []
    for row in rows:
        if row["agent"]:
            if agents <= 0 or not _run_has_room(db, row, running):
                continue
        elif others <= 0:
            continue
        claim = _take(db, row, worker, now, lease, max_crashes)
        if claim is None:
            continue
        claims.append(claim)
        if row["agent"]:
            agents -= 1
            running[row["run_id"]] += 1
        else:
            others -= 1
    return claims


def _run_has_room(db: Db, row: sqlite3.Row, running: dict[str, int]) -> bool:
    run_id = row["run_id"]
    if run_id not in running:
        running[run_id] = db.execute(Q["running_agents"], {"run_id": run_id}).fetchone()[0]
    cap = row["max_parallel"]
    return cap is None or running[run_id] < cap


def _take(
    db: Db, row: sqlite3.Row, worker: str, now: float, lease: float, max_crashes: int
) -> Claim | None:
    """Lease one step to ``worker``. A step taken from a lost worker (only ever by a worker
    running nothing else, so alone) counts a crash if its lost attempt ran alone too."""
    run_id, step_id = row["run_id"], row["step_id"]
    crashes = row["crashes"]
    events: list[EventRow] = []
    lost = row["status"] == "running"  # its worker stopped heartbeating
    if lost:
        ran_alone = row["alone_attempt"] == row["attempts"]
        lost_attempt = {"owner": row["lease_owner"], "attempt": row["attempts"], "alone": ran_alone}
        events.append((step_id, "lease_expired", lost_attempt))
        counted = crash_counts(row["kind"], ran_alone)
        crashes, decision = after_lost_lease(crashes, counted, max_crashes)
        if isinstance(decision, GiveUp):
            db.execute(
                "UPDATE steps SET crashes = ? WHERE run_id = ? AND step_id = ?",
                (crashes, run_id, step_id),
            )
            _events(db, run_id, events, now)
            fence = {
                "run_id": run_id,
                "step_id": step_id,
                "worker": row["lease_owner"],
                "attempt": row["attempts"],
            }
            _fail(db, fence, "running", decision.reason, now)
            return None
    attempt = row["attempts"] + 1
    db.execute(
        Q["take_step"],
        {
            "run_id": run_id,
            "step_id": step_id,
            "attempt": attempt,
            "crashes": crashes,
            "alone": lost,
            "worker": worker,
            "expires": now + lease,
            "now": now,
        },
    )
    events.append((step_id, "step_started", {"attempt": attempt, "worker": worker}))
    _events(db, run_id, events, now)
    return Claim(run_id, step_id, row["kind"], attempt, row["failures"], worker, alone=lost)


def _gate_conflict(db: Db, run_id: str, step_id: str) -> None:
    row = db.execute(Q["step_status"], {"run_id": run_id, "step_id": step_id}).fetchone()
    if row is None:
        raise NotFound(f"no step '{step_id}' in run '{run_id}'")
    raise Conflict(f"step '{step_id}' is {row[0]}, not waiting for a decision")


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
