"""What runs show is data, never markup: hostile step outputs, a model's reply and a
Markdown report render as their literal text, a 1 MB line does not break the page;
the Content-Security-Policy forbids inline script and other origins, and no request
leaves the loopback address."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from .conftest import Console, Model, Visitor, marker

HOSTILE = """
description: Steps whose outputs are HTML and script.
inputs:
  word: {type: string}
steps:
  - {id: tag, kind: code, call: "PKG.steps:echo", with: {text: "<script>alert(1)</script>"}}
  - {id: img, kind: code, call: "PKG.steps:echo", with: {text: "<img src=x onerror=alert(2)>"}}
  - {id: chat, kind: agent, prompt: "Be hostile {{ inputs.word }}"}
  - id: wide
    kind: code
    call: "PKG.steps:line"
    with: {head: "<b>wide</b>", size: 1000000, tail: "END-OF-LINE"}
report: |
  # Hostile report

  [click me](javascript:alert(3))

  <script>alert(4)</script>

  {{ steps.img.output }}
"""

ASKING = """
description: A gate whose message, form values and comment come from people.
inputs:
  name: {type: string}
steps:
  - id: review
    kind: approval
    message: "Publish {{ inputs.name }}?"
    form:
      note: {type: string, default: none}
"""

REPLY = '<img src=x onerror=alert(5)> <a href="javascript:alert(6)">the link</a>'

SCRIPTS = """() => [...document.scripts].map((s) => ({
  src: s.src, inline: s.textContent.trim().length, type: s.type
}))"""


@pytest.fixture(scope="module")
def hostile(console: Console, model: Model) -> str:
    """A completed run of the hostile flow: its id."""
    console.flow("hostile", HOSTILE)
    word = marker("word")
    model.on(f"Be hostile {word}", REPLY)
    run_id = console.launch("hostile", {"word": word})
    console.wait_run(run_id, "completed")
    return run_id


def only_own_scripts(page: Page, origin: str) -> None:
    """Every script element is the console's own: a file of this origin, no inline code."""
    scripts = page.evaluate(SCRIPTS)
    assert scripts, "the console has a script of its own"
    for script in scripts:
        assert script["inline"] == 0, scripts
        assert urlsplit(script["src"])[:2] == urlsplit(origin)[:2], scripts


def inert(page: Page, origin: str) -> None:
    """No element the payloads could have made, and only the console's scripts."""
    only_own_scripts(page, origin)
    assert page.locator("img[src='x'], [onerror], b:text-is('wide')").count() == 0
    assert page.locator("a[href^='javascript:' i]").count() == 0


@pytest.mark.parametrize(
    ("step", "text"),
    [
        ("tag", "<script>alert(1)</script>"),
        ("img", "<img src=x onerror=alert(2)>"),
        ("chat", REPLY),
    ],
)
def test_a_hostile_output_shows_as_its_text(
    visit: Callable[..., Visitor], console: Console, hostile: str, step: str, text: str
) -> None:
    alice = visit("alice")
    page = alice.goto(f"/runs/{hostile}/steps/{step}")
    expect(page.locator("body")).to_contain_text(text)
    inert(page, console.url)
    assert alice.dialogs == []


def test_a_markdown_report_with_script_and_javascript_links_is_inert(
    visit: Callable[..., Visitor], console: Console, hostile: str
) -> None:
    alice = visit("alice")
    page = alice.goto(f"/runs/{hostile}")
    body = page.locator("body")
    expect(body).to_contain_text("Hostile report")
    expect(body).to_contain_text("click me")
    expect(body).to_contain_text("<script>alert(4)</script>")
    expect(body).to_contain_text("<img src=x onerror=alert(2)>")
    inert(page, console.url)
    page.get_by_text("click me").first.click()
    expect(page).to_have_url(re.compile(rf"/runs/{hostile}#?$"))
    assert alice.dialogs == []


def test_a_one_megabyte_line_renders_without_breaking_the_page(
    visit: Callable[..., Visitor], console: Console, hostile: str
) -> None:
    alice = visit("alice")
    page = alice.goto(f"/runs/{hostile}/steps/wide")
    contained(page, console.url)
    whole = page.get_by_role("link", name=re.compile(r"show all|full|whole", re.IGNORECASE))
    if whole.count():  # the page shows the start of it: the whole of it must be inert too
        whole.first.click()
        expect(page.locator("body")).to_contain_text("END-OF-LINE")
        contained(page, console.url)


def contained(page: Page, origin: str) -> None:
    """The wide line shows as text, inert, and does not widen the page."""
    expect(page.locator("body")).to_contain_text("<b>wide</b>xxxx")
    inert(page, origin)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 2 * 1280, f"the page is {width}px wide: the line is not contained"
    expect(page.get_by_role("button", name="Sign out")).to_be_in_viewport()


def test_inputs_a_gate_message_form_values_and_a_comment_show_as_their_text(
    visit: Callable[..., Visitor], console: Console
) -> None:
    console.flow("asking", ASKING)
    name = "<img src=x onerror=alert(7)>"
    run_id = console.launch("asking", {"name": name})
    console.wait_step(run_id, "review", "waiting")
    alice = visit("alice")
    page = alice.goto("/inbox")
    expect(page.locator(f"a[href$='/runs/{run_id}/steps/review']").first).to_be_visible()
    inert(page, console.url)
    page = alice.goto(f"/runs/{run_id}/steps/review")
    expect(page.locator("body")).to_contain_text(f"Publish {name}?")
    inert(page, console.url)
    page.locator("[name=note]").fill("<script>alert(8)</script>")
    page.locator("[name=comment]").fill("<b>no</b> <a href='javascript:alert(9)'>why</a>")
    page.get_by_role("button", name="Approve", exact=True).click()
    console.wait_run(run_id, "completed")
    page = alice.goto(f"/runs/{run_id}/steps/review")
    body = page.locator("body")
    expect(body).to_contain_text("<b>no</b> <a href='javascript:alert(9)'>why</a>")
    expect(body).to_contain_text("<script>alert(8)</script>")
    inert(page, console.url)
    assert page.locator("b:text-is('no')").count() == 0
    page = alice.goto(f"/runs/{run_id}")
    expect(page.locator("body")).to_contain_text(name)
    inert(page, console.url)
    assert alice.dialogs == []


def test_the_content_security_policy_forbids_inline_script_and_other_origins(
    visit: Callable[..., Visitor], console: Console, hostile: str
) -> None:
    alice = visit("alice")
    for path in ("/", f"/runs/{hostile}", f"/runs/{hostile}/steps/tag", "/signin"):
        response = alice.page.goto(console.url + path)
        assert response is not None
        policy = response.headers.get("content-security-policy", "")
        directives = {
            part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()
        }
        script = directives.get("script-src", directives.get("default-src"))
        assert script is not None, policy
        assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script, policy
        assert not any(re.search(r"\*|https?:|//", source) for source in script), policy
        assert directives.get("default-src") in (["'self'"], ["'none'"]), policy
    page = alice.page
    assert page.evaluate(
        """() => {
      const script = document.createElement('script');
      script.textContent = 'window.inlineRan = true';
      document.body.append(script);
      return window.inlineRan === undefined;
    }"""
    ), "an inline script ran"
    blocked = page.evaluate(
        """() => new Promise((resolve) => {
      document.addEventListener('securitypolicyviolation', (e) => resolve(e.blockedURI));
      fetch('http://example.com/beacon').catch(() => {});
      setTimeout(() => resolve(null), 5000);  // only bounds a failing test
    })"""
    )
    assert blocked == "http://example.com/beacon"  # refused by the policy, never sent


def test_no_request_leaves_the_loopback_address(
    visit: Callable[..., Visitor], console: Console, hostile: str
) -> None:
    alice = visit("alice")
    paths = [
        "/",
        "/inbox",
        "/flows",
        "/flows/hostile",
        f"/runs/{hostile}",
        f"/runs/{hostile}/steps/chat",
        f"/runs/{hostile}/steps/wide",
    ]
    for path in paths:
        page = alice.goto(path)
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    hosts = {urlsplit(url).hostname for url in alice.requests}
    assert hosts == {"127.0.0.1"}, alice.requests
    assert len(alice.requests) > len(paths), "the pages load their own script and styles"
