"""The filters of ``GET /v1/runs`` that take one of a few values refuse any other with a
422 naming the filter, instead of answering an empty page as if no run matched."""

from __future__ import annotations

import httpx
import pytest

from .conftest import assert_error, launch, wait_status


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"status": "bogus"}, "status"),
        ({"status": "Completed"}, "status"),
        ({"status": ""}, "status"),
        ({"status": "waiting"}, "status"),  # a step status, not a run status
        ({"waiting": "maybe"}, "waiting"),
        ({"flow": "greet", "status": "done"}, "status"),
    ],
)
def test_an_unknown_filter_value_is_422(
    client: httpx.Client, params: dict[str, str], name: str
) -> None:
    run_id = launch(client, "greet", {"name": "Ann"})
    assert wait_status(client, run_id)["status"] == "completed"
    details = assert_error(client.get("/v1/runs", params=params), 422, "invalid_request")
    assert details[0]["location"] == ["query", name], details
    assert name in client.get("/v1/runs", params=params).json()["error"]["message"]


def test_every_run_status_is_a_filter(client: httpx.Client) -> None:
    run_id = launch(client, "greet", {"name": "Ann"})
    assert wait_status(client, run_id)["status"] == "completed"
    for status in ("running", "completed", "failed", "cancelled"):
        response = client.get("/v1/runs", params={"status": status})
        assert response.status_code == 200, response.text
        found = [run["id"] for run in response.json()["runs"]]
        assert found == ([run_id] if status == "completed" else []), status
