"""Stores under test: every conformance test runs against each implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore
from tests.postgres import fresh_schema


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh, migrated store: a real SQLite file, or a schema of its own on PostgreSQL."""
    if request.param == "sqlite":
        opened: Store = SqliteStore(tmp_path / "flowrunner.db")
        await opened.open()
        yield opened
        await opened.close()
        return
    async with fresh_schema() as url:
        opened = PostgresStore(url, retry_seconds=2)
        await opened.open()
        yield opened
        await opened.close()


@pytest.fixture
async def second_store(store: Store, tmp_path: Path) -> AsyncIterator[Store]:
    """Another connection to the same database, as a second process would have."""
    other: Store
    if isinstance(store, SqliteStore):
        other = SqliteStore(store.path)
    else:
        assert isinstance(store, PostgresStore)
        other = PostgresStore(store.url, retry_seconds=2)
    await other.open()
    yield other
    await other.close()
