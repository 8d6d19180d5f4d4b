"""Helpers of the console's HTTP tests: sign in as a browser would, read forms back."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.api.conftest import LiveServer

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)
STYLE_ATTRIBUTE = re.compile(r"<[^>]+\sstyle\s*=", re.IGNORECASE)


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no csrf_token field in the page"
    return found.group(1)


@contextmanager
def browser(server: LiveServer, token: str | None = "tok-alice") -> Iterator[httpx.Client]:
    """A client with no bearer token, signed in with ``token`` through the sign-in form
    (not signed in when ``token`` is None or the server has no tokens)."""
    with httpx.Client(base_url=server.url, timeout=20) as client:
        if token is not None and server.tokens:
            form = client.get("/signin")
            assert form.status_code == 200, form.text
            answer = client.post(
                "/signin", data={"token": token, "csrf_token": csrf_of(form.text), "next": "/"}
            )
            assert answer.status_code == 303, answer.text
        yield client


def post_form(client: httpx.Client, page: str, action: str, data: dict[str, str]) -> httpx.Response:
    """Post ``data`` to ``action`` with the CSRF token read from ``page``."""
    token = csrf_of(client.get(page).text)
    return client.post(action, data={"csrf_token": token, **data})


def assert_safe_page(response: httpx.Response) -> None:
    """An HTML page with the console's CSP and no inline script, handler or style."""
    assert response.headers["content-type"].startswith("text/html"), response.headers
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp, csp
    assert "unsafe-inline" not in csp
    html = response.text
    assert not INLINE_SCRIPT.search(html), INLINE_SCRIPT.search(html)
    assert not INLINE_HANDLER.search(html), INLINE_HANDLER.search(html)
    assert not STYLE_ATTRIBUTE.search(html), STYLE_ATTRIBUTE.search(html)
    assert "Traceback" not in html
