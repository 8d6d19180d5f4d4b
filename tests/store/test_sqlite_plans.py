"""The SQLite queries on the scheduling path use their indexes, whatever the run's size.

A claim that scans every step of every running run made a 5,000-step chain
cost 2.7x more per step than a 100-step one; these plans keep it O(limit).
"""

from __future__ import annotations

import sqlite3

import pytest

from engine.store.queries import load_migrations, load_queries

HOT = ["claimable_ready", "claimable_expired", "claimable_step", "has_work", "expired_gates"]


@pytest.fixture(scope="module")
def db() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    for migration in load_migrations("sqlite"):
        connection.executescript(migration.sql)
    return connection


@pytest.mark.parametrize("name", HOT)
def test_hot_queries_never_scan_steps_or_sort(db: sqlite3.Connection, name: str) -> None:
    query = load_queries("sqlite")[name]
    params = {"now": 1.0, "limit": 8, "run_id": None, "step_id": "s"}
    plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {query}", params)]
    for step in plan:
        assert not (step.startswith("SCAN") and "USING" not in step and "CONSTANT" not in step), (
            plan
        )
        assert "TEMP B-TREE" not in step, plan
        if "steps" in step or " s " in f" {step} ":
            assert "INDEX" in step, plan
