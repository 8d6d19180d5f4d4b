"""Launches that arrive together share one look at their flow's files (Api.look), and a
look still sees every edit made before the requests that share it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.api.context import Api
from engine.lint import FileResult
from engine.store.sqlite import SqliteStore

from .conftest import ApiProject


@pytest.fixture
def counted(project: ApiProject, tmp_path: Path) -> tuple[Api, list[Path]]:
    """An Api (its store is never opened: looks do not use it) that records each check."""
    api = Api(project.project(), SqliteStore(tmp_path / "unused.db"))
    checks: list[Path] = []
    check = api.checked_flow

    def counting(path: Path) -> FileResult:
        checks.append(path)
        return check(path)

    api.checked_flow = counting  # type: ignore[method-assign]
    return api, checks


async def test_requests_that_ask_together_share_one_look(
    project: ApiProject, counted: tuple[Api, list[Path]]
) -> None:
    api, checks = counted
    path = project.root / "flows" / "greet.yaml"
    results = await asyncio.gather(*(api.look(path) for _ in range(10)))
    assert len(checks) == 1
    assert all(result.checked is results[0].checked is not None for result in results)
    await api.look(path)  # asked after that look: a look of its own
    assert len(checks) == 2


async def test_a_look_sees_an_edit_made_after_the_last_one(
    project: ApiProject, counted: tuple[Api, list[Path]]
) -> None:
    api, _ = counted
    path = project.root / "flows" / "greet.yaml"
    assert (await api.look(path)).checked is not None
    path.write_text(path.read_text("utf-8") + "  - {id: broken, kind: nope}\n", "utf-8")
    assert (await api.look(path)).checked is None


async def test_a_cancelled_request_leaves_the_shared_look_to_the_others(
    project: ApiProject, counted: tuple[Api, list[Path]]
) -> None:
    api, checks = counted
    path = project.root / "flows" / "greet.yaml"
    first, second = (asyncio.create_task(api.look(path)) for _ in range(2))
    await asyncio.sleep(0)  # both have asked; the look has not started
    first.cancel()
    assert (await second).checked is not None
    assert first.cancelled()
    assert len(checks) == 1
