"""Deciding approval gates through their form on ``/runs/{id}/steps/{step}``: a typed
payload a later step uses, field errors next to their field, a rejection with its
comment, and two people deciding the same gate at once."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Locator, Page, expect

from .conftest import Console, Model, Visitor, expect_status, marker, screenshot, word

RELEASE = """
description: Publishes release notes once someone approves them.
inputs:
  name: {type: string, description: The release.}
steps:
  - {id: draft, kind: agent, prompt: "Draft release notes for {{ inputs.name }}"}
  - id: review
    kind: approval
    needs: [draft]
    message: "Publish the notes for {{ inputs.name }}?"
    form:
      copies: {type: integer, description: How many to print.}
      channel: {type: string, enum: [email, web, print], default: web, description: Where.}
  - id: publish
    kind: code
    needs: [review]
    call: "PKG.steps:echo"
    with:
      text: >-
        {{ steps.review.data.payload.copies }} copies
        by {{ steps.review.data.payload.channel }}
  - id: announce
    kind: agent
    needs: [publish]
    prompt: "Announce {{ inputs.name }}: {{ steps.publish.output }}"
"""

SOFT = """
description: Goes on after a rejection, with the rejection as data.
inputs:
  name: {type: string}
steps:
  - id: review
    kind: approval
    message: "Ship {{ inputs.name }}?"
    on_reject: continue
  - id: after
    kind: code
    needs: [review]
    call: "PKG.steps:echo"
    with: {text: "approved={{ steps.review.data.approved }}"}
"""

NOT_AN_INTEGER = r"integer|number|whole|invalid|not valid|valid value"
MISSING = r"required|missing|must|empty|needed"


@pytest.fixture(scope="module", autouse=True)
def flows(console: Console) -> None:
    console.flow("release", RELEASE)
    console.flow("soft", SOFT)


def gate_page(visitor: Visitor, run_id: str) -> Page:
    page = visitor.goto(f"/runs/{run_id}/steps/review")
    expect(page.get_by_role("button", name="Approve", exact=True)).to_be_enabled()
    return page


def choose(page: Page, name: str, value: str) -> None:
    """Pick ``value`` of the enum field ``name`` (a select, or radio buttons)."""
    field = page.locator(f"[name={name}]")
    if field.first.evaluate("e => e.tagName") == "SELECT":
        field.select_option(value)
    else:
        page.locator(f"[name={name}][value={value}]").check()


def field_box(page: Page, name: str) -> Locator:
    """Where the error of the form field ``name`` belongs: the largest element around its
    input that holds no other field of the form."""
    other = f"(self::input or self::select or self::textarea) and @name!='{name}'"
    return page.locator(f"[name={name}]").locator(
        f"xpath=ancestor::*[not(.//*[{other} and not(@type='hidden')])][last()]"
    )


def added_lines(before: str, after: str) -> str:
    """The lines of ``after`` that ``before`` did not have."""
    return "\n".join(line for line in after.splitlines() if line not in before.splitlines())


def waiting_gate(
    console: Console, flow: str = "release", name: str | None = None
) -> tuple[str, str]:
    """A new run of ``flow`` (launched by lead) waiting at its gate: its name and id."""
    name = name or marker("rel")
    run_id = console.launch(flow, {"name": name})
    console.wait_step(run_id, "review", "waiting")
    return name, run_id


def test_an_approval_with_a_typed_payload_reaches_the_later_steps(
    visit: Callable[..., Visitor], console: Console, model: Model
) -> None:
    name = marker("rel")
    model.on(f"notes for {name}", "Faster launches, a web console, fewer retries.")
    model.on(f"Announce {name}", f"Release {name} is out, in print.")
    name, run_id = waiting_gate(console, name=name)
    alice = visit("alice")
    page = alice.goto("/inbox")
    page.locator(f"a[href$='/runs/{run_id}/steps/review']").first.click()
    expect(page).to_have_url(re.compile(rf"/runs/{run_id}/steps/review$"))
    expect(page.get_by_text(f"Publish the notes for {name}?", exact=True)).to_be_visible()
    expect(page.get_by_label("copies")).to_have_attribute("name", "copies")
    page.locator("[name=copies]").fill("7")
    choose(page, "channel", "print")
    page.locator("[name=comment]").fill("print them")
    screenshot(page, "console-gate")
    page.get_by_role("button", name="Approve", exact=True).click()

    run = console.wait_run(run_id, "completed")
    steps = {step["id"]: step for step in run["steps"]}
    review = steps["review"]["data"]
    assert (review["approved"], review["by"], review["comment"]) == (True, "alice", "print them")
    assert review["payload"] == {"copies": 7, "channel": "print"}
    assert steps["publish"]["output"] == "7 copies by print"
    assert f"Announce {name}: 7 copies by print" in model.server.prompts
    page = alice.goto(f"/runs/{run_id}")
    expect_status(page, "announce", "completed")
    screenshot(page, "console-run")
    page = alice.goto(f"/runs/{run_id}/steps/publish")
    expect(page.locator("body")).to_contain_text("7 copies by print")


BROWSER_REFUSES = """(input) => input.form.noValidate || input.validity.valid ? ''
  : input.validationMessage"""
"""The message with which the browser itself refuses the form for this field (constraint
validation, shown at the field), or ''."""


@pytest.mark.parametrize(
    ("copies", "problem"), [("2.5", NOT_AN_INTEGER), ("", MISSING)], ids=["fraction", "missing"]
)
def test_a_bad_payload_is_shown_next_to_its_field_and_the_gate_keeps_waiting(
    visit: Callable[..., Visitor], console: Console, copies: str, problem: str
) -> None:
    _, run_id = waiting_gate(console)
    page = gate_page(visit("bob"), run_id)
    field = page.locator("[name=copies]")
    field.fill(copies)
    refused = field.evaluate(BROWSER_REFUSES)
    if refused:  # the browser keeps the form, its message is at the field
        page.get_by_role("button", name="Approve", exact=True).click()
        assert re.search(problem, refused, re.IGNORECASE), refused
        expect(field).to_have_value(copies)
    else:
        console_shows_the_error(page, problem)
    assert console.step(run_id, "review")["status"] == "waiting"
    expect(page.get_by_role("button", name="Approve", exact=True)).to_be_enabled()


def test_a_bad_payload_the_browser_lets_through_is_refused_next_to_its_field(
    visit: Callable[..., Visitor], console: Console
) -> None:
    """As an older browser would send it: the console's own check, not the browser's."""
    _, run_id = waiting_gate(console)
    page = gate_page(visit("bob"), run_id)
    page.locator("[name=copies]").fill("2.5")
    page.locator("[name=copies]").evaluate("(input) => { input.form.noValidate = true; }")
    console_shows_the_error(page, NOT_AN_INTEGER)
    assert console.step(run_id, "review")["status"] == "waiting"
    expect(page.get_by_role("button", name="Approve", exact=True)).to_be_enabled()


def console_shows_the_error(page: Page, problem: str) -> None:
    """Approve, and see an error about ``problem`` appear next to the copies field."""
    box = field_box(page, "copies")
    before = box.inner_text()
    page.get_by_role("button", name="Approve", exact=True).click()
    expect(box).not_to_have_text(before)
    error = added_lines(before, box.inner_text())
    assert re.search(problem, error, re.IGNORECASE), f"not an error about copies: {error!r}"


def test_a_rejection_fails_the_run_and_shows_its_comment(
    visit: Callable[..., Visitor], console: Console
) -> None:
    _, run_id = waiting_gate(console)
    comment = f"not this week {marker('why')}"
    alice = visit("alice")
    page = gate_page(alice, run_id)
    page.locator("[name=comment]").fill(comment)
    page.get_by_role("button", name="Reject", exact=True).click()

    console.wait_run(run_id, "failed")
    data = console.step(run_id, "review")["data"]
    assert (data["approved"], data["by"], data["comment"]) == (False, "alice", comment)
    page = alice.goto(f"/runs/{run_id}")
    expect_status(page, "review", "failed")
    after = console.step(run_id, "publish")["status"]
    assert after != "completed"
    expect_status(page, "publish", after)
    page = alice.goto(f"/runs/{run_id}/steps/review")
    expect(page.locator("body")).to_contain_text(comment)


def test_a_rejection_under_on_reject_continue_lets_the_run_go_on(
    visit: Callable[..., Visitor], console: Console
) -> None:
    _, run_id = waiting_gate(console, "soft")
    comment = f"no, but go on {marker('why')}"
    alice = visit("alice")
    page = gate_page(alice, run_id)
    page.locator("[name=comment]").fill(comment)
    page.get_by_role("button", name="Reject", exact=True).click()

    console.wait_run(run_id, "completed")
    assert console.step(run_id, "after")["output"] == "approved=False"
    page = alice.goto(f"/runs/{run_id}")
    expect_status(page, "after", "completed")
    page = alice.goto(f"/runs/{run_id}/steps/review")
    expect(page.locator("body")).to_contain_text(comment)


def test_two_people_deciding_at_once_one_wins_and_the_other_is_told_who(
    visit: Callable[..., Visitor], console: Console
) -> None:
    _, run_id = waiting_gate(console)
    pages = {who: gate_page(visit(who), run_id) for who in ("alice", "bob")}
    for who, page in pages.items():
        page.locator("[name=copies]").fill("1" if who == "alice" else "2")
    for page in pages.values():
        page.get_by_role("button", name="Approve", exact=True).click()

    review = console.wait_step(run_id, "review", "completed")["data"]
    winner = review["by"]
    assert winner in pages and review["payload"]["copies"] == (1 if winner == "alice" else 2)
    (loser,) = set(pages) - {winner}
    told = pages[loser].locator("body")
    expect(told).to_contain_text(word(winner))
    expect(told).to_contain_text(re.compile(r"already|decided|approved", re.IGNORECASE))
