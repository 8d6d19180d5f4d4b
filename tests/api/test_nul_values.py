"""A NUL character in a value a request sends is a client error on both stores, never a
503 ``store_unavailable`` (PostgreSQL refuses NUL in text; SQLite stores it)."""

from __future__ import annotations

from .conftest import LiveServer


def test_a_nul_in_a_request_is_never_a_store_outage(any_store_server: LiveServer) -> None:
    with any_store_server.client("tok-alice") as client:
        answers = [
            client.get("/v1/runs/r%00x"),
            client.get("/v1/runs", params={"flow": "a\x00b"}),
            client.post("/v1/flows/greet/runs", json={"inputs": {"name": "A\x00n"}}),
        ]
        assert client.get("/healthz").status_code == 200
    for response in answers:
        assert response.status_code < 500, (response.request.url, response.text)
        if response.status_code >= 400:
            assert response.json()["error"]["code"] != "store_unavailable"
