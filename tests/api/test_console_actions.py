"""Cancel and Retry from a run's page: buttons enabled only where they apply, posts that act."""

from __future__ import annotations

import re

from tests.api.conftest import LiveServer, get_run, launch, wait_status
from tests.api.console_helpers import browser, csrf_of

FORM = r'data-confirm="[^"]+">\s*<input[^>]+>\s*'
CANCEL = re.compile(FORM + r'<button type="submit" class="danger"( disabled)?>Cancel</button>')
RETRY = re.compile(FORM + r'<button type="submit"( disabled)?>Retry</button>')


def test_cancel_then_retry_from_the_run_page(server: LiveServer) -> None:
    marker = server.project.root / "marker"
    with server.client() as api, browser(server) as client:
        run_id = launch(api, "fragile", {"marker": str(marker)})
        wait_status(api, run_id, "failed")
        page = client.get(f"/runs/{run_id}").text
        cancel, retry = CANCEL.search(page), RETRY.search(page)
        assert cancel and cancel.group(1) == " disabled"  # not running
        assert retry and retry.group(1) is None  # failed: may be retried
        refused = client.post(f"/runs/{run_id}/cancel", data={"csrf_token": csrf_of(page)})
        assert refused.status_code == 409  # a finished run: a page saying why
        assert "Traceback" not in refused.text
        marker.touch()
        answer = client.post(f"/runs/{run_id}/retry", data={"csrf_token": csrf_of(page)})
        assert answer.status_code == 303 and answer.headers["location"] == f"/runs/{run_id}"
        assert wait_status(api, run_id, "completed")["steps"][1]["output"] == "marker found"

        sleepy = launch(api, "sleepy")
        page = client.get(f"/runs/{sleepy}").text
        cancel, retry = CANCEL.search(page), RETRY.search(page)
        assert cancel and cancel.group(1) is None
        assert retry and retry.group(1) == " disabled"
        answer = client.post(f"/runs/{sleepy}/cancel", data={"csrf_token": csrf_of(page)})
        assert answer.status_code == 303
        wait_status(api, sleepy, "cancelled")
        assert get_run(api, sleepy)["status"] == "cancelled"
