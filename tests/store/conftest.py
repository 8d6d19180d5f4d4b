"""Stores under test: every conformance test runs against each implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.store.base import Store
from engine.store.sqlite import SqliteStore


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh, migrated store: a real SQLite file per test."""
    opened = SqliteStore(tmp_path / "flowrunner.db")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def second_store(store: Store, tmp_path: Path) -> AsyncIterator[Store]:
    """Another connection to the same database, as a second process would have."""
    assert isinstance(store, SqliteStore)
    other = SqliteStore(store.path)
    await other.open()
    yield other
    await other.close()
