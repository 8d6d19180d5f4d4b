"""What only the PostgreSQL store promises: lost connections and lost COMMIT acknowledgements
are survived without a write recorded twice, several processes claim without taking a
step twice, and LISTEN/NOTIFY wake-ups outlive their connection.

Faults are made for real: backends are ended with ``pg_terminate_backend``, and
a TCP proxy (tests/pgproxy.py) in front of the server swallows what a network
would lose. The proxy also names a store's backends exactly (their
``client_port``), where ``application_name`` (``flowrunner`` for every store)
would not tell this test's backends from those of tests running alongside.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from engine.config import Project
from engine.core.plan import RunStatus, StepStatus
from engine.runner import setup
from engine.store.base import (
    Capacity,
    Claim,
    Eager,
    Finish,
    NewRun,
    NewStep,
    StepRecord,
    StepResult,
    StoreError,
)
from engine.store.postgres import (
    PostgresStore,
    _eager_capacity,
    _hand_out,
    _lock_key,
    _one_worker,
    _Settlement,
)
from engine.store.queries import load_queries
from tests.pgproxy import Proxy
from tests.postgres import fresh_schema
from tests.store.test_conformance import ALL, claim_ids, claim_one, diamond, event_names

OpenStore = Callable[..., Awaitable[PostgresStore]]
Q = load_queries("postgres")


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_schema() as url:
        yield url


@pytest.fixture
async def proxy(url: str) -> AsyncIterator[Proxy]:
    async with Proxy(url) as proxy:
        yield proxy


@pytest.fixture
async def admin(url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection of the test's own, on the test's schema."""
    conn = await asyncpg.connect(url)
    yield conn
    await conn.close()


@pytest.fixture
async def open_store(url: str) -> AsyncIterator[OpenStore]:
    """Open a store on the test's schema (or through ``via``, a proxy's URL); all are closed
    at the end."""
    opened: list[PostgresStore] = []

    async def make(via: str | None = None, **options: Any) -> PostgresStore:
        options.setdefault("retry_seconds", 5)
        store = PostgresStore(via or url, **options)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


def unique(prefix: str = "r") -> str:
    """A run id no other test uses: NOTIFY is database-wide, other schemas' runs included."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


async def backends(
    admin: asyncpg.Connection[Any], proxy: Proxy, where: str = "true"
) -> list[asyncpg.Record]:
    """The server's backends for the proxy's open connections."""
    return await admin.fetch(
        "SELECT pid, query, state, wait_event_type, application_name FROM pg_stat_activity "
        f"WHERE client_port = ANY($1::int[]) AND ({where}) ORDER BY pid",
        proxy.upstream_ports(),
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    """Poll ``check`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def steps_by_id(store: PostgresStore, run_id: str) -> dict[str, StepRecord]:
    return {step.id: step for step in await store.get_steps(run_id)}


# Lost acknowledgements


async def test_a_completion_whose_commit_ack_is_lost_is_recorded_once(
    proxy: Proxy, open_store: OpenStore
) -> None:
    store = await open_store(proxy.url)
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    await asyncio.sleep(0.1)  # the claim's wake-up (NOTIFY, sent just after it) has gone
    connections = proxy.connections
    proxy.drop_statement_ack()  # a completion is one statement that commits on its own
    settled = await store.complete_step(a, StepResult("out"), 2.0, Eager("w1", 30, 5))
    assert proxy.fired == 1  # the statement's acknowledgement never arrived
    assert proxy.connections > connections  # the answer came over a new connection
    assert settled is not None  # the receipt said: committed (not "your lease is lost")
    assert settled.unsettled == 3
    assert [(c.step_id, c.attempt, c.worker) for c in settled.claims] == [("c", 1, "w1")]
    names = await event_names(store)
    assert names == ["run_started", "step_started", "step_completed", "step_started"]
    steps = await steps_by_id(store, "r1")
    assert (steps["a"].status, steps["a"].output, steps["a"].attempts) == (
        StepStatus.COMPLETED,
        "out",
        1,
    )
    assert (steps["c"].status, steps["c"].attempts) == (StepStatus.RUNNING, 1)
    # The eager claim the receipt returned is the one the database holds: it can complete.
    assert await store.complete_step(settled.claims[0], StepResult("c"), 3.0)


async def test_a_launch_whose_commit_ack_is_lost_makes_one_run(
    proxy: Proxy, open_store: OpenStore, admin: asyncpg.Connection[Any]
) -> None:
    store = await open_store(proxy.url)
    proxy.drop_commit_ack()
    assert await store.create_run(diamond(), 1.0) == ("r1", True)
    assert proxy.fired == 1
    assert await admin.fetchval("SELECT count(*) FROM runs") == 1
    assert await admin.fetchval("SELECT count(*) FROM steps") == 4
    assert await event_names(store) == ["run_started"]
    assert (await store.get_run("r1")).unsettled == 4


# Several processes


def wide(run_id: str, width: int) -> NewRun:
    steps = [NewStep(f"s{i}", "code", False, i, 0) for i in range(width)]
    return NewRun(run_id, "wide", None, "m", {}, "{}", "h", steps)


async def test_stores_claiming_at_once_take_each_step_once(open_store: OpenStore) -> None:
    """Three processes claim and complete as fast as they can, on 20 runs of 10 steps."""
    stores = [await open_store() for _ in range(3)]
    runs = [f"r{i}" for i in range(20)]
    await asyncio.gather(*(stores[i % 3].create_run(wide(r, 10), 1.0) for i, r in enumerate(runs)))
    taken: list[Claim] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8

    async def work(store: PostgresStore, worker: str) -> None:
        while len(taken) < 200:
            assert loop.time() < deadline, f"{len(taken)} claims in 8 s"
            claims = await store.claim(worker, 1.0, 30, Capacity(agents=0, others=4), 3)
            taken.extend(claims)
            for claim in claims:
                assert await store.complete_step(claim, StepResult(worker), 2.0)
            if not claims:
                await asyncio.sleep(0.002)

    await asyncio.gather(*(work(store, f"w{i}") for i, store in enumerate(stores)))
    counts = Counter((claim.run_id, claim.step_id) for claim in taken)
    assert set(counts.values()) == {1}
    assert set(counts) == {(r, f"s{i}") for r in runs for i in range(10)}
    assert {claim.attempt for claim in taken} == {1}
    by_step = {(claim.run_id, claim.step_id): claim.worker for claim in taken}
    for run_id in runs:
        for step in await stores[0].get_steps(run_id):
            assert (step.status, step.attempts) == (StepStatus.COMPLETED, 1)
            assert step.output == by_step[(run_id, step.id)]  # completed by who claimed it
        assert (await event_names(stores[0], run_id)).count("step_started") == 10
    assert [await claim_ids(store, 3.0) for store in stores] == [[], [], []]


# Wake-ups


async def hear(heard: asyncio.Queue[str], expected: str, timeout: float = 5.0) -> list[str]:
    """Wait until ``expected`` is heard; returns what was heard before it."""
    before = []
    while (got := await asyncio.wait_for(heard.get(), timeout)) != expected:
        before.append(got)
    return before


async def test_notifications_outlive_their_connection(
    proxy: Proxy, open_store: OpenStore, admin: asyncpg.Connection[Any]
) -> None:
    listener = await open_store(proxy.url)  # behind the proxy: its backends can be named
    writer = await open_store()
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener.subscribe(heard.put_nowait)
    await hear(heard, "")  # listening

    first = unique()
    await writer.create_run(diamond(first), 1.0)
    assert "" not in await hear(heard, first)
    a = await claim_one(writer, "a")
    assert "" not in await hear(heard, first)
    await writer.complete_step(a, StepResult("x"), 2.0)
    assert "" not in await hear(heard, first)

    (old,) = await backends(admin, proxy, "query LIKE 'LISTEN%'")
    assert old["application_name"] == "flowrunner"
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", old["pid"])
    assert first not in await hear(heard, "")  # reconnected: something may have been missed

    async def listening_again() -> bool:
        return bool(await backends(admin, proxy, "query LIKE 'LISTEN%'"))

    assert await eventually(listening_again)
    (new,) = await backends(admin, proxy, "query LIKE 'LISTEN%'")
    assert new["pid"] != old["pid"]
    second = unique()
    await writer.create_run(diamond(second), 3.0)
    assert "" not in await hear(heard, second)
    b = await claim_one(writer, "b", now=3.0)
    await writer.complete_step(b, StepResult("x"), 4.0)
    assert "" not in await hear(heard, second)


async def test_a_worker_listens_for_work_only_until_someone_wants_every_change(
    open_store: OpenStore,
) -> None:
    """Work-only subscribers (workers) are not woken by every change of every run; a
    subscriber to changes (an API process) makes the store listen to those too."""
    listener, writer = await open_store(), await open_store()
    delivered: list[tuple[str, bool | None]] = []
    notify = listener._notify
    listener._notify = lambda run_id, work=None: (
        delivered.append((run_id, work)),
        notify(run_id, work),
    )  # type: ignore[method-assign]
    work: asyncio.Queue[str] = asyncio.Queue()
    listener.subscribe(work.put_nowait, work_only=True)
    await hear(work, "")
    quiet = unique()
    await writer.create_run(diamond(quiet), 1.0)  # a change that makes work
    await hear(work, quiet)  # (other tests' runs may be heard too: one database)
    a = await claim_one(writer, "a")  # a change without work
    await writer.complete_step(a, StepResult("x"), 2.0)
    await hear(work, quiet)
    assert (quiet, True) in delivered and (quiet, False) not in delivered

    changes: asyncio.Queue[str] = asyncio.Queue()
    listener.subscribe(changes.put_nowait)
    await hear(changes, "")  # listening again, to changes too
    loud = unique()
    await writer.create_run(diamond(loud), 3.0)
    await hear(changes, loud)
    await hear(work, loud)


# Lost connections


async def test_a_terminated_idle_connection_is_replaced(
    proxy: Proxy, open_store: OpenStore, admin: asyncpg.Connection[Any]
) -> None:
    store = await open_store(proxy.url, pool_size=1)
    await store.create_run(diamond(), 1.0)
    old = {row["pid"] for row in await backends(admin, proxy)}
    ports = set(proxy.upstream_ports())
    assert len(old) == len(ports) == 1
    for pid in old:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)

    async def closed() -> bool:
        return not ports & set(proxy.upstream_ports())

    assert await eventually(closed)
    await asyncio.sleep(0.1)  # the store's side has read the end of its connection
    # (see test_a_query_racing_a_terminated_backend_is_retried for a call that does not wait)
    assert (await store.get_run("r1")).status is RunStatus.RUNNING
    assert await claim_ids(store) == ["a"]
    new = {row["pid"] for row in await backends(admin, proxy)}
    assert new and not new & old


async def test_a_write_whose_connection_is_terminated_midway_is_retried(
    proxy: Proxy, open_store: OpenStore, admin: asyncpg.Connection[Any], url: str
) -> None:
    """The backend is ended while the write waits on the run's row (the test holds it):
    the write is retried on a new connection and recorded once."""
    store = await open_store(proxy.url, pool_size=1)
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    watcher = await asyncpg.connect(url)
    try:
        async with admin.transaction():
            await admin.execute("SELECT 1 FROM runs WHERE id = 'r1' FOR UPDATE")
            task = asyncio.create_task(store.complete_step(a, StepResult("out"), 2.0))
            blocked: list[asyncpg.Record] = []

            async def waiting_on_the_run() -> bool:
                blocked[:] = await backends(watcher, proxy, "wait_event_type = 'Lock'")
                return bool(blocked)

            assert await eventually(waiting_on_the_run)
            (victim,) = blocked
            assert await watcher.fetchval("SELECT pg_terminate_backend($1)", victim["pid"])

            async def gone() -> bool:
                found = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", victim["pid"]
                )
                return bool(found == 0)

            assert await eventually(gone)
            assert not task.done()  # the retry waits for the lock the test still holds
        settled = await asyncio.wait_for(task, 5)
    finally:
        await watcher.close()
    assert settled is not None and settled.unsettled == 3
    names = await event_names(store)
    assert names == ["run_started", "step_started", "step_completed"]
    assert (await steps_by_id(store, "r1"))["a"].status is StepStatus.COMPLETED


async def test_a_query_racing_a_terminated_backend_is_retried(
    proxy: Proxy, open_store: OpenStore, admin: asyncpg.Connection[Any]
) -> None:
    """A backend's FATAL goodbye can reach asyncpg before the end of its connection does;
    a call made in between meets asyncpg's InternalClientError ('cannot switch to state
    11; another operation (2) is in progress'): it must be retried like a lost connection,
    and never leave the store raw. The proxy widens the window to make it certain."""
    store = await open_store(proxy.url, pool_size=1)
    await store.create_run(diamond(), 1.0)
    await asyncio.sleep(0.1)  # the launch's wake-up (NOTIFY, sent just after it) has gone
    (backend,) = await backends(admin, proxy)
    proxy.close_delay = 1.0
    closes = proxy.server_closes
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend["pid"])

    async def server_closed() -> bool:
        return proxy.server_closes > closes

    assert await eventually(server_closed)
    await asyncio.sleep(0.05)  # the goodbye has been read; the end comes 1 s later
    assert (await store.get_run("r1")).status is RunStatus.RUNNING


# Faults found by these tests, now fixed: a lost COMMIT still in progress, a silent connection.


async def test_a_commit_still_in_progress_when_its_connection_drops_is_recognised(
    proxy: Proxy, open_store: OpenStore, url: str
) -> None:
    store = await open_store(proxy.url)
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    watcher = await asyncpg.connect(url)
    try:
        proxy.hold_commit()
        # a write in a transaction block (a retry later), so that it ends with COMMIT
        task = asyncio.create_task(store.fail_attempt(a, "flaky", 5.0, 2.0))
        await asyncio.wait_for(proxy.holding.wait(), 5)
        assert proxy.fired == 1  # the client's connection is gone; its transaction is not

        async def retry_waits() -> bool:
            return bool(await backends(watcher, proxy, "wait_event_type = 'Lock'"))

        await eventually(retry_waits, 2.0)  # a retry that waits some other way gets 2 s
        await proxy.deliver()  # the old transaction commits now
        recorded = await asyncio.wait_for(task, 5)
    finally:
        await watcher.close()
    names = await event_names(store)
    assert recorded, names  # recognised as this write's own, not refused as stale
    assert names == ["run_started", "step_started", "step_retrying"]


async def test_a_silently_dead_connection_does_not_hang_a_call(
    proxy: Proxy, open_store: OpenStore
) -> None:
    options = {"statement_timeout": 0.5, "retry_seconds": 1.0, "connect_timeout": 0.5}
    store = await open_store(proxy.url, pool_size=1, **options)
    await store.create_run(diamond(), 1.0)
    proxy.stall()
    call = asyncio.create_task(store.get_run("r1"))
    try:
        done, _ = await asyncio.wait({call}, timeout=3)
    finally:
        await proxy.close()  # the silent connection ends now: the call fails or finishes
        with contextlib.suppress(StoreError):
            await call
    assert done, "get_run still waits, 3 s after its connection went silent"
    assert call.result().status is RunStatus.RUNNING


async def test_server_settings_in_the_url_reach_every_connection(
    open_store: OpenStore, url: str
) -> None:
    """What scaling.md offers for speed: `?synchronous_commit=off` in the database URL."""
    store = await open_store(f"{url}&synchronous_commit=off", pool_size=2)
    assert store._pool is not None
    async with store._pool.acquire() as first, store._pool.acquire() as second:
        for conn in (first, second):
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
            assert await conn.fetchval("SHOW application_name") == "flowrunner"
    run_id, _ = await store.create_run(wide("r1", 3), now=1.0)
    assert (await store.get_run(run_id)).unsettled == 3


async def test_a_worker_process_plans_each_statement_once_per_connection(
    open_store: OpenStore,
) -> None:
    """PostgreSQL plans a prepared statement afresh for its first five executions on a
    connection; the claim and the settlement take about 3 ms each to plan, which a
    worker's new connections paid again and again. A worker's store uses generic plans
    from the first; any other store keeps custom ones (list_runs' filters need them)."""

    async def custom_plans(store: PostgresStore) -> int:
        for index in range(6):
            await store.create_run(wide(unique(), 1), 1.0)
            (claim,) = await store.claim("w1", 2.0, 30, Capacity(0, 1), 3)
            assert await store.complete_step(claim, StepResult(str(index)), 3.0) is not None
        assert store._pool is not None
        async with store._pool.acquire() as conn:  # the pool's one connection
            count: int = await conn.fetchval(
                "SELECT coalesce(sum(custom_plans), 0) FROM pg_prepared_statements"
            )
            return count

    assert await custom_plans(await open_store(pool_size=1, generic_plans=True)) == 0
    assert await custom_plans(await open_store(pool_size=1)) > 0


def test_the_worker_command_opens_its_store_for_generic_plans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWRUNNER_DATABASE_URL", "postgresql://db.example/flows")
    project = Project.open(tmp_path)
    worker, api = setup.open_store(project, worker_only=True), setup.open_store(project)
    assert isinstance(worker, PostgresStore) and isinstance(api, PostgresStore)
    assert (worker.generic_plans, api.generic_plans) == (True, False)


# Results of one run settled together


def join(run_id: str = "r1") -> NewRun:
    """x and y, then z, which needs both."""
    steps = [
        NewStep("x", "code", False, 0, 0, ("z",)),
        NewStep("y", "code", False, 1, 0, ("z",)),
        NewStep("z", "code", False, 2, 2),
    ]
    return NewRun(run_id, "join", None, "m", {}, "{}", "h", steps)


async def claimed(store: PostgresStore) -> dict[str, Claim]:
    return {c.step_id: c for c in await store.claim("w1", 1.0, 30, Capacity(0, 2), 3)}


async def test_results_of_one_run_that_arrive_together_settle_in_one_statement(
    open_store: OpenStore, admin: asyncpg.Connection[Any]
) -> None:
    store = await open_store()
    await store.create_run(join(), 1.0)
    held = await claimed(store)
    receipts = await admin.fetchval("SELECT count(*) FROM commits")
    first, second = await asyncio.gather(
        store.complete_step(held["x"], StepResult("X"), 2.0, Eager("w1", 30, 1)),
        store.complete_step(held["y"], StepResult("Y"), 2.0, Eager("w1", 30, 1)),
    )
    assert await admin.fetchval("SELECT count(*) FROM commits") == receipts + 1
    assert first is not None and second is not None
    # z lost both needs at once; the slots the two freed let the first take it eagerly
    assert [(c.step_id, c.worker) for c in first.claims] == [("z", "w1")]
    assert (first.unsettled, second.unsettled, second.claims) == (1, 1, ())
    events = [(e.step_id, e.event) for e in await store.events("r1")]
    assert events[-3:] == [("x", "step_completed"), ("y", "step_completed"), ("z", "step_started")]
    assert [e.id for e in await store.events("r1")] == list(range(1, 7))
    steps = await steps_by_id(store, "r1")
    assert (steps["x"].output, steps["y"].output, steps["z"].status) == ("X", "Y", "running")
    assert await store.complete_step(first.claims[0], StepResult("Z"), 3.0) is not None
    assert (await store.get_run("r1")).unsettled == 0


async def test_a_stale_result_in_a_batch_is_refused_alone(open_store: OpenStore) -> None:
    store = await open_store()
    await store.create_run(join(), 1.0)
    held = await claimed(store)
    stale = Claim("r1", "y", "code", 2, 0, "w1")  # an attempt this worker does not hold
    settled, refused = await asyncio.gather(
        store.complete_step(held["x"], StepResult("X"), 2.0, Eager("w1", 30, 1)),
        store.complete_step(stale, StepResult("Y"), 2.0, Eager("w1", 30, 1)),
    )
    assert settled is not None and settled.claims == () and refused is None
    assert settled.unsettled == 2
    names = await event_names(store)
    assert names[-2:] == ["step_completed", "stale_result_refused"]
    steps = await steps_by_id(store, "r1")
    assert (steps["y"].status, steps["z"].status) == (StepStatus.RUNNING, StepStatus.PENDING)


async def test_a_batch_whose_ack_is_lost_is_recorded_once(
    proxy: Proxy, open_store: OpenStore
) -> None:
    store = await open_store(proxy.url)
    await store.create_run(join(), 1.0)
    held = await claimed(store)
    await asyncio.sleep(0.1)  # the claim's wake-up (NOTIFY, sent just after it) has gone
    proxy.drop_statement_ack()
    first, second = await asyncio.gather(
        store.complete_step(held["x"], StepResult("X"), 2.0, Eager("w1", 30, 1)),
        store.complete_step(held["y"], StepResult("Y"), 2.0, Eager("w1", 30, 1)),
    )
    assert proxy.fired == 1
    assert first is not None and second is not None  # both known recorded, by the receipt
    assert [c.step_id for c in first.claims] == ["z"]  # adopted: leased to w1 in the run
    names = await event_names(store)
    assert names.count("step_completed") == 2 and names.count("stale_result_refused") == 0
    assert (await store.get_run("r1")).unsettled == 1


# Results of several runs settled together


def pair(run_id: str, agent: bool = False) -> NewRun:
    """a, then b."""
    steps = [NewStep("a", "code", False, 0, 0, ("b",)), NewStep("b", "code", agent, 1, 1)]
    return NewRun(run_id, "pair", None, "m", {}, "{}", "h", steps)


async def firsts(store: PostgresStore, runs: list[str], agent: bool = False) -> list[Claim]:
    """Each run's first step, claimed by w1, in the order of ``runs``."""
    for run_id in runs:
        await store.create_run(pair(run_id, agent), 1.0)
    claims = {c.run_id: c for c in await store.claim("w1", 1.0, 30, Capacity(0, 8), 3)}
    return [claims[run_id] for run_id in runs]


async def test_results_of_several_runs_that_arrive_together_settle_in_one_statement(
    open_store: OpenStore, admin: asyncpg.Connection[Any]
) -> None:
    """Each run gets its own counts, its own gapless events and its own eager claims; the
    slots the results bring are shared: two code slots for three steps made ready."""
    store = await open_store()
    runs = ["r3", "r1", "r2"]  # not in the order of their ids
    held = await firsts(store, runs)
    receipts = await admin.fetchval("SELECT count(*) FROM commits")
    slots = [1, 1, 0]
    settled = await asyncio.gather(
        *(
            store.complete_step(c, StepResult(c.run_id), 2.0, Eager("w1", 30, n))
            for c, n in zip(held, slots, strict=True)
        )
    )
    assert await admin.fetchval("SELECT count(*) FROM commits") == receipts + 1
    assert all(s is not None and s.unsettled == 1 for s in settled)
    # the slots go to the runs in the order of their ids; each claim to a result with a
    # slot for it, its own run's result first (r1's), else another (r3's for r2's step)
    claims = [[(c.run_id, c.step_id) for c in s.claims] for s in settled if s is not None]
    assert claims == [[("r2", "b")], [("r1", "b")], []]
    taken = ["r1", "r2"]
    for run_id in runs:
        steps = await steps_by_id(store, run_id)
        assert steps["a"].output == run_id
        assert steps["b"].status == (StepStatus.RUNNING if run_id in taken else StepStatus.PENDING)
        events = await store.events(run_id)
        assert [e.id for e in events] == list(range(1, len(events) + 1))
        started = ["step_started"] if run_id in taken else []
        assert [e.event for e in events if e.step_id == "b"] == started
    assert [c.run_id for c in await store.claim("w2", 3.0, 30, Capacity(0, 8), 3)] == ["r3"]


async def test_a_batch_of_several_runs_finishes_those_it_ends(open_store: OpenStore) -> None:
    """One run's last result, told how the run ends, and another run's first result: only
    the first run finishes, with its event last; a stale result of a third is refused; a
    fourth run's two last results, only the second told how it ends, finish it."""
    store = await open_store()
    one, two, three = await firsts(store, ["r1", "r2", "r3"])
    (last,) = (await store.complete_step(one, StepResult("A"), 2.0, Eager("w1", 30, 1))).claims
    await store.create_run(wide("r4", 2), 2.0)
    sinks = await store.claim("w1", 2.0, 30, Capacity(0, 8), 3)
    stale = Claim("r3", "a", "code", three.attempt + 1, 0, "w1")
    finish = Finish(RunStatus.COMPLETED, "the report", None)
    ended, going, refused, *_ = await asyncio.gather(
        store.complete_step(last, StepResult("B"), 3.0, None, finish),
        store.complete_step(two, StepResult("A"), 3.0, None, finish),  # not its last step
        store.complete_step(stale, StepResult("A"), 3.0),
        store.complete_step(sinks[0], StepResult("S"), 3.0),
        store.complete_step(sinks[1], StepResult("S"), 3.0, None, finish),
    )
    assert ended is not None and (ended.unsettled, ended.finished) == (0, True)
    assert going is not None and (going.unsettled, going.finished) == (1, False)
    assert refused is None
    assert (await store.get_run("r4")).status is RunStatus.COMPLETED
    assert (await store.get_run("r1")).status is RunStatus.COMPLETED
    assert (await store.get_run("r1")).report == "the report"
    assert (await event_names(store, "r1"))[-1] == "run_completed"
    assert (await store.get_run("r2")).status is RunStatus.RUNNING
    assert "run_completed" not in await event_names(store, "r2")
    assert (await event_names(store, "r3"))[-1] == "stale_result_refused"
    assert (await steps_by_id(store, "r3"))["a"].status is StepStatus.RUNNING


async def test_a_batch_of_several_runs_whose_ack_is_lost_is_recorded_once(
    proxy: Proxy, open_store: OpenStore
) -> None:
    store = await open_store(proxy.url)
    held = await firsts(store, ["r1", "r2"])
    await asyncio.sleep(0.1)  # the claim's wake-up (NOTIFY, sent just after it) has gone
    proxy.drop_statement_ack()
    settled = await asyncio.gather(
        *(store.complete_step(c, StepResult("A"), 2.0, Eager("w1", 30, 2)) for c in held)
    )
    assert proxy.fired == 1
    # both known recorded, by the receipt; each adopts its run's step leased to w1
    assert [[(c.run_id, c.step_id) for c in s.claims] for s in settled if s is not None] == [
        [("r1", "b")],
        [("r2", "b")],
    ]
    for run_id in ("r1", "r2"):
        names = await event_names(store, run_id)
        assert names.count("step_completed") == 1 and "stale_result_refused" not in names
        assert (await store.get_run(run_id)).unsettled == 1


def test_receipt_tokens_and_their_locks_do_not_repeat() -> None:
    """Writes in flight hold the advisory lock of their token: two writes of one store must
    never share one (the second would wait for the first), nor two stores a token."""
    one, two = PostgresStore("postgresql://unused"), PostgresStore("postgresql://unused")
    tokens = [one._token() for _ in range(10_000)] + [two._token() for _ in range(10_000)]
    assert len(set(tokens)) == len(tokens)
    assert len({_lock_key(token) for token in tokens[:10_000]}) == 10_000
    assert all(len(token) == 32 and int(token, 16) >= 0 for token in tokens)


def test_a_batch_fills_the_slots_its_results_bring() -> None:
    """Two code results and an agent result of one worker, settled together: each result
    brings its step's slot and the free slots its worker lent it alone."""

    def item(kind: str, others: int, agents: int) -> _Settlement:
        claim = Claim("r1", f"s-{kind}-{others}", kind, 1, 0, "w1")
        eager = Eager("w1", 30, others, agents)
        values = ("completed", "", "{}", None, None, False)
        return _Settlement(claim, values, "step_completed", {}, 1.0, eager, None, None, None)  # type: ignore[arg-type]

    # max_code 4 with 1 other code step running, max_agents 2 with nothing else running:
    # the first result was lent the free code slot and the free agent slot
    batch = [item("code", 2, 1), item("code", 1, 0), item("agent", 0, 1)]
    assert _eager_capacity(batch) == (3, 2)


def test_each_result_gets_the_claims_that_fill_its_own_slots() -> None:
    """The worker takes back a result's slots as it starts that result's claims, so no
    result may be handed more claims than it brought slots for: its own run's first."""

    def item(run: str, others: int, agents: int) -> _Settlement:
        claim = Claim(run, "a", "code", 1, 0, "w1")
        values = ("completed", "", "{}", None, None, False)
        eager = Eager("w1", 30, others, agents)
        return _Settlement(claim, values, "step_completed", {}, 1.0, eager, None, None, None)  # type: ignore[arg-type]

    def taken(run: str, *steps: str) -> tuple[Claim, ...]:
        return tuple(
            Claim(run, s, "agent" if s.startswith("ag") else "code", 1, 0, "w1") for s in steps
        )

    recorded = [item("r1", 1, 0), item("r2", 1, 2), item("r3", 0, 1)]
    claims = {"r1": taken("r1", "ag1", "c1"), "r2": taken("r2", "c2", "c3"), "r3": ()}
    shares = [[(c.run_id, c.step_id) for c in share] for share in _hand_out(recorded, claims)]
    assert shares == [
        # its own run's code step (no agent slot for ag1), and, past every slot, c3
        [("r1", "c1"), ("r2", "c3")],
        [("r2", "c2"), ("r1", "ag1")],  # its own run's first, then another run's
        [],  # nothing left of a kind it has a slot for
    ]


def test_a_batch_fills_the_free_slots_of_one_worker_only() -> None:
    """Two workers sharing a process's store: a batch takes the results whose eager claims
    go to the first one's worker (or to none); the other's wait for the next statement."""

    def item(step: str, worker: str | None) -> _Settlement:
        claim = Claim("r1", step, "code", 1, 0, worker or "w1")
        eager = Eager(worker, 30, 1) if worker else None
        values = ("completed", "", "{}", None, None, False)
        return _Settlement(claim, values, "step_completed", {}, 1.0, eager, None, None, None)  # type: ignore[arg-type]

    queued = [item("a", None), item("b", "w2"), item("c", "w1"), item("d", "w2")]
    batch, rest = _one_worker(queued)
    assert [i.claim.step_id for i in batch] == ["a", "b", "d"]
    assert [i.claim.step_id for i in rest] == ["c"]


async def test_a_claim_brings_each_steps_run_along(open_store: OpenStore) -> None:
    """A worker that claims a step of a run it has not seen need not read the run."""
    store = await open_store()
    await store.create_run(diamond("r1"), 1.0)
    await store.create_run(diamond("r2", max_parallel=3), 1.5)
    claims = await store.claim("w1", 2.0, 30, ALL, 3)
    assert [(c.run_id, c.step_id) for c in claims] == [("r1", "a"), ("r2", "a")]
    for claim in claims:
        assert claim.run == await store.get_run(claim.run_id)


async def test_a_claim_takes_other_runs_instead_of_waiting_for_a_held_one(
    open_store: OpenStore, admin: asyncpg.Connection[Any]
) -> None:
    """Claims waited for the runs they wanted, holding the ones they had: with several
    workers, settlements queued behind claims that queued behind settlements. A claim now
    skips a run another transaction holds."""
    store = await open_store()
    await store.create_run(diamond("r1"), 1.0)
    await store.create_run(diamond("r2"), 1.5)
    async with admin.transaction():
        await admin.execute("SELECT 1 FROM runs WHERE id = 'r1' FOR UPDATE")
        claims = await asyncio.wait_for(store.claim("w1", 2.0, 30, ALL, 3), 2)
        assert [(c.run_id, c.step_id) for c in claims] == [("r2", "a")]
    claims = await store.claim("w1", 2.0, 30, ALL, 3)
    assert [(c.run_id, c.step_id) for c in claims] == [("r1", "a")]


async def test_a_claim_kept_short_by_a_held_run_tries_again(
    open_store: OpenStore, admin: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that found its only run held must not sleep until the next poll: its claim
    tries again a moment later, and takes the step once the holder is done."""
    monkeypatch.setattr("engine.store.postgres.CONTENDED_PAUSE", 0.2)
    store = await open_store()
    await store.create_run(diamond("r1"), 1.0)
    transaction = admin.transaction()
    await transaction.start()
    await admin.execute("SELECT 1 FROM runs WHERE id = 'r1' FOR UPDATE")
    claiming = asyncio.create_task(store.claim("w1", 2.0, 30, ALL, 3))
    await asyncio.sleep(0.1)  # the first try has skipped r1; the next comes at 0.2 s
    await transaction.rollback()
    claims = await asyncio.wait_for(claiming, 2)
    assert [(c.run_id, c.step_id) for c in claims] == [("r1", "a")]


async def test_a_claims_reads_do_not_grow_with_the_backlog(
    open_store: OpenStore, admin: asyncpg.Connection[Any]
) -> None:
    """A claim read every ready step to find the few it took (it sorted the ready steps of
    its runs across both kinds, so it had to read them all first): with 1,000 runs
    waiting, 110 buffers and 0.8 ms a claim. It now reads the steps it takes."""
    store = await open_store()

    async def reads(runs: int) -> int:
        """Buffers one claim of 8 code steps reads, with ``runs`` more runs waiting."""
        for _ in range(runs):
            await store.create_run(diamond(unique()), 1.0)
        transaction = admin.transaction()  # the claim is measured, then undone
        await transaction.start()
        try:
            (row,) = await admin.fetch(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + Q["claim_ready"],
                *(2.0, None, 8, 8, "w1", 32.0, unique(), 1),
            )
        finally:
            await transaction.rollback()
        plan = json.loads(row[0])[0]["Plan"]
        assert plan["Actual Rows"] == 8
        blocks: int = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
        return blocks

    few = await reads(20)
    many = await reads(500)  # 520 runs waiting, each with a ready step
    assert many < few * 1.5 + 20, (few, many)


WORKER_PLANNING = {
    name: value
    for name, value in PostgresStore("postgresql://unused", generic_plans=True)._settings().items()
    if name in ("plan_cache_mode", "enable_seqscan")
}
"""The settings a worker's connections plan under."""


async def generic_plan(conn: asyncpg.Connection[Any], query: str) -> dict[str, Any]:
    """The generic plan of ``query`` (the plan a worker's connections use)."""
    types = [param.name for param in (await conn.prepare(query)).get_parameters()]
    types = [f"{name[1:]}[]" if name.startswith("_") else name for name in types]
    transaction = conn.transaction()
    await transaction.start()
    try:
        for name, value in WORKER_PLANNING.items():
            await conn.execute(f"SET LOCAL {name} = {value}")
        await conn.execute(f"PREPARE planned ({', '.join(types)}) AS {query}")
        nulls = ", ".join(["NULL"] * len(types))
        (row,) = await conn.fetch(f"EXPLAIN (FORMAT JSON) EXECUTE planned ({nulls})")
    finally:
        await transaction.rollback()
        await conn.execute("DEALLOCATE planned")
    plan: dict[str, Any] = json.loads(row[0])[0]["Plan"]
    return plan


def indexes_by_part(node: dict[str, Any], part: str = "") -> dict[str, set[str]]:
    """The indexes each part of a plan (its CTEs, by name) reads."""
    part = node.get("Subplan Name", part)
    found = {part: {node["Index Name"]}} if "Index Name" in node else {}
    for child in node.get("Plans", []):
        for name, indexes in indexes_by_part(child, part).items():
            found.setdefault(name, set()).update(indexes)
    return found


def scanned(node: dict[str, Any]) -> set[str]:
    """The tables a plan reads whole (sequential scans)."""
    found = {node["Relation Name"]} if node["Node Type"] == "Seq Scan" else set()
    return found.union(*(scanned(child) for child in node.get("Plans", [])))


async def with_steps_running(store: PostgresStore, runs: int = 300, **extra: Any) -> None:
    """Runs whose first steps are running: tables like those a worker's plans meet."""
    for index in range(runs):
        await store.create_run(diamond(f"r{index:03}", **extra), 1.0)
    await store.claim("w1", 2.0, 30, Capacity(100, 100), 3)


async def test_a_settlement_reaches_its_steps_by_key(
    open_store: OpenStore, admin: asyncpg.Connection[Any]
) -> None:
    """Under its generic plan (a worker's), a settlement found the steps it settles through
    the index of running steps (the planner chose it for the fence's `status =
    'running'`), reading every step running in any run, and every dead entry of that
    index until a vacuum: 5% of the machine's CPU in the 4-worker agent benchmark."""
    await with_steps_running(await open_store())
    parts = indexes_by_part(await generic_plan(admin, Q["settle_steps"]))
    assert parts["CTE done"] == {"steps_pkey"}, parts
    assert parts["CTE fenced"] == {"steps_pkey"}, parts


async def test_a_settlement_planned_on_small_tables_never_scans_every_step(
    open_store: OpenStore, admin: asyncpg.Connection[Any]
) -> None:
    """A worker's connection plans a statement once, at its first use, and keeps the plan
    until an ANALYZE. Planned on tables of a few dozen runs without statistics, a
    settlement updated the dependents of its runs through a hash join over every step."""
    await with_steps_running(await open_store(), runs=50)
    plan = await generic_plan(admin, Q["settle_steps"])
    assert "steps" not in scanned(plan), scanned(plan)
    assert "steps_pkey" in indexes_by_part(plan)["CTE dependent"]


@pytest.mark.parametrize("query", ["claim_ready", "settle_steps"])
async def test_max_parallel_counts_only_the_runs_running_agent_steps(
    open_store: OpenStore, admin: asyncpg.Connection[Any], query: str
) -> None:
    """For a run with a max_parallel, a claim and a settlement count its running agent
    steps; under their generic plans they counted through the index of all running steps
    (every run's, and its dead entries until a vacuum)."""
    await with_steps_running(await open_store(), max_parallel=2)
    parts = indexes_by_part(await generic_plan(admin, Q[query]))
    assert "steps_leased" not in set().union(*parts.values()), parts
    assert "steps_running_agents" in set().union(*parts.values()), parts


@pytest.mark.parametrize("query", ["extend_leases", "held_leases"])
async def test_a_heartbeat_reaches_its_steps_by_key(
    open_store: OpenStore, admin: asyncpg.Connection[Any], query: str
) -> None:
    """Under its generic plan, a heartbeat read every step running in any run (through the
    index of running steps, then filtering on the lease's owner), four times a second in
    every worker: the work of all heartbeats grew with workers times running steps."""
    await with_steps_running(await open_store())
    parts = indexes_by_part(await generic_plan(admin, Q[query]))
    assert set().union(*parts.values()) == {"steps_pkey"}, parts


async def test_a_claim_looks_up_its_runs_by_key_without_statistics(
    open_store: OpenStore, admin: asyncpg.Connection[Any]
) -> None:
    """On a table never analyzed (a fresh database; autovacuum off or not yet run), the
    planner took the index of running runs for a few rows and read every running run, in
    each claim: 0.8 of its 0.9 ms with 1,000 runs running."""
    store = await open_store()
    for index in range(300):
        await store.create_run(diamond(f"r{index:03}"), 1.0)
    plan = "\n".join(
        row[0]
        for row in await admin.fetch(
            "EXPLAIN " + Q["claim_ready"], 2.0, None, 8, 8, "w1", 32.0, "token", 1
        )
    )
    assert "runs_pkey on runs" in plan, plan
    assert "runs_running" not in plan and "Seq Scan on runs" not in plan, plan
