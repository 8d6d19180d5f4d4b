"""Every state-changing post of the console needs the session's CSRF token."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import LiveServer, get_run, launch, wait_status, wait_step
from tests.api.console_helpers import assert_safe_page, browser, csrf_of


@pytest.mark.parametrize("sent", [None, "", "forged-token"])
def test_a_post_without_the_right_token_changes_nothing(
    server: LiveServer, sent: str | None
) -> None:
    with server.client() as api, browser(server) as client:
        sleepy = launch(api, "sleepy")
        gated = launch(api, "gate")
        failed = launch(api, "fragile", {"marker": "/nonexistent/marker"})
        wait_step(api, gated, "review", "waiting")
        wait_status(api, failed, "failed")
        extra = {} if sent is None else {"csrf_token": sent}
        posts = [
            (f"/runs/{sleepy}/cancel", {}),
            (f"/runs/{failed}/retry", {}),
            (f"/runs/{gated}/steps/review", {"decision": "approve", "audience": "team"}),
            ("/flows/greet", {"name": "Ada"}),
            ("/signout", {}),
        ]
        for action, data in posts:
            answer = client.post(action, data={**data, **extra})
            assert answer.status_code == 403, (action, answer.status_code)
            assert_safe_page(answer)
            assert "CSRF" in answer.text
        assert get_run(api, sleepy)["status"] == "running"
        assert get_run(api, failed)["status"] == "failed"
        assert get_run(api, gated)["steps"][1]["status"] == "waiting"
        assert len(api.get("/v1/runs").json()["runs"]) == 3
        assert client.get("/").status_code == 200  # still signed in


def test_another_sessions_token_is_refused(server: LiveServer) -> None:
    with (
        server.client() as api,
        browser(server, "tok-alice") as alice,
        browser(server, "tok-bob") as bob,
    ):
        run_id = launch(api, "sleepy")
        bobs = csrf_of(bob.get("/").text)
        answer = alice.post(f"/runs/{run_id}/cancel", data={"csrf_token": bobs})
        assert answer.status_code == 403
        assert get_run(api, run_id)["status"] == "running"
        mine = csrf_of(alice.get("/").text)
        assert alice.post(f"/runs/{run_id}/cancel", data={"csrf_token": mine}).status_code == 303
        wait_status(api, run_id, "cancelled")


def test_a_cross_site_post_without_the_cookie_goes_to_sign_in(server: LiveServer) -> None:
    with server.client() as api, httpx.Client(base_url=server.url, timeout=20) as stranger:
        run_id = launch(api, "sleepy")
        answer = stranger.post(f"/runs/{run_id}/cancel", data={"csrf_token": "x"})
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/signin")
        assert get_run(api, run_id)["status"] == "running"
