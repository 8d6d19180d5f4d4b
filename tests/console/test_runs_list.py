"""The runs list at ``/``: filtered by flow, status and waiting, and live (a new run and a
run's new status appear without a reload)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Locator, Page, expect

from .conftest import Console, Visitor, word

TRIAGE = """
description: Waits for someone to look.
steps:
  - {id: look, kind: approval, message: "Look at it?"}
"""

TIDY = """
description: Ends at once.
steps:
  - {id: sweep, kind: code, call: "PKG.steps:echo", with: {text: swept}}
"""

FILTER = re.compile(r"filter|apply|search|show", re.IGNORECASE)


@pytest.fixture(scope="module", autouse=True)
def flows(console: Console) -> None:
    console.flow("triage", TRIAGE)
    console.flow("tidy", TIDY)


def row(page: Page, run_id: str) -> Locator:
    """The list's entry of the run: the row or item holding a link to its page."""
    return page.locator("tr, li").filter(has=page.locator(f"a[href$='/runs/{run_id}']"))


def test_the_runs_list_filters_by_flow_status_and_waiting_and_follows_changes(
    visit: Callable[..., Visitor], console: Console
) -> None:
    waiting = console.launch("triage")
    console.wait_step(waiting, "look", "waiting")
    done = console.launch("tidy")
    console.wait_run(done, "completed")
    alice = visit("alice")

    page = alice.goto("/")
    expect(row(page, waiting)).to_contain_text("triage")
    expect(row(page, done)).to_contain_text(word("completed"), use_inner_text=True)

    page.get_by_label("flow", exact=False).fill("triage")
    page.get_by_role("button", name=FILTER).click()
    expect(page).to_have_url(re.compile(r"flow=triage"))
    expect(row(page, waiting)).to_have_count(1)
    expect(row(page, done)).to_have_count(0)

    later = console.launch("triage")  # appears in the open, filtered list
    expect(row(page, later)).to_have_count(1)
    with console.api("bob") as client:
        response = client.post(f"/v1/runs/{waiting}/steps/look/approve", json={})
    assert response.status_code == 200, response.text
    expect(row(page, waiting)).to_contain_text(word("completed"), use_inner_text=True)

    page = alice.goto("/")
    page.get_by_label("waiting", exact=False).select_option(label="yes")
    page.get_by_role("button", name=FILTER).click()
    expect(row(page, later)).to_have_count(1)
    expect(row(page, waiting)).to_have_count(0)
    expect(row(page, done)).to_have_count(0)

    page = alice.goto("/")
    page.get_by_label("status", exact=False).select_option("completed")
    page.get_by_role("button", name=FILTER).click()
    expect(row(page, waiting)).to_have_count(1)
    expect(row(page, done)).to_have_count(1)
    expect(row(page, later)).to_have_count(0)
