"""A flow file linking outside ``flows/``: listed as invalid, never read, never run."""

from __future__ import annotations

import httpx

from .conftest import ApiProject, assert_error

SECRET = "TOPSECRET-51b2"

MESSAGE = "resolves outside flows/: a flow is read only from inside that folder"


def test_a_link_out_of_flows_is_refused_unread(project: ApiProject, client: httpx.Client) -> None:
    outside = project.root.parent / "elsewhere.yaml"
    outside.write_text(
        f"version: 1\nname: evil\nsteps:\n  - {{id: a, kind: agent, prompt: {SECRET}}}\n"
    )
    (project.root / "flows" / "evil.yaml").symlink_to(outside)
    listed = client.get("/v1/flows")
    assert listed.status_code == 200
    [entry] = [flow for flow in listed.json()["flows"] if flow["file"] == "evil.yaml"]
    assert (entry["name"], entry["valid"], entry["errors"]) == ("evil", False, 1)
    for response in (client.get("/v1/flows/evil"), client.post("/v1/flows/evil/runs", json={})):
        [diagnostic] = assert_error(response, 422, "invalid_flow")
        assert (diagnostic["rule"], diagnostic["line"], diagnostic["message"]) == (
            "FR001",
            0,
            MESSAGE,
        )
        assert SECRET not in response.text
    assert SECRET not in listed.text
    assert client.get("/v1/runs").json()["runs"] == []
