"""SQLite group commit: writes queued behind a busy store thread commit in one
transaction, each in its own savepoint, so one that fails changes nothing and
the others still commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.store.base import Conflict, NotFound, StoreError
from engine.store.sqlite import SqliteStore

from .test_conformance import diamond


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "flowrunner.db")
    await opened.open()
    yield opened
    await opened.close()


async def queued_behind_a_busy_thread(
    store: SqliteStore, writes: list[Callable[[], Awaitable[Any]]], cancel: int | None = None
) -> tuple[list[Any], list[str]]:
    """Run ``writes`` concurrently while the store's thread is held busy, so they all queue;
    the outcome of each (result or exception) and the transaction statements executed."""
    statements: list[str] = []
    busy, release = threading.Event(), threading.Event()

    def hold(db: sqlite3.Connection) -> None:
        db.set_trace_callback(statements.append)
        busy.set()
        release.wait(10)

    holding = asyncio.ensure_future(store._call(hold, write=False))
    await asyncio.to_thread(busy.wait, 10)
    tasks = [asyncio.ensure_future(write()) for write in writes]
    await asyncio.sleep(0.05)  # every task has queued its write
    if cancel is not None:
        tasks[cancel].cancel()
    release.set()
    await holding
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await store._call(lambda db: db.set_trace_callback(None), write=False)
    transactions = [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")]
    return outcomes, transactions


async def test_queued_writes_commit_together_and_a_failing_one_changes_nothing(
    store: SqliteStore,
) -> None:
    await store.create_run(diamond("r0"), now=1.0)
    await store.create_run(diamond("keyed", idempotency_key="k", request_hash="x"), now=1.0)

    def change_then_fail(db: sqlite3.Connection) -> None:
        db.execute("UPDATE runs SET model = 'changed' WHERE id = 'r0'")
        raise ValueError("the write's own mistake")

    def bad_sql(db: sqlite3.Connection) -> None:
        db.execute("UPDATE runs SET model = 'changed' WHERE id = 'r0'")
        db.execute("INSERT INTO no_such_table VALUES (1)")

    outcomes, transactions = await queued_behind_a_busy_thread(
        store,
        [
            lambda: store.create_run(diamond("r1"), now=2.0),
            lambda: store._call(change_then_fail),
            lambda: store.create_run(diamond("r2", idempotency_key="k", request_hash="y"), 2.0),
            lambda: store._call(bad_sql),
            lambda: store.create_run(diamond("r3"), now=2.0),
        ],
    )
    assert transactions == ["BEGIN IMMEDIATE", "COMMIT"]  # one transaction for all five
    first, failed, conflict, broken, last = outcomes
    assert (first, last) == (("r1", True), ("r3", True))
    assert isinstance(failed, ValueError)
    assert isinstance(conflict, Conflict)
    assert isinstance(broken, StoreError) and "no_such_table" in broken.message
    assert (await store.get_run("r0")).model == "m"  # both failed writes were rolled back
    for run_id in ("r1", "r3"):
        assert [s.id for s in await store.get_steps(run_id)] == ["a", "b", "c", "d"]
        assert [e.id for e in await store.events(run_id)] == [1]
    with pytest.raises(NotFound):
        await store.get_run("r2")


async def test_a_write_alone_fails_as_its_transaction(store: SqliteStore) -> None:
    def change_then_fail(db: sqlite3.Connection) -> None:
        db.execute("UPDATE runs SET model = 'changed' WHERE id = 'r0'")
        raise ValueError("no")

    await store.create_run(diamond("r0"), now=1.0)
    outcomes, transactions = await queued_behind_a_busy_thread(
        store, [lambda: store._call(change_then_fail)]
    )
    assert isinstance(outcomes[0], ValueError)
    assert transactions == ["BEGIN IMMEDIATE", "ROLLBACK"]
    assert (await store.get_run("r0")).model == "m"


async def test_a_write_cancelled_before_the_thread_takes_it_is_not_made(
    store: SqliteStore,
) -> None:
    outcomes, _ = await queued_behind_a_busy_thread(
        store,
        [
            lambda: store.create_run(diamond("r1"), now=2.0),
            lambda: store.create_run(diamond("r2"), now=2.0),
        ],
        cancel=1,
    )
    assert outcomes[0] == ("r1", True)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    with pytest.raises(NotFound):
        await store.get_run("r2")


async def test_a_write_after_close_is_a_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "flowrunner.db")
    await store.open()
    await store.close()
    for _ in range(2):  # and stays one: nothing is left queued
        with pytest.raises(StoreError, match="not open"):
            await store.create_run(diamond("r1"), now=1.0)


async def test_the_log_is_folded_in_while_no_write_waits(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each write below finds the store idle after it: the log is checkpointed then, and the
    next write starts it over, so its file stops growing (SQLite alone would let it grow to
    1,000 pages before checkpointing inside a commit)."""
    wal = store.path.with_name(store.path.name + "-wal")

    async def growth(first: int) -> int:
        """How much the log file grows over 30 launches, each awaited with a read (which
        runs on the store's thread after the write's checkpoint)."""
        for index in range(first, first + 3):  # the log starts over on these
            await store.create_run(diamond(f"r{index}"), now=1.0)
            await store.get_run(f"r{index}")
        before = wal.stat().st_size
        for index in range(first + 3, first + 33):
            await store.create_run(diamond(f"r{index}"), now=1.0)
            await store.get_run(f"r{index}")
        return wal.stat().st_size - before

    monkeypatch.setattr("engine.store.sqlite.CHECKPOINT_SECONDS", 0.0)
    store._checkpoint_due = 0.0  # opening (the migration) set the next one 0.2 s ahead
    folded = await growth(0)
    monkeypatch.setattr("engine.store.sqlite.CHECKPOINT_SECONDS", 3600.0)
    store._checkpoint_due = time.monotonic() + 3600.0
    unfolded = await growth(100)
    assert unfolded > 20 * 4096  # 30 launches write well over 20 pages
    assert folded < unfolded / 10
