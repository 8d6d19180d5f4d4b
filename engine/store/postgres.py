"""The shared store: PostgreSQL through asyncpg, for several workers on several machines.

PostgreSQL is the coordinator. Each store operation is one transaction on a
pooled connection. Writers of one run serialize on the run's row (locked
first, then its steps), which keeps event ids gapless and ordered; claims
take ready steps with ``FOR UPDATE SKIP LOCKED`` and never wait. Every write
transaction notifies the runs it changed on one channel (LISTEN/NOTIFY), so
workers wake at once and every API process can stream every run's events;
a slow poll by the callers is the safety net.

A lost connection is retried with backoff for ``retry_seconds``. A write whose
COMMIT was in flight when the connection dropped may or may not have
committed: each write stores a receipt (a random token and its result) in its
own transaction, and the retry looks the token up before doing anything again,
so a commit whose acknowledgement was lost is recognised, not recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from engine.core.decisions import GiveUp, after_lost_lease, crash_counts
from engine.core.plan import RunStatus
from engine.errors import InvalidInput
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
from engine.store.queries import load_migrations, load_queries
from engine.store.rows import agent_call, as_json, event_record, run_record, step_record

log = logging.getLogger("flowrunner.store")

Q = load_queries("postgres")
T = TypeVar("T")
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
EventRow = tuple[str | None, str, Mapping[str, Any]]

CHANNEL = "flowrunner"
"""The NOTIFY channel of changes; each notification's payload is the id of a run that changed."""

WORK_CHANNEL = "flowrunner_work"
"""The NOTIFY channel of new work: a run has steps to claim that nobody took yet (workers
listen to this one only: a change that made no work must not wake every worker)."""

LIVE_CHANNEL = "flowrunner_live"
"""The NOTIFY channel of live frames (token deltas, prompts) of workers, for ``serve``."""

LIVE_BYTES = 7900
"""The largest payload of a live NOTIFY: PostgreSQL refuses 8000 bytes and more."""

LIVE_SECONDS = 1.0
"""How long a live NOTIFY may wait for a pooled connection before it is dropped."""

ANALYZE_STEPS = 500
"""A launch of this many steps refreshes the planner's statistics of the steps table at
once: planned for the table as it was, the statements that settle a step would scan the
whole new run for each step (a run of n steps would cost O(n^2))."""

ANNOUNCE_SECONDS = 0.01
"""How long changed runs are collected before they are announced with one NOTIFY."""

CONTENDED_TRIES = 4
CONTENDED_PAUSE = 0.002
"""How often a claim kept short by runs other transactions held is tried, and the pause
before each further try: a claim never waits for a lock, and a settlement or another
claim holds its run's for about a millisecond."""

MIGRATION_LOCK = zlib.crc32(b"flowrunner.migrations")
"""The advisory lock that lets one process at a time apply migrations."""

RECEIPT_SECONDS = 3600.0
"""How long commit receipts are kept (a retry looks for its own within seconds)."""

TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,  # the connection is closed or broken
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, terminated backend
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InternalClientError,  # a connection left mid-operation by a lost one
)
"""Errors that end a connection (or the attempt to make one): reconnect and retry."""

COMMAND_MARGIN = 1.0
"""Seconds past the server's statement timeout after which the client gives up on a call:
a connection that died without a word (no FIN, no RST) fails over instead of hanging."""

EXPIRY_CHECK_SECONDS = 1.0
"""How often (by the claims' clock) a claim also looks for leases that expired: they are
seconds old by then anyway, and in between a claim is one statement, not two."""

CONTENTION = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
"""Errors after which the whole transaction was rolled back and may simply run again."""


def _fence(claim: Claim) -> tuple[str, str, str, int]:
    return claim.run_id, claim.step_id, claim.worker, claim.attempt


def _claim_json(claim: Claim) -> list[Any]:
    c = claim
    return [c.run_id, c.step_id, c.kind, c.attempt, c.failures, c.worker, c.alone]


def _claim_of(row: list[Any]) -> Claim:
    run_id, step_id, kind, attempt, failures, worker = row[:6]
    return Claim(run_id, step_id, kind, attempt, failures, worker, alone=bool(row[6:7] == [True]))


@dataclass
class _Tx:
    """One write transaction: its connection, and the events it appends (per run, in order),
    written just before COMMIT: the last run's together with the receipt and wake-ups."""

    conn: Conn
    now: float
    token: str
    events: dict[str, list[EventRow]] = field(default_factory=dict)

    def event(
        self, run_id: str, step_id: str | None, event: str, payload: Mapping[str, Any]
    ) -> None:
        self.events.setdefault(run_id, []).append((step_id, event, payload))

    async def finish(self, result: Any) -> None:
        """Append the events, leave the receipt and notify the changed runs. A write that
        changed nothing needs none of it (running it again is harmless)."""
        if not self.events:
            return
        *others, last = self.events.items()
        for run_id, rows in others:
            await self.conn.execute(Q["append_events"], run_id, *_columns(rows), self.now)
        await self.conn.fetchval(
            Q["finish_write"],
            self.token,
            as_json(result),
            time.time(),
            last[0],
            *_columns(last[1]),
            self.now,
            _lock_key(self.token),
        )


async def _read_receipt(conn: Conn, token: str) -> str | None:
    """The receipt of a write whose outcome is unknown, once that write has ended (its
    transaction holds the receipt's lock until it commits or aborts)."""
    await conn.execute(Q["receipt_lock"], _lock_key(token))
    try:
        found: str | None = await conn.fetchval(Q["receipt"], token)
        return found
    finally:
        await conn.execute(Q["receipt_unlock"], _lock_key(token))


def _ready(row: asyncpg.Record) -> bool:
    """A dependent that a settlement left ready to run (or taken at once)."""
    return bool(
        row["step_id"] is not None
        and not row["excluded"]
        and row["waiting_on"] == 0
        and row["status"] in ("pending", "running")
    )


def _reached_excluded(row: asyncpg.Record) -> bool:
    return bool(row["excluded"] and row["waiting_on"] == 0 and row["status"] == "pending")


def _lock_key(token: str) -> int:
    """The advisory lock a write holds on its receipt (64 bits of its token, signed)."""
    return int(token[:16], 16) - 2**63


def _columns(rows: list[EventRow]) -> tuple[list[str | None], list[str], list[str]]:
    """Events as the parallel arrays the queries unnest: steps, names, payloads."""
    return (
        [step_id for step_id, _, _ in rows],
        [event for _, event, _ in rows],
        [as_json(dict(payload)) for _, _, payload in rows],
    )


@dataclass(frozen=True, slots=True)
class _Receipt:
    """How a write's result is kept in its receipt, and read back after a lost COMMIT."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Awaitable[Any]]


async def _same(value: Any) -> Any:
    return value


PLAIN = _Receipt(lambda value: value, _same)


@dataclass(slots=True)
class _Settlement:
    """A step's result waiting to be settled (see PostgresStore._settle_step)."""

    claim: Claim
    values: tuple[str, str, str, str | None, str | None, bool]
    event: str
    payload: dict[str, Any]
    now: float
    eager: Eager | None
    call: AgentCall | None
    finish: Finish | None
    future: asyncio.Future[Settled | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class PostgresStore(Store):
    """The PostgreSQL implementation of :class:`Store`."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        statement_timeout: float = 30.0,
        retry_seconds: float = 30.0,
        connect_timeout: float = 5.0,
        generic_plans: bool = False,
    ) -> None:
        self.url = url
        self.generic_plans = generic_plans
        self.pool_size = pool_size
        self.statement_timeout = statement_timeout
        self.retry_seconds = retry_seconds
        self.connect_timeout = connect_timeout
        self._expiry_checked = -math.inf
        self._settling: list[_Settlement] = []
        self._settler: asyncio.Task[None] | None = None
        self._pool: asyncpg.Pool | None = None
        self._subscribers: list[tuple[Callable[[str], None], bool]] = []
        self._listener: asyncio.Task[None] | None = None
        self._listening_to_changes = False
        self._live: list[Callable[[str], None]] = []
        self._listening = asyncio.Event()
        self._pruned_at = 0.0
        self._changed: set[str] = set()
        self._worked: set[str] = set()
        self._announcing = asyncio.Event()
        self._announcer: asyncio.Task[None] | None = None
        self._tokens = itertools.count(secrets.randbits(64))
        self._token_suffix = secrets.token_hex(8)

    def _token(self) -> str:
        """A write's receipt token: its first 64 bits (its lock, see _lock_key) count up from
        a random start, unique among this store's writes in flight; 64 random bits follow.
        (A uuid4 per write read the OS's random source every time.)"""
        return f"{next(self._tokens) % 2**64:016x}{self._token_suffix}"

    # Connections

    def _settings(self) -> dict[str, str]:
        settings = {"statement_timeout": str(int(self.statement_timeout * 1000))}
        if self.generic_plans:
            # For a worker process: PostgreSQL plans a prepared statement afresh for each of
            # its first five executions on a connection before it settles on the generic
            # plan, and the claim and the settlement take about 3 ms each to plan: 1.5 ms
            # of server CPU per run in the 4-worker benchmark (40 new connections). A
            # worker's statements end up with the generic plan either way; an API process
            # keeps custom plans, which list_runs' optional filters need.
            settings["plan_cache_mode"] = "force_generic_plan"
            # A generic plan made while the tables were small and without statistics
            # scanned every step (a settlement's update of the dependents of several runs
            # at a few hundred runs), and the connection keeps it until an ANALYZE. Every
            # statement of a worker reaches its rows through an index: a sequential scan
            # (taken still where no index serves) is never the plan to keep.
            settings["enable_seqscan"] = "off"
        if "application_name=" not in self.url:  # the URL may name the connections itself
            settings["application_name"] = "flowrunner"
        return settings

    async def _connect(self) -> Conn:
        return await asyncpg.connect(
            self.url, timeout=self.connect_timeout, server_settings=self._settings()
        )

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                server_settings=self._settings(),
                command_timeout=self.statement_timeout + COMMAND_MARGIN,
                reset=_keep,
            )
            async with self._pool.acquire() as conn:
                await self._migrate(conn)
        except (*TRANSIENT, asyncpg.PostgresError) as exc:
            await self.close()
            raise StoreError(f"cannot open the PostgreSQL store: {_describe(exc)}") from exc

    async def close(self) -> None:
        if self._settler is not None:  # the results waiting for it fail
            self._settler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._settler
        if self._announcer is not None:
            self._announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcer
            self._announcer = None
            await self._send_announcements()  # what was still to say
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(*TRANSIENT):
                await asyncio.wait_for(pool.close(), 5)

    @staticmethod
    async def _migrate(conn: Conn) -> None:
        """Apply pending migrations, one process at a time (an advisory lock)."""
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            for migration in load_migrations("postgres"):
                if migration.version > current:
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                            migration.version,
                            migration.name,
                            time.time(),
                        )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    async def _retrying(self, attempt: Callable[[Conn], Awaitable[T]], what: str) -> T:
        """Run ``attempt`` on a pooled connection; lost connections and deadlocks are retried
        with backoff for ``retry_seconds`` from the first failure."""
        pool = self._pool
        if pool is None:
            raise StoreError("the store is not open")
        deadline: float | None = None
        delay = 0.05
        while True:
            try:
                # No timeout of its own: opening a connection is bounded by the pool's
                # connect timeout and a busy one frees within the statement timeout (a
                # timeout here would cost a task per acquire, on every statement).
                async with pool.acquire() as conn:
                    try:
                        return await attempt(conn)
                    except TRANSIENT:
                        with contextlib.suppress(asyncpg.InterfaceError):
                            conn.terminate()  # never hand a broken connection back to the pool
                        raise
            except (*TRANSIENT, *CONTENTION) as exc:
                if deadline is None:
                    deadline = time.monotonic() + self.retry_seconds
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"PostgreSQL store: {what}: {_describe(exc)}") from exc
                log.warning("PostgreSQL: %s: %s; retrying in %.2fs", what, _describe(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except asyncpg.exceptions.DataError as exc:  # a value PostgreSQL cannot store
                raise InvalidInput(f"a value the store cannot hold: {_describe(exc)}") from exc
            except asyncpg.PostgresError as exc:
                raise StoreError(f"PostgreSQL store: {what}: {_describe(exc)}") from exc

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async def attempt(conn: Conn) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(Q[query], *args)
            return rows

        return await self._retrying(attempt, query)

    async def _write(
        self,
        what: str,
        body: Callable[[_Tx], Awaitable[T]],
        receipt: _Receipt = PLAIN,
        now: float | None = None,
        work: bool = False,
    ) -> T:
        """Run ``body`` as one transaction that leaves a receipt, retried as need be.

        When COMMIT itself fails on a lost connection, the outcome is unknown: the
        receipt says whether it committed (and what it returned) before anything
        runs again.
        """
        token = self._token()
        at = time.time() if now is None else now
        uncertain = False
        changed: list[str] = []

        async def attempt(conn: Conn) -> T:
            nonlocal uncertain, changed
            if uncertain:
                found = await _read_receipt(conn, token)
                if found is not None:
                    log.info("PostgreSQL: %s had committed; its receipt says so", what)
                    result: T = await receipt.decode(json.loads(found))
                    return result
                uncertain = False
            transaction = conn.transaction()
            await transaction.start()
            try:
                tx = _Tx(conn, at, token)
                result = await body(tx)
                await tx.finish(receipt.encode(result))
            except TRANSIENT:
                raise  # the connection is gone (and with it the transaction)
            except BaseException:
                with contextlib.suppress(*TRANSIENT):
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except TRANSIENT:
                uncertain = True
                raise
            changed = list(tx.events)
            return result

        result = await self._retrying(attempt, what)
        self._announce(changed, work)
        if at - self._pruned_at > RECEIPT_SECONDS / 10:
            self._pruned_at = at
            await self._fetch("prune_receipts", time.time() - RECEIPT_SECONDS)
        return result

    # Wake-ups

    def subscribe(self, callback: Callable[[str], None], *, work_only: bool = False) -> None:
        """Call ``callback(run_id)`` whenever any process changes a run (with ``work_only``,
        only when that made steps ready to claim), and with ``""`` after the listening
        connection was re-established: something may have been missed."""
        self._subscribers.append((callback, work_only))
        changes = not all(only for _, only in self._subscribers)
        if self._listener is not None and changes == self._listening_to_changes:
            return
        if self._listener is not None:  # listen again, to every change (rare: start-up)
            self._listener.cancel()
        self._listening_to_changes = changes
        self._listener = asyncio.create_task(self._listen(changes))

    live_bytes = LIVE_BYTES

    async def send_live(self, payloads: list[str]) -> None:
        """One NOTIFY per payload, in one statement on a pooled connection (autocommit):
        not retried, and dropped when no connection is free within :data:`LIVE_SECONDS`."""
        pool = self._pool
        if pool is None:
            return
        try:
            async with pool.acquire(timeout=LIVE_SECONDS) as conn:
                await conn.fetchval(Q["notify_live"], LIVE_CHANNEL, payloads)
        except (*TRANSIENT, asyncpg.PostgresError, TimeoutError) as exc:
            raise StoreError(f"PostgreSQL: live frames not sent: {_describe(exc)}") from exc

    def listen_live(self, callback: Callable[[str], None]) -> None:
        """Listen to :data:`LIVE_CHANNEL` too, on the connection that listens for changes."""
        self._live.append(callback)
        if self._listener is not None:  # listen again, with the live channel (start-up)
            self._listener.cancel()
        self._listener = asyncio.create_task(self._listen(self._listening_to_changes))

    def _on_live(self, payload: str) -> None:
        for callback in self._live:
            try:
                callback(payload)
            except Exception:  # one bad payload must not stop the others
                log.exception("a live payload could not be passed on")

    def _announce(self, run_ids: Iterable[str], work: bool = False) -> None:
        """Tell every process (NOTIFY) that these runs changed (and, with ``work``, have
        steps to claim), soon and batched: a NOTIFY in the write itself would serialize
        all commits on the database's notify lock."""
        changed = set(run_ids)
        self._changed |= changed
        if work:
            self._worked |= changed
        if not self._changed:
            return
        self._announcing.set()
        if self._announcer is None:
            self._announcer = asyncio.create_task(self._announce_loop())

    async def _announce_loop(self) -> None:
        while True:
            await self._announcing.wait()
            self._announcing.clear()
            await asyncio.sleep(ANNOUNCE_SECONDS)  # let a burst of writes share one NOTIFY
            await self._send_announcements()

    async def _send_announcements(self) -> None:
        changed, self._changed = sorted(self._changed), set()
        worked, self._worked = sorted(self._worked), set()
        channels = [CHANNEL] * len(changed) + [WORK_CHANNEL] * len(worked)
        if changed and self._pool is not None:
            try:
                await self._fetch("announce", channels, changed + worked)
            except StoreError as exc:  # the others' poll will notice
                log.warning("PostgreSQL: could not notify %d runs: %s", len(changed), exc)

    def _notify(self, run_id: str, work: bool | None = None) -> None:
        """Pass a notification on (``work`` None: to every subscriber)."""
        for callback, work_only in self._subscribers:
            if work is None or work is work_only:
                callback(run_id)

    async def _listen(self, changes: bool) -> None:
        """Listen for work (and, with ``changes``, for every change: a worker alone does not
        need them, and each would wake it for nothing)."""
        delay = 0.1
        while True:
            conn: Conn | None = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                if changes:
                    await conn.add_listener(CHANNEL, lambda *args: self._notify(args[3], False))
                await conn.add_listener(WORK_CHANNEL, lambda *args: self._notify(args[3], True))
                if self._live:
                    await conn.add_listener(LIVE_CHANNEL, lambda *args: self._on_live(args[3]))
                self._listening.set()
                self._notify("")
                delay = 0.1
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5)
                    if not lost.is_set():  # a connection can die without a word
                        await conn.fetchval("SELECT 1", timeout=5)
            except TRANSIENT as exc:
                log.warning("PostgreSQL: the LISTEN connection was lost: %s", _describe(exc))
            finally:
                self._listening.clear()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # Runs

    async def create_run(self, run: NewRun, now: float) -> tuple[str, bool]:
        async def existing(conn: Conn) -> tuple[str, bool] | None:
            if run.idempotency_key is not None:
                row = await conn.fetchrow(Q["run_by_key"], run.idempotency_key)
            else:
                row = await conn.fetchrow(Q["run_by_id"], run.id)
            if row is None:
                return None
            if row["request_hash"] != run.request_hash:
                raise Conflict("this Idempotency-Key was used with another request body")
            return row["id"], row["id"] == run.id

        async def body(tx: _Tx) -> tuple[str, bool]:
            conn = tx.conn
            if run.idempotency_key is not None:
                found = await existing(conn)
                if found is not None:
                    return found[0], False
            inserted = await conn.fetchval(
                Q["insert_run"],
                run.id,
                run.flow,
                run.band,
                run.model,
                as_json(dict(run.inputs)),
                run.snapshot,
                run.snapshot_hash,
                run.launched_by,
                run.idempotency_key,
                run.request_hash,
                run.replay_of,
                run.max_parallel,
                len(run.steps),
                now,
            )
            if inserted is None:  # a concurrent launch with the same key won
                found = await existing(conn)
                if found is None:
                    raise StoreError(f"run '{run.id}' could not be stored")
                return found[0], False
            steps = run.steps
            await conn.execute(
                Q["insert_steps"],
                run.id,
                [step.id for step in steps],
                _texts(step.position for step in steps),
                [step.kind for step in steps],
                _texts(step.agent for step in steps),
                _texts(step.waiting_on for step in steps),
                [as_json(list(step.dependents)) for step in steps],
                _texts(step.excluded for step in steps),
                now,
            )
            started = {"flow": run.flow, "band": run.band, "model": run.model}
            tx.event(run.id, None, "run_started", started)
            await _reach_excluded(tx, run.id)
            return run.id, True

        async def decode(value: list[Any]) -> tuple[str, bool]:
            return value[0], value[1]

        run_id, created = await self._write(
            "create_run", body, _Receipt(list, decode), now, work=True
        )
        if created and len(run.steps) >= ANALYZE_STEPS:
            await self._fetch("analyze_steps")
        return run_id, created

    async def get_run(self, run_id: str) -> RunRecord:
        rows = await self._fetch("get_run", run_id)
        if not rows:
            raise NotFound(f"no run '{run_id}'")
        return run_record(rows[0])

    async def get_snapshot(self, run_id: str) -> str:
        rows = await self._fetch("get_snapshot", run_id)
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
        at, last = before if before is not None else (None, None)
        rows = await self._fetch("list_runs", flow, status, waiting, at, last, limit)
        return [run_record(row) for row in rows]

    async def get_steps(
        self, run_id: str, step_ids: Sequence[str] | None = None
    ) -> list[StepRecord]:
        if step_ids is None:
            return [step_record(row) for row in await self._fetch("get_steps", run_id)]
        rows = await self._fetch("get_some_steps", run_id, list(dict.fromkeys(step_ids)))
        return [step_record(row) for row in rows]

    async def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        rows = await self._fetch("events", run_id, after, limit)
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
        expiry_due = not 0 <= now - self._expiry_checked < EXPIRY_CHECK_SECONDS
        if not alone or not expiry_due:  # the common claim: lost steps go to idle workers
            return await self._claim_ready(worker, now, lease, capacity, run_id)
        (probe,) = await self._fetch("claim_probe", now, run_id)
        self._expiry_checked = now
        if not probe["expired"]:
            if not probe["ready"]:
                return []
            return await self._claim_ready(worker, now, lease, capacity, run_id)

        async def body(tx: _Tx) -> list[Claim]:
            conn = tx.conn
            rows = await conn.fetch(Q["claimable_expired"], now, 1, run_id)
            if not rows or not await conn.fetch(Q["lock_claimable_runs"], [rows[0]["run_id"]]):
                return []
            claim = await _take_over(tx, rows[0], worker, lease, max_crashes)
            return [] if claim is None else [claim]

        async def decode(value: list[list[Any]]) -> list[Claim]:
            return [_claim_of(row) for row in value]

        receipt = _Receipt(lambda claims: [_claim_json(c) for c in claims], decode)
        return await self._write("claim", body, receipt, now)

    async def _claim_ready(
        self, worker: str, now: float, lease: float, capacity: Capacity, run_id: str | None
    ) -> list[Claim]:
        """The common claim (no lease to take over): one statement, committed on its own, so
        no run stays locked across a round trip to this process. It never waits for a run
        another transaction holds: when that kept it short, it tries again a moment later
        (the holder commits within milliseconds), a few times."""
        claims: list[Claim] = []
        for tries_left in range(CONTENDED_TRIES - 1, -1, -1):
            taken, contended = await self._claim_once(worker, now, lease, capacity, run_id)
            claims += taken
            agents = sum(claim.kind == "agent" for claim in taken)
            capacity = Capacity(capacity.agents - agents, capacity.others - len(taken) + agents)
            if not contended or not tries_left or (capacity.agents <= 0 and capacity.others <= 0):
                break
            await asyncio.sleep(CONTENDED_PAUSE)
        self._announce(claim.run_id for claim in claims)
        return claims

    async def _claim_once(
        self, worker: str, now: float, lease: float, capacity: Capacity, run_id: str | None
    ) -> tuple[list[Claim], bool]:
        """One claim statement: the steps taken, and whether others' locks kept it short."""
        contended = False

        async def claim(conn: Conn, token: str) -> list[Claim]:
            nonlocal contended
            rows = await conn.fetch(
                Q["claim_ready"],
                now,
                run_id,
                max(capacity.agents, 0),
                max(capacity.others, 0),
                worker,
                now + lease,
                token,
                _lock_key(token),
            )
            contended = bool(rows[0]["contended"])
            rows = [row for row in rows if row["run_id"] is not None]
            return [
                replace(claim, run=run_record(row))
                for claim, row in zip(_claims(rows, worker), rows, strict=True)
            ]

        async def adopt() -> list[Claim]:  # what the lost statement claimed
            return list(_claims(await self._fetch("leased_to", worker, None), worker))

        return await self._statement("claim", claim, adopt), contended

    async def _statement(
        self,
        what: str,
        run: Callable[[Conn, str], Awaitable[T]],
        recover: Callable[[], Awaitable[T]],
    ) -> T:
        """Run one write statement that commits on its own and leaves a receipt under the token
        ``run`` is given. When the connection is lost after it was sent, the outcome is
        unknown: once its receipt says it committed, ``recover`` tells what it did."""
        token = self._token()
        sent = False

        async def attempt(conn: Conn) -> T:
            nonlocal sent
            if sent and await _read_receipt(conn, token) is not None:
                log.info("PostgreSQL: %s had committed; its receipt says so", what)
                return await recover()
            sent = True
            return await run(conn, token)

        return await self._retrying(attempt, what)

    async def lease_owners(self) -> list[str]:
        return [row[0] for row in await self._fetch("lease_owners")]

    async def expire_leases(self, owner: str, now: float) -> None:
        async def body(tx: _Tx) -> None:
            await tx.conn.execute(Q["expire_leases"], owner)

        await self._write("expire_leases", body, now=now, work=True)

    async def heartbeat(
        self, worker: str, claims: Sequence[Claim], now: float, lease: float
    ) -> set[tuple[str, str]]:
        if not claims:
            return set()
        runs = [claim.run_id for claim in claims]
        steps = [claim.step_id for claim in claims]
        attempts = _texts(claim.attempt for claim in claims)

        async def attempt(conn: Conn) -> set[tuple[str, str]]:
            args = (runs, steps, attempts, worker)
            extended = await conn.fetch(Q["extend_leases"], *args, now + lease)
            held = {(row["run_id"], row["step_id"]) for row in extended}
            if len(held) < len(claims):  # some were busy in another transaction: still ours?
                still = await conn.fetch(Q["held_leases"], *args)
                held |= {(row["run_id"], row["step_id"]) for row in still}
            return held

        return await self._retrying(attempt, "heartbeat")

    async def complete_step(
        self,
        claim: Claim,
        result: StepResult,
        now: float,
        eager: Eager | None = None,
        finish: Finish | None = None,
    ) -> Settled | None:
        values = (
            "completed",
            result.output,
            as_json(dict(result.fields)),
            as_json(result.data) if result.data is not None else None,
            result.input,
            result.scripted,
        )
        payload = {"attempt": claim.attempt, "scripted": result.scripted}
        settlement = _Settlement(
            claim, values, "step_completed", payload, now, eager, result.call, finish
        )
        return await self._settle_step(settlement)

    async def skip_step(
        self,
        claim: Claim,
        reason: str,
        now: float,
        eager: Eager | None = None,
        finish: Finish | None = None,
    ) -> Settled | None:
        values = ("skipped", "", "{}", None, None, False)
        payload = {"reason": reason}
        settlement = _Settlement(claim, values, "step_skipped", payload, now, eager, None, finish)
        return await self._settle_step(settlement)

    async def _settle_step(self, settlement: _Settlement) -> Settled | None:
        """Complete or skip a claimed step (its ``values``: status, output, fields, data,
        input, scripted) and settle it in one statement, committed on its own: the run's lock is
        held for that statement only, never across a round trip to this process. Steps
        excluded by the band that it reaches are settled right after (see
        :meth:`_reach_excluded`).

        Results that arrive while a settlement from this process is in flight wait for it,
        then settle together in one statement, whatever their runs: one commit, one round
        trip and one plan's start-up for all of them. Under load a worker's results
        arrive several per settlement, and those fixed costs were most of a settlement's."""
        self._settling.append(settlement)
        if self._settler is None:
            self._settler = asyncio.create_task(self._settle_queued())
        return await settlement.future

    async def _settle_queued(self) -> None:
        """Settle what is queued, in batches, until nothing is."""
        batch: list[_Settlement] = []
        try:
            while self._settling:
                batch, self._settling = _one_worker(self._settling)
                batch = [item for item in batch if not item.future.done()]
                if not batch:
                    continue
                try:
                    results = await self._settle_batch(batch)
                except Exception as exc:
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for item, result in zip(batch, results, strict=True):
                    if not item.future.done():
                        item.future.set_result(result)
        finally:
            self._settler = None
            leftover, self._settling = batch + self._settling, []
            for item in leftover:  # cancelled: the store closes
                if not item.future.done():
                    item.future.set_exception(StoreError("the store is closing"))

    async def _settle_batch(self, batch: list[_Settlement]) -> list[Settled | None]:
        """One statement for results of one or several runs (see :meth:`_settle_step`). The
        eager claims fill the slots the results brought, each to a result with a slot for
        it (see :func:`_hand_out`)."""
        now = max(item.now for item in batch)
        eagers = [item.eager for item in batch if item.eager is not None]
        worker = eagers[0].worker if eagers else None
        expires = now + eagers[0].lease if eagers else None
        others, agents = _eager_capacity(batch)
        runs = [item.claim.run_id for item in batch]
        steps = [item.claim.step_id for item in batch]
        attempts = _texts(item.claim.attempt for item in batch)
        columns = [list(column) for column in zip(*(item.values for item in batch), strict=True)]
        columns[5] = _texts(columns[5])  # scripted
        calls = [_call_values(item.call) for item in batch]
        call_columns = [_texts(column) for column in zip(*calls, strict=True)]
        endings = [_ending(item.finish) for item in batch]
        ending_columns = [list(column) for column in zip(*endings, strict=True)]

        async def settle(conn: Conn, token: str) -> tuple[list[asyncpg.Record], None]:
            rows = await conn.fetch(
                Q["settle_steps"],
                runs,
                steps,
                [item.claim.worker for item in batch],
                attempts,
                *columns,
                now,
                worker,
                expires,
                others,
                [item.event for item in batch],
                [as_json(item.payload) for item in batch],
                token,
                _lock_key(token),
                agents,
                *call_columns,
                *ending_columns,
            )
            return rows, None

        async def adopt() -> tuple[list[asyncpg.Record], dict[str, Settled]]:
            settled = await self._fetch("settled_attempts", runs, steps, attempts)
            return settled, {run_id: await self._adopt(run_id, worker) for run_id in set(runs)}

        rows, adopted = await self._statement(batch[0].event, settle, adopt)
        done: set[tuple[str, str]]
        if adopted is not None:
            done = {(row["run_id"], row["step_id"]) for row in rows}
            outcomes = adopted
        else:
            by_run: dict[str, list[asyncpg.Record]] = {}
            for row in rows:
                by_run.setdefault(row["of_run"], []).append(row)
            done = {(run, step) for run, group in by_run.items() for step in group[0]["settled"]}
            outcomes = {
                run_id: await self._settled(run_id, group, worker, now)
                for run_id, group in by_run.items()
            }
        recorded = []
        for item in batch:
            if (item.claim.run_id, item.claim.step_id) in done:
                recorded.append(item)
            else:
                await self._refuse(item)
        shares = iter(_hand_out(recorded, {run: o.claims for run, o in outcomes.items()}))
        return [
            replace(outcomes[item.claim.run_id], claims=next(shares))
            if (item.claim.run_id, item.claim.step_id) in done
            else None
            for item in batch
        ]

    async def _settled(
        self, run_id: str, rows: list[asyncpg.Record], worker: str | None, now: float
    ) -> Settled:
        """A settlement's outcome from its rows (its dependents, with the run's count)."""
        taken = sorted((row for row in rows if row["taken"]), key=_position)
        claims = _claims(taken, worker) if worker else ()
        unsettled: int = rows[0]["unsettled"]
        ready_left = any(_ready(row) and not row["taken"] for row in rows)
        if any(_reached_excluded(row) for row in rows):
            unsettled = await self._reach_excluded(run_id, now)
            ready_left = True  # what the excluded steps made ready is not known here
        self._announce([run_id], work=ready_left)
        return Settled(unsettled, claims, ready_left, rows[0]["finished"])

    async def _refuse(self, item: _Settlement) -> None:
        """Log a result whose fence did not hold (the lease was lost, the run ended)."""
        await self.refuse_stale(item.claim, item.now, None)

    async def _reach_excluded(self, run_id: str, now: float) -> int:
        """Settle the band-excluded steps of a run whose needs have all settled (and what that
        reaches); the run's unsettled count. Run right after a settlement that reached one,
        and by every worker's sweep (:meth:`runs_to_finish`) should a crash come between."""

        async def body(tx: _Tx) -> int:
            await tx.conn.execute(Q["lock_run"], run_id)
            await _reach_excluded(tx, run_id)
            unsettled: int = await tx.conn.fetchval(Q["unsettled"], run_id)
            return unsettled

        return await self._write("reach_excluded", body, now=now, work=True)

    async def _adopt(self, run_id: str, worker: str | None) -> Settled:
        """What a settlement whose acknowledgement was lost returned: the run's unsettled
        count, and the steps of the run leased to ``worker`` (its eager claims; a worker
        starts those it is not running already)."""
        run = await self.get_run(run_id)
        if worker is None:
            return Settled(run.unsettled, (), True)
        rows = await self._fetch("leased_to", worker, run_id)
        return Settled(run.unsettled, _claims(rows, worker), True)

    async def fail_attempt(
        self, claim: Claim, error: str, retry_at: float | None, now: float
    ) -> bool:
        async def body(tx: _Tx) -> bool:
            await tx.conn.execute(Q["lock_run"], claim.run_id)
            if retry_at is None:
                if await _fail(tx, _fence(claim), "running", error):
                    return True
                await _refuse_stale(tx, claim)
                return False
            status = await tx.conn.execute(Q["retry_step"], *_fence(claim), retry_at, error)
            if not _changed(status):
                await _refuse_stale(tx, claim)
                return False
            payload = {"attempt": claim.attempt, "error": error, "retry_at": retry_at}
            tx.event(claim.run_id, claim.step_id, "step_retrying", payload)
            return True

        return await self._write("fail_attempt", body, now=now, work=True)

    async def release(self, claims: Sequence[Claim], now: float) -> None:
        async def body(tx: _Tx) -> None:
            for run_id in sorted({claim.run_id for claim in claims}):
                await tx.conn.execute(Q["lock_run"], run_id)
            for claim in claims:
                if _changed(await tx.conn.execute(Q["release_step"], *_fence(claim))):
                    tx.event(claim.run_id, claim.step_id, "step_released", {})

        await self._write("release", body, now=now, work=True)

    async def wait_for_gate(
        self, claim: Claim, message: str, deadline: float | None, now: float
    ) -> bool:
        async def body(tx: _Tx) -> bool:
            await tx.conn.execute(Q["lock_run"], claim.run_id)
            status = await tx.conn.execute(Q["wait_step"], *_fence(claim), message, deadline)
            if not _changed(status):
                await _refuse_stale(tx, claim)
                return False
            payload = {"message": message, "deadline": deadline}
            tx.event(claim.run_id, claim.step_id, "step_waiting", payload)
            return True

        return await self._write("wait_for_gate", body, now=now)

    async def decide_gate(
        self,
        run_id: str,
        step_id: str,
        decision: Decision,
        settle: bool,
        now: float,
    ) -> StepRecord:
        data, summary = decision.data(now), decision.summary()
        args = (run_id, step_id, decision.comment, as_json(data), now)
        error = decision.error

        async def body(tx: _Tx) -> None:
            conn = tx.conn
            await conn.execute(Q["lock_run"], run_id)
            if settle:
                dependents = await conn.fetchval(Q["decide_complete"], *args)
                changed = dependents is not None
            else:
                changed = _changed(await conn.execute(Q["decide_fail"], *args, error))
            if not changed:
                await _gate_conflict(conn, run_id, step_id)
            tx.event(run_id, step_id, "gate_decided", summary)
            if settle:
                tx.event(run_id, step_id, "step_completed", {"gate": True})
                await _settle(tx, run_id, dependents)
            else:
                tx.event(run_id, step_id, "step_failed", {"error": error})
                await _end(tx, run_id, RunStatus.FAILED, f"step '{step_id}' {error}")

        await self._write("decide_gate", body, now=now, work=True)
        (step,) = await self.get_steps(run_id, [step_id])
        return step

    async def expired_gates(self, now: float) -> list[tuple[str, str]]:
        rows = await self._fetch("expired_gates", now)
        return [(row["run_id"], row["step_id"]) for row in rows]

    async def waiting_steps(self, run_id: str) -> list[str]:
        return [row[0] for row in await self._fetch("waiting_steps", run_id)]

    async def cancel_run(self, run_id: str, now: float) -> RunRecord:
        async def body(tx: _Tx) -> None:
            status = await tx.conn.fetchval(Q["lock_run"], run_id)
            if status is None:
                raise NotFound(f"no run '{run_id}'")
            if status != "running":
                raise Conflict(f"run '{run_id}' is {status}, not running")
            await _end(tx, run_id, RunStatus.CANCELLED, None)

        await self._write("cancel_run", body, now=now)
        return await self.get_run(run_id)

    async def retry_run(self, run_id: str, resets: Mapping[str, int], now: float) -> RunRecord:
        async def body(tx: _Tx) -> None:
            conn = tx.conn
            status = await conn.fetchval(Q["lock_run"], run_id)
            if status is None:
                raise NotFound(f"no run '{run_id}'")
            if not _changed(await conn.execute(Q["reopen_run"], run_id, len(resets), now)):
                raise Conflict(
                    f"run '{run_id}' is {status}: only failed or cancelled runs can be retried"
                )
            await conn.execute(Q["reset_steps"], run_id, list(resets), _texts(resets.values()), now)
            tx.event(run_id, None, "run_retried", {"steps": list(resets)})
            await _reach_excluded(tx, run_id)

        await self._write("retry_run", body, now=now, work=True)
        return await self.get_run(run_id)

    async def finish_run(
        self, run_id: str, status: RunStatus, report: str | None, error: str | None, now: float
    ) -> bool:
        payload = as_json(Finish(status, report, error).payload())

        async def attempt(conn: Conn) -> bool:
            args = (run_id, str(status), error, report, now, payload)
            return bool(await conn.fetchval(Q["finish_run"], *args))

        finished = await self._retrying(attempt, "finish_run")
        if finished:
            self._announce([run_id])
        return finished

    async def runs_to_finish(self) -> list[str]:
        for row in await self._fetch("stranded_excluded"):
            await self._reach_excluded(row["run_id"], time.time())
        return [row["id"] for row in await self._fetch("runs_to_finish")]

    async def has_work(self, now: float, run_id: str | None = None) -> bool:
        rows = await self._fetch("has_work", run_id)
        return bool(rows[0][0])

    async def has_lost(self, now: float, run_id: str | None = None) -> bool:
        (probe,) = await self._fetch("claim_probe", now, run_id)
        return bool(probe["expired"])

    # Agent calls and notes

    async def record_agent_call(self, call: AgentCall) -> None:
        async def attempt(conn: Conn) -> None:
            await conn.execute(
                Q["record_agent_call"], call.run_id, call.step_id, call.attempt, *_call_values(call)
            )

        await self._retrying(attempt, "record_agent_call")  # an upsert: safe to repeat

    async def agent_calls(self, run_id: str, step_id: str | None = None) -> list[AgentCall]:
        rows = await self._fetch("agent_calls", run_id, step_id)
        return [agent_call(row) for row in rows]

    async def refuse_stale(self, claim: Claim, now: float, seen: str | None) -> bool:
        async def body(tx: _Tx) -> bool:
            return await _refuse_stale(tx, claim, seen)

        return await self._write("refuse_stale", body, now=now)


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    return lambda _: event.set()


async def _keep(conn: Conn) -> None:
    """Nothing to reset when a connection goes back to the pool: the store leaves no session
    state behind (asyncpg's default reset costs a round trip per transaction)."""


def _changed(status: str) -> bool:
    """Whether a command's status tag (``UPDATE 1``) counts any row."""
    return not status.endswith(" 0")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _refuse_stale(tx: _Tx, claim: Claim, seen: str | None = None) -> bool:
    """A result whose fence did not hold: an event while its run goes on, else only a log
    line (a client that stops at the run's ending event must have seen every event)."""
    payload = {"worker": claim.worker, "attempt": claim.attempt}
    if seen is not None:
        payload["seen"] = seen
    if await tx.conn.fetchval(Q["lock_run"], claim.run_id) != RunStatus.RUNNING:
        log.info("a stale result of %s/%s came after its run ended", claim.run_id, claim.step_id)
        return False
    tx.event(claim.run_id, claim.step_id, "stale_result_refused", payload)
    return True


async def _settle(tx: _Tx, run_id: str, dependents: list[str]) -> int:
    """A step settled: count it off its run, and its dependents wait on one need fewer
    (then as :func:`_settled`); the run's unsettled count."""
    rows = await tx.conn.fetch(Q["settle"], run_id, 1, dependents, tx.now)
    return await _settled(tx, run_id, rows)


async def _settled(tx: _Tx, run_id: str, rows: list[asyncpg.Record]) -> int:
    """After a settlement (``rows``: the run's unsettled count and its dependents as they
    are now): a dependent excluded by the band whose needs have all settled is settled
    as excluded on the spot, and so on down the graph. The run's unsettled count."""
    while True:
        unsettled: int = rows[0]["unsettled"]
        excluded, level = 0, []
        dependents = sorted((row for row in rows if row["step_id"] is not None), key=_position)
        for row in dependents:
            if row["excluded"] and row["waiting_on"] == 0 and row["status"] == "pending":
                await _mark_excluded(tx, run_id, row["step_id"])
                excluded += 1
                level.extend(row["dependents"])
        if not excluded:
            return unsettled
        rows = await tx.conn.fetch(Q["settle"], run_id, excluded, level, tx.now)


def _texts(values: Iterable[Any]) -> list[str | None]:
    """Numbers and booleans as text, for an array the query casts (see queries.sql)."""
    return [None if value is None else str(value) for value in values]


def _one_worker(queued: list[_Settlement]) -> tuple[list[_Settlement], list[_Settlement]]:
    """The results that may settle in one statement (those whose eager claims go to the
    first one's worker, or that claim nothing), and the rest, in the order they came: the
    free slots a batch fills are one worker's."""
    worker = next((item.eager.worker for item in queued if item.eager), None)
    batch = [item for item in queued if item.eager is None or item.eager.worker == worker]
    return batch, [item for item in queued if item.eager and item.eager.worker != worker]


def _ending(finish: Finish | None) -> tuple[str | None, ...]:
    """How a result's run ends in a settlement (status, report, error, payload); all NULL
    for a result that does not end it."""
    if finish is None:
        return (None,) * 4
    return (str(finish.status), finish.report, finish.error, as_json(finish.payload()))


def _call_values(call: AgentCall | None) -> tuple[Any, ...]:
    """An agent call's columns in a settlement (sequence, persona, prompt, output, backend,
    scripted, at); all NULL for a result without one."""
    if call is None:
        return (None,) * 7
    return (
        call.sequence,
        call.persona,
        call.prompt,
        call.output,
        call.backend,
        call.scripted,
        call.at,
    )


def _eager_capacity(batch: Sequence[_Settlement]) -> tuple[int, int]:
    """The code and agent slots the eager claims of ``batch`` may fill: each result brings
    its own (the slot its step frees, and the free ones its worker lent it alone)."""
    eagers = [item.eager for item in batch if item.eager]
    return sum(e.others for e in eagers), sum(e.agents for e in eagers)


def _hand_out(
    recorded: Sequence[_Settlement], taken: dict[str, tuple[Claim, ...]]
) -> list[tuple[Claim, ...]]:
    """Each recorded result's eager claims, up to the slots it brought (the worker takes
    back a result's slots as it starts its claims, so none may fill another's): its own
    run's first, then other runs'. Claims beyond those slots (rare: a stale result's, or
    adopted after a lost acknowledgement) go to the first."""
    left = {run: list(claims) for run, claims in taken.items()}
    shares: list[list[Claim]] = [[] for _ in recorded]
    rooms = [
        {True: item.eager.agents, False: item.eager.others} if item.eager else {}
        for item in recorded
    ]
    for own_run in (True, False):
        for item, room, share in zip(recorded, rooms, shares, strict=True):
            runs = [item.claim.run_id] if own_run else list(left)
            for run in runs:
                for claim in list(left.get(run, ())):
                    agent = claim.kind == "agent"
                    if room.get(agent, 0) > 0:
                        room[agent] -= 1
                        share.append(claim)
                        left[run].remove(claim)
    if shares:
        shares[0] += [claim for claims in left.values() for claim in claims]
    return [tuple(share) for share in shares]


def _claims(rows: Sequence[asyncpg.Record], worker: str) -> tuple[Claim, ...]:
    """Steps just leased to ``worker`` (rows with their run, id, kind and counts)."""
    return tuple(
        Claim(row["run_id"], row["step_id"], row["kind"], row["attempts"], row["failures"], worker)
        for row in rows
    )


def _position(row: asyncpg.Record) -> int:
    return int(row["position"])


async def _mark_excluded(tx: _Tx, run_id: str, step_id: str) -> None:
    await tx.conn.execute(Q["exclude_step"], run_id, step_id, tx.now)
    tx.event(run_id, step_id, "step_excluded", {})


async def _reach_excluded(tx: _Tx, run_id: str) -> None:
    """Settle the excluded steps whose needs have all settled (at launch, after a retry)."""
    for row in await tx.conn.fetch(Q["reached_excluded"], run_id):
        await _mark_excluded(tx, run_id, row["step_id"])
        await _settle(tx, run_id, row["dependents"])


async def _end(tx: _Tx, run_id: str, status: RunStatus, error: str | None) -> None:
    """End a run: every step not finished is cancelled."""
    conn, now = tx.conn, tx.now
    live = [row[0] for row in await conn.fetch(Q["live_steps"], run_id)]
    await conn.execute(Q["cancel_live_steps"], run_id, now)
    await conn.execute(Q["end_run"], run_id, str(status), error, now)
    for step in live:
        tx.event(run_id, step, "step_cancelled", {})
    tx.event(run_id, None, f"run_{status}", {"error": error} if error else {})


async def _fail(tx: _Tx, fence: tuple[str, str, str | None, int], status: str, error: str) -> bool:
    """Fail a step, then its run. False when the fence no longer holds."""
    if not _changed(await tx.conn.execute(Q["fail_step"], *fence, status, error, tx.now)):
        return False
    run_id, step_id = fence[0], fence[1]
    tx.event(run_id, step_id, "step_failed", {"error": error})
    await _end(tx, run_id, RunStatus.FAILED, f"step '{step_id}' failed: {error}")
    return True


async def _take_over(
    tx: _Tx, row: asyncpg.Record, worker: str, lease: float, max_crashes: int
) -> Claim | None:
    """Lease a step whose worker stopped heartbeating to ``worker``, which runs nothing
    else; its crash is counted if the lost attempt ran alone too, and past ``max_crashes``
    the step is failed (with its run) instead."""
    conn, now = tx.conn, tx.now
    run_id, step_id = row["run_id"], row["step_id"]
    ran_alone = row["alone_attempt"] == row["attempts"]
    lost = {"owner": row["lease_owner"], "attempt": row["attempts"], "alone": ran_alone}
    tx.event(run_id, step_id, "lease_expired", lost)
    counted = crash_counts(row["kind"], ran_alone)
    crashes, decision = after_lost_lease(row["crashes"], counted, max_crashes)
    if isinstance(decision, GiveUp):
        await conn.execute(Q["count_crash"], run_id, step_id, crashes)
        fence = (run_id, step_id, row["lease_owner"], row["attempts"])
        await _fail(tx, fence, "running", decision.reason)
        return None
    attempt = row["attempts"] + 1
    await conn.execute(
        Q["take_over_step"], run_id, step_id, attempt, crashes, worker, now + lease, now
    )
    tx.event(run_id, step_id, "step_started", {"attempt": attempt, "worker": worker})
    return Claim(run_id, step_id, row["kind"], attempt, row["failures"], worker, alone=True)


async def _gate_conflict(conn: Conn, run_id: str, step_id: str) -> None:
    status = await conn.fetchval(Q["step_status"], run_id, step_id)
    if status is None:
        raise NotFound(f"no step '{step_id}' in run '{run_id}'")
    raise Conflict(f"step '{step_id}' is {status}, not waiting for a decision")
