"""Event ids a client sends back (``?after=``, ``Last-Event-ID``) are checked against the
stores' integer range (64-bit signed) before any store sees them: one past it is a 422 in the
API's error shape, on SQLite and on PostgreSQL, as JSON and as an event stream; the largest id
in range is an empty answer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .conftest import LiveServer, assert_error, launch, wait_status

LARGEST = 2**63 - 1
BEYOND = [2**63, 10**30]


@pytest.fixture
def finished(any_store_server: LiveServer) -> Iterator[tuple[httpx.Client, str]]:
    """Alice's client of a server on each store, and a run of hers that has ended."""
    with any_store_server.client("tok-alice") as client:
        run_id = launch(client, "greet", {"name": "Ann"})
        assert wait_status(client, run_id)["status"] == "completed"
        yield client, run_id


@pytest.mark.parametrize("after", BEYOND)
def test_after_beyond_the_store_range_is_422(
    finished: tuple[httpx.Client, str], after: int
) -> None:
    client, run_id = finished
    for accept in ("application/json", "text/event-stream"):
        response = client.get(
            f"/v1/runs/{run_id}/events", params={"after": after}, headers={"Accept": accept}
        )
        details = assert_error(response, 422, "invalid_request")
        assert details[0]["location"] == ["query", "after"], details
    # the largest id in range is simply past every event
    response = client.get(f"/v1/runs/{run_id}/events", params={"after": LARGEST})
    assert response.status_code == 200 and response.json() == {"events": []}
    assert client.get(f"/v1/runs/{run_id}/events").json()["events"]  # still served


@pytest.mark.parametrize("last", [*(str(n) for n in BEYOND), "-1", "abc", "\u00b2", "1.5"])
def test_a_last_event_id_that_is_no_event_id_is_422(
    finished: tuple[httpx.Client, str], last: str
) -> None:
    client, run_id = finished
    headers = {"Accept": b"text/event-stream", "Last-Event-ID": last.encode()}
    response = client.get(f"/v1/runs/{run_id}/events", headers=headers)
    details = assert_error(response, 422, "invalid_request")
    assert details[0]["location"] == ["header", "last-event-id"], details


def test_the_largest_last_event_id_streams_only_the_end_frame(
    finished: tuple[httpx.Client, str],
) -> None:
    client, run_id = finished
    headers = {"Accept": "text/event-stream", "Last-Event-ID": str(LARGEST)}
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200
        text = response.read().decode()
    assert "event: end" in text and "event: run_" not in text, text
