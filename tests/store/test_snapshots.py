"""A run's snapshot is stored once per content, on both stores, and the migration that
introduced that moves the copies older runs kept in their own rows."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import asyncpg

from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.queries import load_migrations
from engine.store.sqlite import SqliteStore
from tests.postgres import fresh_schema
from tests.store.test_conformance import diamond

OLD_RUN = (
    "INSERT INTO runs (id, flow, status, model, inputs, snapshot, snapshot_hash, unsettled, "
    "created_at, updated_at) VALUES ({}, 'f', 'running', 'm', '{{}}', {}, {}, 0, 1, 1)"
)
OLD_RUNS = [("r1", '{"v": 1}', "h1"), ("r2", '{"v": 1}', "h1"), ("r3", '{"v": 2}', "h2")]


async def snapshot_rows(store: Store) -> list[tuple[str, str]]:
    query = "SELECT hash, body FROM snapshots ORDER BY hash"
    if isinstance(store, SqliteStore):
        with closing(sqlite3.connect(store.path)) as db:
            return [tuple(row) for row in db.execute(query)]
    assert isinstance(store, PostgresStore)
    conn = await asyncpg.connect(store.url)
    try:
        return [tuple(row) for row in await conn.fetch(query)]
    finally:
        await conn.close()


async def assert_one_copy_each(store: Store) -> None:
    """Each run of OLD_RUNS reads its own snapshot, and each content is stored once."""
    assert [await store.get_snapshot(run_id) for run_id, _, _ in OLD_RUNS] == [
        snapshot for _, snapshot, _ in OLD_RUNS
    ]
    assert await snapshot_rows(store) == [("h1", '{"v": 1}'), ("h2", '{"v": 2}')]


async def test_runs_launched_from_one_snapshot_share_one_copy(store: Store) -> None:
    for run_id, snapshot, digest in OLD_RUNS:
        launch = replace(diamond(run_id), snapshot=snapshot, snapshot_hash=digest)
        await store.create_run(launch, 1.0)
    await assert_one_copy_each(store)


async def test_sqlite_migration_moves_old_snapshots(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(load_migrations("sqlite")[0].sql)
        db.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
            " name TEXT, applied_at REAL)"
        )
        db.execute("INSERT INTO schema_migrations VALUES (1, 'initial', 0)")
        for run in OLD_RUNS:
            db.execute(OLD_RUN.format("?", "?", "?"), run)
        db.commit()
    store = SqliteStore(path)
    await store.open()
    try:
        await assert_one_copy_each(store)
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as db:
        assert "snapshot" not in [row[1] for row in db.execute("PRAGMA table_info(runs)")]


async def test_postgres_migration_moves_old_snapshots() -> None:
    async with fresh_schema() as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            for migration in load_migrations("postgres"):
                if migration.name == "snapshots_by_hash":  # the database as it was before
                    break
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, 0)",
                    migration.version,
                    migration.name,
                )
            for run in OLD_RUNS:
                await conn.execute(OLD_RUN.format("$1", "$2", "$3"), *run)
        finally:
            await conn.close()
        store = PostgresStore(url, retry_seconds=2)
        await store.open()
        try:
            await assert_one_copy_each(store)
        finally:
            await store.close()
