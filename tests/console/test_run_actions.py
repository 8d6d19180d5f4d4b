"""Cancel and Retry on a run's page, each behind a ``confirm()``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import Console, Visitor, expect_status

CHORES = """
description: Waits for a file between two agent steps.
inputs:
  flag: {type: string, description: The file to wait for.}
steps:
  - {id: prepare, kind: agent, prompt: "Prepare {{ inputs.flag }}"}
  - id: wait
    kind: code
    needs: [prepare]
    call: "PKG.steps:hold"
    with: {marker: "{{ inputs.flag }}"}
  - {id: finish, kind: agent, needs: [wait], prompt: "Finish {{ inputs.flag }}"}
"""


@pytest.fixture(scope="module", autouse=True)
def flows(console: Console) -> None:
    console.flow("chores", CHORES)


def test_a_run_is_cancelled_then_retried_from_its_page(
    visit: Callable[..., Visitor], console: Console, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    run_id = console.launch("chores", {"flag": str(flag)})
    console.wait_step(run_id, "wait", "running")
    alice = visit("alice")
    page = alice.goto(f"/runs/{run_id}")
    cancel = page.get_by_role("button", name="Cancel", exact=True, disabled=False)
    retry = page.get_by_role("button", name="Retry", exact=True, disabled=False)
    expect_status(page, "wait", "running")
    expect(retry).to_have_count(0)  # a running run cannot be retried (no button, or disabled)

    with alice.confirming():
        cancel.click()
    console.wait_run(run_id, "cancelled")
    expect_status(page, "wait", "cancelled")
    expect(retry).to_be_visible()
    expect(cancel).to_have_count(0)

    flag.touch()
    with alice.confirming():
        retry.click()
    expect_status(page, "finish", "completed")
    expect_status(page, "wait", "completed")
    console.wait_run(run_id, "completed")
    expect(retry).to_have_count(0)
