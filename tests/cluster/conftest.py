"""Several ``flowrunner`` processes on one PostgreSQL: workers, API servers, chaos.

Each test gets a :class:`ClusterProject`: the end-to-end project of
``tests/e2e`` (real ``flowrunner`` processes, a code package of its own), with
its store in a fresh PostgreSQL schema and the scripted agent backend (the
model boundary is the only fake). The test process launches runs through the
engine's own service on that schema and reads the tables directly.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from engine.config import Project
from engine.lint import check_file
from engine.runner import service
from engine.store.postgres import PostgresStore
from tests.e2e.conftest import E2EProject
from tests.postgres import fresh_schema


class ClusterProject(E2EProject):
    """An :class:`E2EProject` whose processes share one PostgreSQL schema."""

    def __init__(self, root: Path, package: str, url: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(root, package)
        self.url = url
        self.loop = loop
        self.conn: asyncpg.Connection | None = None
        self.write("replies.yaml", "replies:\n  - reply: 'ok'\n")
        self.env.update(
            {
                "FLOWRUNNER_DATABASE_URL": url,
                "FLOWRUNNER_AGENT_BACKEND": "scripted",
                "FLOWRUNNER_SCRIPTED_REPLIES": str(root / "replies.yaml"),
                "FLOWRUNNER_LEASE_SECONDS": "2",
                "FLOWRUNNER_POLL_SECONDS": "0.5",
                "FLOWRUNNER_DB_RETRY_SECONDS": "60",
            }
        )

    def replies(self, text: str) -> None:
        self.write("replies.yaml", text)

    # Launching in this process, on the same schema

    def launch_many(self, flow: str, count: int, **inputs: Any) -> list[str]:
        return self.loop.run_until_complete(self._launch_many(flow, count, inputs))

    async def _launch_many(self, flow: str, count: int, inputs: dict[str, Any]) -> list[str]:
        project = Project.open(self.root)
        result = check_file(self.root / "flows" / f"{flow}.yaml", project)
        assert result.checked is not None, result.diagnostics
        store = PostgresStore(self.url)
        await store.open()
        try:
            ids = []
            for _ in range(count):
                run_id, _ = await service.launch(
                    store, project, result.checked, inputs=inputs, now=time.time()
                )
                ids.append(run_id)
            return ids
        finally:
            await store.close()

    # Looking inside (the E2EProject helpers, on PostgreSQL)

    def query(self, sql: str, *params: Any) -> list[Any]:
        numbered = iter(range(1, len(params) + 1))
        text = re.sub(r"\?", lambda _: f"${next(numbered)}", sql)
        return self.loop.run_until_complete(self._query(text, params))

    async def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        for attempt in range(100):  # PostgreSQL may be restarting under the test
            try:
                if self.conn is None or self.conn.is_closed():
                    self.conn = await asyncpg.connect(self.url)
                return list(await self.conn.fetch(sql, *params))
            except (
                OSError,
                asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError,
                asyncpg.exceptions.OperatorInterventionError,
                asyncpg.exceptions.CannotConnectNowError,
            ):
                self.conn = None
                if attempt == 99:
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("unreachable")

    def statuses(self, run_ids: list[str]) -> dict[str, str]:
        rows = self.query("SELECT id, status FROM runs WHERE id = ANY(?::text[])", run_ids)
        return {row["id"]: row["status"] for row in rows}

    def all_ended(self, run_ids: list[str]) -> bool:
        return all(status != "running" for status in self.statuses(run_ids).values())

    def diagnostics(self) -> str:
        rows = self.query("SELECT status, count(*) AS n FROM runs GROUP BY status")
        counts = {row["status"]: row["n"] for row in rows}
        stuck = self.query(
            "SELECT run_id, step_id, status, attempts, crashes, lease_owner FROM steps "
            "WHERE status IN ('running', 'pending') LIMIT 10"
        )
        return f"runs: {counts}\nunfinished steps: {[dict(r) for r in stuck]}\n" + (
            self.worker_logs()
        )

    def all_events(self) -> dict[str, list[dict[str, Any]]]:
        """Every run's events, in id order."""
        found: dict[str, list[dict[str, Any]]] = {}
        for row in self.query("SELECT * FROM events ORDER BY run_id, id"):
            found.setdefault(row["run_id"], []).append(
                {**dict(row), "payload": json.loads(row["payload"])}
            )
        return found

    @property
    def application(self) -> str:
        """The ``application_name`` of this test's connections (and only this test's)."""
        return self.url.rpartition("application_name=")[2]

    def terminate_backends(self, condition: str = "true") -> list[int]:
        """``pg_terminate_backend`` this test's connections that match ``condition``
        (pg_stat_activity columns); their pids."""
        rows = self.query(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = ? AND pid <> pg_backend_pid() AND ({condition})",
            self.application,
        )
        return [row["pid"] for row in rows]

    def close(self) -> None:
        super().close()
        if self.conn is not None:
            self.loop.run_until_complete(self.conn.close())
            self.conn = None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterProject]:
    """A fresh project on a fresh PostgreSQL schema; its processes are killed afterwards."""
    package = f"cl_{uuid.uuid4().hex[:8]}_steps"  # imported here too: unique per test
    loop = asyncio.new_event_loop()
    schema = fresh_schema()
    url = loop.run_until_complete(schema.__aenter__())
    url += f"&application_name=fr_{url.rpartition('=')[2]}"  # tells this test's connections
    made = ClusterProject(tmp_path / "project", package, url, loop)
    try:
        yield made
    finally:
        made.close()
        loop.run_until_complete(schema.__aexit__(None, None, None))
        loop.close()
