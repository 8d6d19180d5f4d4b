"""The web console in a real browser: Chromium, driven by Playwright's sync API, against
a real ``flowrunner serve`` on a loopback port with a real SQLite file.

The only fake is at the model boundary: the ``openai`` backend talks to
:class:`~tests.fakes.chat_server.ChatServer` on loopback, which answers each prompt
by the first rule (:meth:`Model.on`) whose marker the prompt contains, and can hold
a reply half-streamed (:meth:`Model.hold`) until the test releases it.

One ``serve`` (with a tokens file: alice, bob, lead) and one chat server per test
process (so one per xdist worker); tests do not interfere because each launches
runs of its own, with markers of its own. The browser is per module: Playwright's
sync API leaves its event loop set as the thread's running loop after every call,
so an asyncio test, or any ``asyncio.run``, that pytest runs later in the same
process would fail with "cannot be called from a running event loop". A
module-scoped browser is stopped, and that loop with it, before pytest moves on
to another module's tests, serially and under ``pytest -n``.

Chromium is Debian's (``/usr/bin/chromium``, or ``FLOWRUNNER_CHROMIUM``); when it is
missing the tests fail, they are never skipped (``.ci/run`` installs it).

Every :class:`Visitor` (a browser context of one identity) records every request
and every dialog; at the end of each test every request must have gone to the
loopback address, and no dialog may have fired besides the ``confirm()`` a test
asked for with :meth:`Visitor.confirming`. Set ``FLOWRUNNER_SCREENSHOTS=1`` to write
the screenshots of ``docs/img/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Locator,
    Page,
    expect,
    sync_playwright,
)

from tests.e2e.conftest import E2EProject, wait_for
from tests.fakes.chat_server import ChatServer

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "img"

CHROMIUM = Path(os.environ.get("FLOWRUNNER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # else Chromium calls Google at start
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
HOSTLESS = frozenset({"data", "blob", "about"})
"""URL schemes that name no host (nothing leaves the browser)."""

IDENTITIES = ("alice", "bob", "lead")
TOKENS = {f"{who}-{secrets.token_hex(12)}": who for who in IDENTITIES}
"""Bearer tokens (fresh per session, so finding one in a page means it leaked)."""
TOKEN = {who: token for token, who in TOKENS.items()}

STATUS = re.compile(r"\b(pending|running|waiting|completed|failed|cancelled|skipped|excluded)\b")

CODE = '''
import asyncio
from pathlib import Path


def echo(ctx, text):
    return text


def line(ctx, head, size, tail):
    """One line of ``size`` characters between ``head`` and ``tail``."""
    return head + "x" * int(size) + tail


async def hold(ctx, marker):
    """Wait (cancellably) until the file ``marker`` exists."""
    while not Path(marker).exists():
        await asyncio.sleep(0.05)
    return "found " + Path(marker).name
'''

expect.set_options(timeout=10_000)


def marker(prefix: str = "m") -> str:
    """A word no other test uses (to tell runs and prompts apart)."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class Model:
    """The chat server behind the ``openai`` backend: each prompt is answered by the first
    rule whose marker it contains, else ``ok``."""

    def __init__(self) -> None:
        self.rules: dict[str, Callable[[str], str | Iterable[str]]] = {}
        self.released: list[threading.Event] = []
        self.server = ChatServer(self.reply)

    def reply(self, prompt: str) -> str | Iterable[str]:
        for key, rule in list(self.rules.items()):
            if key in prompt:
                return rule(prompt)
        return "ok"

    def on(self, key: str, reply: str) -> None:
        """Answer prompts containing ``key`` with ``reply``."""
        self.rules[key] = lambda prompt: reply

    def hold(self, key: str, end: str) -> threading.Event:
        """Answer prompts containing ``key`` with a stream that goes on (``piece-1 piece-2
        ...``, one every 50 ms, for a minute at most) until the returned event is set, then
        ends with ``end``."""
        release = threading.Event()
        self.released.append(release)

        def stream(prompt: str) -> Iterator[str]:
            for count in range(1, 1200):
                if release.wait(0.05):
                    break
                yield f"piece-{count} "
            yield end

        self.rules[key] = stream
        return release


@dataclass
class Console:
    """A ``flowrunner serve`` and its project; the API, for what the test checks behind
    the browser's back."""

    project: E2EProject
    url: str

    def flow(self, name: str, body: str) -> None:
        """``flows/NAME.yaml`` (``PKG`` in ``body`` names the code package)."""
        self.project.flow(name, body.replace("PKG", self.project.package))

    def api(self, who: str = "lead") -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKEN[who]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=20)

    def launch(self, flow: str, inputs: dict[str, Any] | None = None, who: str = "lead") -> str:
        with self.api(who) as client:
            response = client.post(f"/v1/flows/{flow}/runs", json={"inputs": inputs or {}})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def run(self, run_id: str) -> dict[str, Any]:
        with self.api() as client:
            response = client.get(f"/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    def step(self, run_id: str, step_id: str) -> dict[str, Any]:
        return next(s for s in self.run(run_id)["steps"] if s["id"] == step_id)

    def wait_step(self, run_id: str, step_id: str, status: str) -> dict[str, Any]:
        return wait_for(
            lambda: (step := self.step(run_id, step_id))["status"] == status and step,
            20,
            f"step {step_id} of run {run_id} to be {status}",
            detail=lambda: json.dumps(self.run(run_id), indent=1)[-3000:],
        )

    def wait_run(self, run_id: str, status: str) -> dict[str, Any]:
        return wait_for(
            lambda: (run := self.run(run_id))["status"] == status and run,
            20,
            f"run {run_id} to be {status}",
            detail=lambda: json.dumps(self.run(run_id), indent=1)[-3000:],
        )


@dataclass
class Visitor:
    """A browser context of one identity: its pages share a session."""

    console: Console
    context: BrowserContext
    who: str | None
    requests: list[str] = field(default_factory=list)
    """The URL of every request any of its pages made."""
    dialogs: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    confirms: int = 0
    """``confirm()`` dialogs still to accept (:meth:`confirming`)."""

    def __post_init__(self) -> None:
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.context.on("dialog", self._dialog)
        self.context.on("weberror", lambda error: self.errors.append(str(error.error)))
        self.page = self.context.new_page()

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append((dialog.type, dialog.message))
        if dialog.type == "confirm" and self.confirms > 0:
            self.confirms -= 1
            dialog.accept()
        else:
            dialog.dismiss()

    @contextlib.contextmanager
    def confirming(self) -> Iterator[None]:
        """Accept the one ``confirm()`` the block causes (and insist it came)."""
        before = len(self.dialogs)
        self.confirms += 1
        yield
        wait_for(lambda: len(self.dialogs) > before, 10, "a confirm() dialog")
        assert self.dialogs[before][0] == "confirm", self.dialogs

    def goto(self, path: str, page: Page | None = None) -> Page:
        page = page or self.page
        page.goto(self.console.url + path)
        return page

    def sign_in(self, token: str | None = None) -> None:
        """Through the sign-in form, with ``token`` (by default the identity's own)."""
        page = self.goto("/signin")
        page.locator("input[name=token]").fill(token or TOKEN[str(self.who)])
        page.locator("input[name=token]").press("Enter")
        expect(page).not_to_have_url(re.compile(r"/signin"))

    def foreign_requests(self) -> list[str]:
        """Requests whose host is not the loopback address."""
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme not in HOSTLESS and urlsplit(url).hostname not in LOOPBACK
        ]

    def check(self) -> None:
        """What holds after every test: nothing left loopback, no unasked dialog."""
        assert self.foreign_requests() == [], self.foreign_requests()
        unasked = [d for d in self.dialogs if d[0] != "confirm"]
        assert unasked == [], f"dialogs fired: {unasked}"
        assert self.errors == [], f"uncaught errors in the console's script: {self.errors}"


RUN_PAGE = re.compile(r"/runs/([A-Za-z0-9_-]+)/?$")
"""The URL of a run's page; its group is the run id."""


def word(text: str) -> re.Pattern[str]:
    """``text`` as a whole word: ``failed`` matches "failed", not "unfailed"."""
    return re.compile(rf"\b{re.escape(text)}\b")


def node(page: Page, step_id: str) -> Locator:
    """The run page's graph node of ``step_id``: the innermost element of an inline SVG
    holding an SVG ``text`` that starts with the step id and one that shows a status."""
    label = page.locator("text", has_text=re.compile(rf"^\s*{re.escape(step_id)}\b"))
    shown = page.locator("text", has_text=STATUS)
    return page.locator("svg *").filter(has=label).filter(has=shown).last


def expect_status(page: Page, step_id: str, status: str) -> None:
    """The node of ``step_id`` shows ``status`` as visible text (a tooltip is not enough)."""
    expect(node(page, step_id).locator("text", has_text=word(status)).first).to_be_visible()


def screenshot(page: Page, name: str) -> None:
    """``docs/img/NAME.png``, only with ``FLOWRUNNER_SCREENSHOTS=1`` (the tree stays clean)."""
    if os.environ.get("FLOWRUNNER_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="session")
def model() -> Iterator[Model]:
    made = Model()
    with made.server:
        yield made
        for release in made.released:
            release.set()


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory, model: Model) -> Iterator[Console]:
    """``flowrunner serve`` with the tokens of :data:`TOKENS`, the ``openai`` backend on
    :class:`Model`, and the code of :data:`CODE` (``PKG.steps``)."""
    root = tmp_path_factory.mktemp("console") / "project"
    project = E2EProject(root, f"console_steps_{uuid.uuid4().hex[:8]}")
    project.code(CODE)
    project.write("tokens.json", json.dumps(TOKENS))
    try:
        _, url = project.serve(
            FLOWRUNNER_AGENT_BACKEND="openai",
            FLOWRUNNER_OPENAI_BASE_URL=model.server.url,
            FLOWRUNNER_API_TOKENS_FILE="tokens.json",
        )
        yield Console(project, url)
    finally:
        project.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install it (apt-get install -y chromium) or set "
            "FLOWRUNNER_CHROMIUM; the console's browser tests are never skipped"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def visit(browser: Browser, console: Console) -> Iterator[Callable[..., Visitor]]:
    """``visit("alice")``: a new browser context signed in as alice (``visit(None)``: not
    signed in). Each is checked (:meth:`Visitor.check`) and closed after the test."""
    made: list[Visitor] = []

    def open_visitor(who: str | None = "alice") -> Visitor:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        context.set_default_timeout(10_000)
        visitor = Visitor(console, context, who)
        made.append(visitor)
        if who is not None:
            visitor.sign_in()
        return visitor

    yield open_visitor
    try:
        for visitor in made:
            visitor.check()
    finally:
        for visitor in made:
            visitor.context.close()
