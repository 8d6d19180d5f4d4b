"""Signing in and out of the console when the API has tokens: no page without a
session, a wrong token refused, and the token never in a page or a URL."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from .conftest import TOKEN, Console, Visitor, marker

NOTE = """
steps:
  - {id: note, kind: agent, prompt: "Note {{ inputs.word }}"}
inputs:
  word: {type: string}
"""

REFUSED = re.compile(
    r"invalid|wrong|unknown|refused|incorrect|denied|not (one|a|valid|known)", re.I
)
"""What a refusal of the token says, in some words."""


@pytest.fixture(scope="module", autouse=True)
def flows(console: Console) -> None:
    console.flow("note", NOTE)


def asks_to_sign_in(page: Page) -> None:
    token = page.locator("input[name=token]")
    expect(token).to_be_visible()
    expect(token).to_have_attribute("type", "password")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)


def test_pages_need_a_session_a_wrong_token_is_refused_and_sign_out_ends_it(
    visit: Callable[..., Visitor], console: Console
) -> None:
    word = marker("word")
    run_id = console.launch("note", {"word": word})
    console.wait_run(run_id, "completed")
    visitor = visit(None)
    pages = [
        "/",
        "/inbox",
        "/flows",
        "/flows/note",
        f"/runs/{run_id}",
        f"/runs/{run_id}/steps/note",
    ]
    for path in pages:
        page = visitor.goto(path)
        asks_to_sign_in(page)
        expect(page.locator("body")).not_to_contain_text(word)

    page = visitor.goto("/")
    wrong = f"{TOKEN['alice']}x"
    page.locator("input[name=token]").fill(wrong)
    page.locator("input[name=token]").press("Enter")
    expect(page.locator("body")).to_contain_text(REFUSED)
    assert TOKEN["alice"] not in page.content()  # the typed token is not echoed back
    asks_to_sign_in(visitor.goto("/"))

    visitor.sign_in(TOKEN["alice"])
    for path in pages:
        page = visitor.goto(path)
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        expect(page.locator("input[name=token]")).to_have_count(0)
        if "runs" in path:
            expect(page.locator("body")).to_contain_text(word)
        assert all(token not in page.content() for token in TOKEN.values()), path
    assert all(token not in url for url in visitor.requests for token in TOKEN.values())
    cookies = visitor.context.cookies()
    assert cookies and all(token not in c["value"] for c in cookies for token in TOKEN.values())

    page.get_by_role("button", name="Sign out").click()
    asks_to_sign_in(page)
    for path in pages:
        asks_to_sign_in(visitor.goto(path))
    response = visitor.page.request.get(f"{console.url}/v1/runs/{run_id}")
    assert response.status == 401, response.text()
