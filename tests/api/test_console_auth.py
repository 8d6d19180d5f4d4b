"""Signing in to the console: a token through a form, a signed session cookie, sign-out."""

from __future__ import annotations

import httpx

from engine.api.sessions import COOKIE
from tests.api.conftest import TOKENS, LiveServer, launch, wait_status
from tests.api.console_helpers import assert_safe_page, browser, csrf_of


def _cookie_header(response: httpx.Response) -> str:
    found = [v for v in response.headers.get_list("set-cookie") if v.startswith(COOKIE + "=")]
    assert len(found) == 1, response.headers.get_list("set-cookie")
    return found[0]


def test_pages_send_a_visitor_without_a_session_to_sign_in(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as client:
        for path in ("/", "/inbox", "/flows", "/runs/abc", "/runs/abc/steps/x"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/signin?next=%2F")
        page = client.get("/signin")
    assert page.status_code == 200
    assert_safe_page(page)
    assert '<input type="password" id="token" name="token"' in page.text


def test_sign_in_sets_a_strict_http_only_expiring_cookie(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as client:
        form = client.get("/signin?next=/flows")
        answer = client.post(
            "/signin", data={"token": "tok-bob", "csrf_token": csrf_of(form.text), "next": "/flows"}
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == "/flows"
        cookie = _cookie_header(answer).lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert "max-age=43200" in cookie  # 12 hours
        assert "secure" not in cookie  # plain HTTP on loopback
        assert "tok-bob" not in cookie
        page = client.get("/flows")
    assert page.status_code == 200
    assert "Signed in as <strong>bob</strong>" in page.text
    for token in TOKENS:
        assert token not in page.text


def test_a_wrong_token_is_refused_and_not_echoed(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as client:
        form = client.get("/signin")
        answer = client.post(
            "/signin", data={"token": "tok-guess", "csrf_token": csrf_of(form.text)}
        )
        assert answer.status_code == 401
        assert_safe_page(answer)
        assert "tok-guess" not in answer.text
        assert all(
            not v.startswith(COOKIE + "=") or "who" not in v
            for v in answer.headers.get_list("set-cookie")
        )
        assert client.get("/").status_code == 303  # still not signed in


def test_an_open_redirect_is_refused(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as client:
        form = client.get("/signin")
        answer = client.post(
            "/signin",
            data={"token": "tok-bob", "csrf_token": csrf_of(form.text), "next": "//evil.test/x"},
        )
    assert answer.headers["location"] == "/"


def test_sign_out_clears_the_cookie(server: LiveServer) -> None:
    with browser(server, "tok-alice") as client:
        page = client.get("/")
        assert page.status_code == 200
        answer = client.post("/signout", data={"csrf_token": csrf_of(page.text)})
        assert answer.status_code == 303
        cookie = _cookie_header(answer).lower()
        assert 'flowrunner_session=""' in cookie or "max-age=0" in cookie
        assert client.get("/").status_code == 303


def test_a_forged_or_tampered_cookie_is_no_session(server: LiveServer) -> None:
    with browser(server, "tok-alice") as client:
        value = client.cookies[COOKIE]
        client.cookies.set(COOKIE, value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB"))
        assert client.get("/").status_code == 303


def test_the_json_api_accepts_the_session_with_its_csrf_header(server: LiveServer) -> None:
    with server.client() as api, browser(server, "tok-alice") as client:
        run_id = launch(api, "sleepy")
        token = csrf_of(client.get("/").text)
        assert client.get(f"/v1/runs/{run_id}").status_code == 200
        refused = client.post(f"/v1/runs/{run_id}/cancel")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "not_allowed"
        wrong = client.post(f"/v1/runs/{run_id}/cancel", headers={"X-CSRF-Token": "x" + token})
        assert wrong.status_code == 403
        assert api.get(f"/v1/runs/{run_id}").json()["status"] == "running"
        done = client.post(f"/v1/runs/{run_id}/cancel", headers={"X-CSRF-Token": token})
        assert done.status_code == 200, done.text
        wait_status(api, run_id, "cancelled")


def test_without_tokens_the_console_is_open(start_server: object) -> None:
    server = start_server()  # type: ignore[operator]
    with httpx.Client(base_url=server.url, timeout=20) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert "Sign out" not in page.text
        assert client.get("/signin").status_code == 303
        cookie = _cookie_header(page).lower()  # a session all the same, for its CSRF token
        assert "httponly" in cookie and "samesite=strict" in cookie
