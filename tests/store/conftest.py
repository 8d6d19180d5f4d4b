"""Stores under test: every conformance test runs against each implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore
from tests.postgres import fresh_schema


@asynccontextmanager
async def opened_store(kind: str, folder: Path) -> AsyncIterator[Store]:
    """A fresh, migrated store: a real SQLite file in ``folder`` (``kind`` "sqlite"), or a
    schema of its own on PostgreSQL ("postgres")."""
    if kind == "sqlite":
        opened: Store = SqliteStore(folder / "flowrunner.db")
        await opened.open()
        yield opened
        await opened.close()
        return
    async with fresh_schema() as url:
        opened = PostgresStore(url, retry_seconds=2)
        await opened.open()
        yield opened
        await opened.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh, migrated store of each kind (see :func:`opened_store`)."""
    async with opened_store(request.param, tmp_path) as opened:
        yield opened


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
