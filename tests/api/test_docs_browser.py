"""Swagger UI and ReDoc render in Chromium from this server alone: the page shows the API's
routes, and nothing reaches another host (ReDoc's logo from cdn.redoc.ly is blocked by the
page's Content-Security-Policy before it is sent)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Request, sync_playwright

from .conftest import LiveServer

CHROMIUM = os.environ.get("FLOWRUNNER_CHROMIUM", "/usr/bin/chromium")  # as tests/console
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.parametrize("page_path", ["/docs", "/redoc"])
def test_the_api_viewers_render_offline(start_server: object, page_path: str) -> None:
    server: LiveServer = start_server()  # type: ignore[operator]  # open: no tokens
    sent: list[str] = []
    blocked: list[str] = []

    def on_failed(request: Request) -> None:
        if request.failure == "csp":
            blocked.append(request.url)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: sent.append(request.url))
            page.on("requestfailed", on_failed)
            page.goto(server.url + page_path)
            page.get_by_text("/v1/runs/{run_id}/events").first.wait_for(timeout=15_000)
        finally:
            browser.close()
    in_page = ("blob:", "data:")  # a worker or image made by the page itself
    left = [
        url
        for url in sent
        if not url.startswith(in_page)
        and urlsplit(url).hostname != "127.0.0.1"
        and url not in blocked
    ]
    assert sent and not left, left
