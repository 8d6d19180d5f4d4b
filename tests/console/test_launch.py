"""Launching a flow from its form on ``/flows/{name}``, and watching the run live: the
graph's nodes change status and an agent's reply streams into its step's page."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import wait_for

from .conftest import RUN_PAGE, Console, Model, Visitor, expect_status, marker, node

STORY = """
description: Writes a short story.
inputs:
  topic: {type: string, description: What the story is about.}
  length: {type: integer, default: 3, description: How many paragraphs.}
steps:
  - {id: outline, kind: agent, prompt: "Outline a story about {{ inputs.topic }}"}
  - id: write
    kind: agent
    needs: [outline]
    prompt: "Write {{ inputs.length }} paragraphs on {{ inputs.topic }}: {{ steps.outline.output }}"
"""

PIECE = re.compile(r"piece-(\d+)")
"""A piece of a reply the model is still streaming (:meth:`Model.hold`)."""

LAUNCH = re.compile(r"launch|run|start", re.IGNORECASE)
"""The launch form's button (its name is not fixed)."""


@pytest.fixture(scope="module", autouse=True)
def flows(console: Console) -> None:
    console.flow("story", STORY)


def test_a_flow_is_launched_from_its_form_and_its_run_page_opens(
    visit: Callable[..., Visitor], console: Console
) -> None:
    topic = marker("topic")
    alice = visit("alice")
    page = alice.goto("/flows/story")
    page.get_by_label("topic").fill(topic)
    page.get_by_label("length").fill("5")
    page.get_by_role("button", name=LAUNCH).click()

    expect(page).to_have_url(RUN_PAGE)
    found = RUN_PAGE.search(page.url)
    assert found is not None
    run = console.run(found.group(1))
    assert (run["flow"], run["inputs"], run["launched_by"]) == (
        "story",
        {"topic": topic, "length": 5},  # typed: the integer 5, not "5"
        "alice",
    )
    expect(node(page, "outline")).to_be_visible()
    expect_status(page, "write", "completed")


def test_the_graph_and_a_streamed_reply_change_live_while_steps_run(
    visit: Callable[..., Visitor], console: Console, model: Model
) -> None:
    topic = marker("topic")
    outline = model.hold(f"about {topic}", "They lived happily.")
    write = model.hold(f"paragraphs on {topic}", "The end.")
    run_id = console.launch("story", {"topic": topic})
    alice = visit("alice")
    page = alice.goto(f"/runs/{run_id}")
    expect_status(page, "outline", "running")
    expect_status(page, "write", "pending")

    step = alice.goto(f"/runs/{run_id}/steps/outline", alice.context.new_page())
    reply = step.locator("body")
    expect(reply).to_contain_text(PIECE)
    seen = max(int(n) for n in PIECE.findall(reply.inner_text()))
    expect(reply).to_contain_text(f"piece-{seen + 3} ")  # it grows as the model streams
    assert console.step(run_id, "outline")["status"] == "running"
    outline.set()
    expect(reply).to_contain_text(re.compile(r"piece-\d+ They lived happily\."))

    expect_status(page, "outline", "completed")
    expect_status(page, "write", "running")
    write.set()
    expect_status(page, "write", "completed")
    console.wait_run(run_id, "completed")


def test_a_step_page_opened_mid_attempt_shows_the_prompt_and_the_reply_so_far(
    visit: Callable[..., Visitor], console: Console, model: Model
) -> None:
    """The prompt is stored when the attempt ends; until then it comes live, as text."""
    topic = marker("topic")
    hostile = f"{topic} <img src=x onerror=alert(7)>"
    outline = model.hold(f"about {topic}", "They lived happily.")
    run_id = console.launch("story", {"topic": hostile})
    console.wait_step(run_id, "outline", "running")
    wait_for(lambda: any(topic in p for p in model.server.prompts), 20, "the model's call")
    time.sleep(0.3)  # a few pieces streamed before the page opens
    alice = visit("alice")
    step = alice.goto(f"/runs/{run_id}/steps/outline")
    prompt = step.locator("#prompt")
    expect(prompt).to_be_visible()
    expect(prompt).to_have_text(f"Outline a story about {hostile}")
    expect(step.locator("#prompt-none")).to_be_hidden()
    expect(step.locator("#reply")).to_contain_text(re.compile(r"^piece-1 piece-2 "))
    assert step.locator("#prompt img").count() == 0
    assert console.step(run_id, "outline")["status"] == "running"
    outline.set()
    expect(step.locator("body")).to_contain_text("They lived happily.")
    console.wait_run(run_id, "completed")
