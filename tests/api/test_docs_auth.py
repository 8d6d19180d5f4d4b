"""With tokens configured, the OpenAPI document and its viewers need one like every ``/v1``
route; without tokens (loopback only) they stay open, and ``/healthz`` always is."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import FLOWRUNNER, LiveServer, assert_error

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["/openapi.json", "/docs", "/redoc"]


@pytest.mark.parametrize("path", PAGES)
def test_the_api_description_needs_a_token_when_tokens_are_configured(
    server: LiveServer, path: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "tok-alice"}):
            response = anonymous.get(path, headers=headers)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
            assert "paths" not in response.text and "swagger" not in response.text.lower()
        assert anonymous.get("/healthz").json() == {"ok": True}
    with server.client("tok-bob") as bob:
        response = bob.get(path)
        assert response.status_code == 200, response.text
        if path == "/openapi.json":
            committed = json.loads((ROOT / "docs" / "openapi.json").read_text("utf-8"))
            assert response.json() == committed
        else:
            assert response.headers["content-type"].startswith("text/html")
            assert '"/openapi.json"' in response.text or "'/openapi.json'" in response.text


@pytest.mark.parametrize("path", PAGES)
def test_without_tokens_the_api_description_is_open(
    start_server: Callable[..., LiveServer], path: str
) -> None:
    server = start_server()
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        assert anonymous.get(path).status_code == 200


def test_the_committed_document_is_still_checked_without_a_server() -> None:
    result = subprocess.run(
        [str(FLOWRUNNER), "openapi", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stdout
