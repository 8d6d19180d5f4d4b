"""The HTTP API over a real loopback socket: auth, flows, lint, runs, approvals, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.cli.serve import is_loopback
from engine.schema import render as render_schema

from .conftest import (
    FLOWRUNNER,
    MODELINE,
    ApiProject,
    LiveServer,
    assert_error,
    get_run,
    launch,
    step_statuses,
    stored_events,
    wait_for,
    wait_status,
    wait_step,
)

BROKEN = """
steps:
  - {id: a, kind: agent, prompt: "Hi {{ steps.zzz.output }}"}
  - {id: b, kind: agent, needs: [missing], prompt: "x"}
  - {id: c, kind: code, call: "nomodule.x:fn"}
  - {id: e, kind: agent, needs: [e2], prompt: "x"}
  - {id: e2, kind: agent, needs: [e], prompt: "x"}
"""

NO_PATHS = """
steps:
  - {id: a, kind: agent, prompt: "Hi {{ steps.zzz.output }}"}
  - {id: b, kind: agent, needs: [missing], prompt: "x"}
  - {id: e, kind: agent, needs: [e2], prompt: "x", persona: nobody}
  - {id: e2, kind: agent, needs: [e], prompt: "x"}
"""

UNKNOWN_KEY = """
steps:
  - {id: a, kind: agent, prompt: "x", colour: red}
"""

SYNTAX_ERROR = "version: 1\nname: syntax\nsteps:\n  - {id: a, kind: agent\n  prompt: [\n"


def cli(project: ApiProject, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [str(FLOWRUNNER), "--project", str(project.root), *args],
        cwd=project.root,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def without_path(diagnostics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in d.items() if k != "path"} for d in diagnostics]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# Auth


def test_healthz_is_open_and_every_v1_route_needs_a_known_bearer_token(
    server: LiveServer,
) -> None:
    routes = [
        ("GET", "/v1/flows"),
        ("GET", "/v1/flows/greet"),
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/nope"),
        ("GET", "/v1/runs/nope/events"),
        ("GET", "/v1/schema"),
        ("POST", "/v1/lint"),
        ("POST", "/v1/flows/greet/runs"),
        ("POST", "/v1/runs/nope/cancel"),
        ("POST", "/v1/runs/nope/retry"),
        ("POST", "/v1/runs/nope/steps/review/approve"),
        ("POST", "/v1/runs/nope/steps/review/reject"),
    ]
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer"},
        {"Authorization": "tok-alice"},
        {"Authorization": "Basic tok-alice"},
        {"Authorization": "Bearer tok-alice-but-longer"},
    ]
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        response = anonymous.get("/healthz")
        assert response.status_code == 200 and response.json() == {"ok": True}
        for method, path in routes:
            for headers in bad_headers:
                # an unauthenticated request learns nothing: not even that its body is bad
                response = anonymous.request(method, path, headers=headers, content=b"{not json")
                assert_error(response, 401, "unauthorized")
                assert response.headers["www-authenticate"] == "Bearer"
        for token in ("tok-alice", "tok-bob", "tok-lead"):
            response = anonymous.get("/v1/flows", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200
            response = anonymous.get("/v1/flows", headers={"Authorization": f"bearer {token}"})
            assert response.status_code == 200


def test_without_tokens_the_api_is_open_and_decisions_are_anonymous(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server()
    with server.client() as client:
        assert client.get("/healthz").json() == {"ok": True}
        assert client.get("/v1/flows").status_code == 200
        run_id = launch(client, "leadgate")
        assert get_run(client, run_id)["launched_by"] == "anonymous"
        wait_step(client, run_id, "review", "waiting")
        # anonymous is not lead
        assert_error(client.post(f"/v1/runs/{run_id}/steps/review/approve", json={}), 403)


def test_identity_comes_from_the_token(server: LiveServer) -> None:
    with server.client("tok-bob") as bob:
        run_id = launch(bob, "greet", {"name": "Ann"})
        assert get_run(bob, run_id)["launched_by"] == "bob"


def test_serve_refuses_a_public_host_without_a_token(project: ApiProject) -> None:
    port = free_port()
    result = cli(project, "serve", "--host", "0.0.0.0", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "flowrunner: refusing to listen on 0.0.0.0 without FLOWRUNNER_API_TOKEN (or a tokens file)"
    )
    assert "Traceback" not in result.stderr + result.stdout
    with socket.socket() as probe:  # and it never listened
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    for host in ("::", "192.0.2.10", "example.invalid", "10.0.0.1"):
        assert not is_loopback(host), host
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host), host


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"FLOWRUNNER_DATABASE_URL": "mysql://db/x"}, "FLOWRUNNER_DATABASE_URL"),
        ({"FLOWRUNNER_AGENT_BACKEND": "scripted"}, "replies"),
    ],
    ids=["database-url", "scripted-without-replies"],
)
def test_serve_with_a_bad_configuration_says_so_in_one_line(
    project: ApiProject, env: dict[str, str], words: str
) -> None:
    result = cli(project, "serve", "--port", str(free_port()), env=env)
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("flowrunner: ") and words in line


SERVE_ENV = {
    "FLOWRUNNER_AGENT_BACKEND": "scripted",
    "FLOWRUNNER_SCRIPTED_REPLIES": "replies.json",
    "FLOWRUNNER_POLL_SECONDS": "0.05",
    "FLOWRUNNER_API_TOKEN": "s3cret",
}


@pytest.fixture
def serve(project: ApiProject) -> Iterator[Callable[..., tuple[str, subprocess.Popen[bytes]]]]:
    """Start ``flowrunner serve`` as a subprocess with a token and the scripted backend."""
    (project.root / "replies.json").write_text(
        json.dumps({"replies": [{"match": "Greet", "reply": "Hi!"}, {"reply": "ok"}]})
    )
    processes: list[subprocess.Popen[bytes]] = []
    log = (project.root / "serve.log").open("wb")

    def start(*extra: str) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        process = subprocess.Popen(
            [str(FLOWRUNNER), "--project", str(project.root), "serve", "--port", str(port), *extra],
            cwd=project.root,
            env={**os.environ, **SERVE_ENV},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, (project.root / "serve.log").read_text()
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 20, "serve to answer /healthz")
        return url, process

    try:
        yield start
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        log.close()


def serve_log(project: ApiProject) -> str:
    return (project.root / "serve.log").read_text(errors="replace")[-4000:]


def test_the_serve_command_serves_the_api_and_a_worker(
    serve: Callable[..., tuple[str, subprocess.Popen[bytes]]], project: ApiProject
) -> None:
    # a run stored before the server starts: serve takes it over
    detached = cli(
        project, "run", "greet", "--detach", "--json", "--input", "name=Early", env=SERVE_ENV
    )
    assert detached.returncode == 0, detached.stderr
    early = json.loads(detached.stdout)["id"]
    url, process = serve()
    try:
        serve_round_trip(url, process, early)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- serve.log:\n{serve_log(project)}") from None
    assert "/v1/runs" not in serve_log(project)  # no access log unless asked for


def test_serve_logs_each_request_with_access_log(
    serve: Callable[..., tuple[str, subprocess.Popen[bytes]]], project: ApiProject
) -> None:
    url, process = serve("--no-worker", "--access-log")
    headers = {"Authorization": "Bearer s3cret"}
    with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
        launch(client, "greet", {"name": "Al"})
    process.send_signal(signal.SIGINT)
    process.wait(10)
    assert '"POST /v1/flows/greet/runs HTTP/1.1" 201' in serve_log(project)


def serve_round_trip(url: str, process: subprocess.Popen[bytes], early: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as anonymous:
        assert anonymous.get("/healthz").json() == {"ok": True}
        assert_error(anonymous.get("/v1/runs"), 401, "unauthorized")
    with httpx.Client(base_url=url, timeout=10, headers={"Authorization": "Bearer s3cret"}) as c:
        assert [run["id"] for run in c.get("/v1/runs").json()["runs"]] == [early]
        assert wait_status(c, early)["status"] == "completed"  # taken over at start
        run_id = launch(c, "greet", {"name": "Bo"})
        run = wait_status(c, run_id)
        assert run["status"] == "completed", run
        assert run["launched_by"] == "api"
        assert [s["output"] for s in run["steps"]] == ["Hi!", "ok"]
    process.send_signal(signal.SIGINT)
    # 130 at times: uvicorn raises the signal again once it has shut down (see below)
    assert process.wait(10) in (0, 130)


def test_sigterm_lets_the_worker_finish_its_running_step_before_serve_exits(
    serve: Callable[..., tuple[str, subprocess.Popen[bytes]]], project: ApiProject
) -> None:
    project.flow(
        "nap",
        """
        steps:
          - {id: nap, kind: code, call: "PKG.steps:pause", with: {seconds: 1, label: nap}}
        """,
    )
    url, process = serve()
    headers = {"Authorization": "Bearer s3cret"}
    with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
        run_id = launch(client, "nap")
        wait_step(client, run_id, "nap", "running")
    process.send_signal(signal.SIGTERM)
    code = process.wait(15)
    db = sqlite3.connect(project.root / ".flowrunner" / "flowrunner.db")
    try:
        ((status, owner),) = db.execute(
            "SELECT status, lease_owner FROM steps WHERE run_id = ?", (run_id,)
        ).fetchall()
    finally:
        db.close()
    assert (code, status, owner) == (0, "completed", None), serve_log(project)


# Flows


def test_list_flows_shows_every_flow_with_its_lint_status(
    project: ApiProject, client: httpx.Client
) -> None:
    project.flow("broken", BROKEN)
    (project.root / "flows" / "syntax.yaml").write_text(SYNTAX_ERROR)
    response = client.get("/v1/flows")
    assert response.status_code == 200
    flows = {f["file"]: f for f in response.json()["flows"]}
    assert set(flows) == {
        f"{name}.yaml"
        for name in ("greet", "gate", "leadgate", "selfgate", "sleepy", "fragile", "broken")
    } | {"syntax.yaml"}
    assert flows["greet.yaml"] == {
        "name": "greet",
        "file": "greet.yaml",
        "description": "Greets someone.",
        "valid": True,
        "errors": 0,
        "warnings": 0,
    }
    assert flows["broken.yaml"]["valid"] is False
    assert flows["broken.yaml"]["errors"] == 4
    assert flows["syntax.yaml"]["valid"] is False
    assert flows["syntax.yaml"]["errors"] == 1
    assert all(
        f["valid"] for name, f in flows.items() if name not in ("broken.yaml", "syntax.yaml")
    )


def test_one_flow_has_its_definition_inputs_steps_and_graph(client: httpx.Client) -> None:
    response = client.get("/v1/flows/greet")
    assert response.status_code == 200
    flow = response.json()
    assert flow["name"] == "greet"
    assert flow["description"] == "Greets someone."
    assert flow["bands"] == ["quick", "deep"]
    assert flow["inputs"] == {
        "name": {"type": "string", "description": "Who to greet."},
        "count": {"type": "integer", "default": 1},
        "tone": {"type": "string", "enum": ["warm", "dry"], "default": "warm"},
    }
    assert [(s["id"], s["kind"], s["needs"]) for s in flow["steps"]] == [
        ("hello", "agent", []),
        ("shout", "agent", ["hello"]),
    ]
    assert flow["graph"] == [["hello", "shout"]]
    definition = flow["definition"]
    assert definition["version"] == 1 and definition["name"] == "greet"
    assert [s["id"] for s in definition["steps"]] == ["hello", "shout"]
    assert definition["steps"][0]["prompt"] == "Greet {{ inputs.name }}"

    gate = client.get("/v1/flows/gate").json()
    assert gate["graph"] == [["draft", "review"], ["review", "publish"]]
    code = client.get("/v1/flows/sleepy").json()
    assert code["definition"]["steps"][0]["with"] == {"seconds": 30, "label": "nap"}


def test_unknown_and_broken_flows(project: ApiProject, client: httpx.Client) -> None:
    project.flow("broken", BROKEN)
    for name in ("nope", "%2e%2e%2fgreet", "..%2Fflows%2Fgreet", "greet.yaml", "GREET"):
        assert_error(client.get(f"/v1/flows/{name}"), 404, "not_found")
        assert_error(client.post(f"/v1/flows/{name}/runs", json={}), 404, "not_found")
    details = assert_error(client.get("/v1/flows/broken"), 422, "invalid_flow")
    assert {d["rule"] for d in details} == {"FR004", "FR005", "FR007", "FR011"}
    assert_error(client.post("/v1/flows/broken/runs", json={}), 422, "invalid_flow")
    assert client.get("/v1/runs").json()["runs"] == []


def test_a_flow_is_found_at_the_top_of_flows_first_then_in_subfolders(
    project: ApiProject, client: httpx.Client
) -> None:
    team = project.root / "flows" / "archive"
    team.mkdir()
    nested = project.flow("nested", "steps:\n  - {id: only, kind: agent, prompt: Draft}\n")
    nested.rename(team / "nested.yaml")
    (team / "greet.yml").write_text(
        "version: 1\nname: greet\nsteps:\n  - {id: other, kind: agent, prompt: Draft}\n"
    )
    assert [s["id"] for s in client.get("/v1/flows/nested").json()["steps"]] == ["only"]
    wait_status(client, launch(client, "nested"))
    # flows/greet.yaml, not flows/archive/greet.yml (which sorts first in a search of flows/)
    assert [s["id"] for s in client.get("/v1/flows/greet").json()["steps"]] == ["hello", "shout"]


def test_schema(client: httpx.Client) -> None:
    response = client.get("/v1/schema")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/schema+json")
    assert response.text == render_schema()
    assert json.loads(response.text)["title"]


# Lint


def lint_api(
    client: httpx.Client, body: bytes, content_type: str = "application/yaml"
) -> list[dict[str, Any]]:
    """The diagnostics of ``POST /v1/lint`` for ``body``, checked and without ``path``."""
    response = client.post("/v1/lint", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    found = response.json()
    assert found["files"] == ["request.yaml"]
    assert all(d["path"] == "request.yaml" for d in found["diagnostics"])
    for d in found["diagnostics"]:
        assert isinstance(d["line"], int) and d["line"] >= 1
        assert isinstance(d["column"], int) and d["column"] >= 1
        assert d["rule"].startswith("FR") and isinstance(d["pointer"], str)
        assert d["severity"] in ("error", "warning") and d["message"]
    return without_path(found["diagnostics"])


LINTED = {
    "semantic": (MODELINE + "version: 1\nname: semantic\n" + NO_PATHS, {"FR004", "FR005", "FR007"}),
    "schema": (MODELINE + "version: 1\nname: schema\n" + UNKNOWN_KEY, {"FR002"}),
    "syntax": (SYNTAX_ERROR, {"FR001"}),
}


def test_lint_gives_the_diagnostics_of_the_cli(project: ApiProject, client: httpx.Client) -> None:
    folder = project.root / "linted"
    folder.mkdir()
    for name, (text, _) in LINTED.items():
        (folder / f"{name}.yaml").write_text(text, "utf-8")
    result = cli(project, "lint", "--format", "json", str(folder))
    assert result.returncode == 1, result.stderr
    by_file: dict[str, list[dict[str, Any]]] = {}
    for diagnostic in json.loads(result.stdout)["diagnostics"]:
        by_file.setdefault(Path(diagnostic["path"]).stem, []).append(diagnostic)
    for name, (text, rules) in LINTED.items():
        expected = without_path(by_file[name])
        assert rules <= {d["rule"] for d in expected}, expected
        for content_type in ("application/yaml", "text/plain"):
            found = lint_api(client, text.encode(), content_type)
            assert found == expected, (name, content_type)


def test_lint_of_an_unresolvable_call_matches_the_cli_and_names_no_server_path(
    project: ApiProject, client: httpx.Client
) -> None:
    path = project.flow("broken", BROKEN)
    result = cli(project, "lint", "--format", "json", str(path))
    expected = without_path(json.loads(result.stdout)["diagnostics"])
    found = lint_api(client, path.read_bytes())
    assert "FR011" in {d["rule"] for d in found}
    assert not any(str(project.root) in d["message"] for d in found), found
    assert found == expected


def test_a_flow_that_lints_clean_launches_and_runs(
    project: ApiProject, client: httpx.Client
) -> None:
    text = """\
# yaml-language-server: $schema=../schema.json
version: 1
name: fresh
inputs:
  who: {type: string, default: you}
steps:
  - {id: hello, kind: agent, prompt: "Greet {{ inputs.who }}"}
  - id: wait
    kind: code
    needs: [hello]
    call: "PKG.steps:pause"
    with: {seconds: 0, label: "{{ steps.hello.output }}"}
""".replace("PKG", project.pkg)
    response = client.post("/v1/lint", content=text, headers={"content-type": "application/yaml"})
    assert response.status_code == 200
    assert [d for d in response.json()["diagnostics"] if d["severity"] == "error"] == []
    (project.root / "flows" / "fresh.yaml").write_text(text)
    run = wait_status(client, launch(client, "fresh"))
    assert run["status"] == "completed", run
    assert run["steps"][1]["output"] == "Hello there, friend after 0s"


@pytest.mark.parametrize(
    "body",
    [b"", b"\xff\xfe\x00garbage", b"[1, 2", b"- a\n- b\n", b"null", b"{{ 7 * 7 }}", b"\x00" * 100],
)
def test_lint_of_anything_is_a_report_never_a_crash(client: httpx.Client, body: bytes) -> None:
    response = client.post("/v1/lint", content=body)
    assert response.status_code == 200, response.text
    diagnostics = response.json()["diagnostics"]
    assert [d for d in diagnostics if d["severity"] == "error"], diagnostics
    assert "Traceback" not in response.text


# Launching


def test_launch_returns_the_new_run(client: httpx.Client) -> None:
    response = client.post("/v1/flows/greet/runs", json={"inputs": {"name": "Ann"}})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "created"} and body["created"] is True
    run = wait_status(client, body["id"])
    assert run["status"] == "completed"
    assert run["inputs"] == {"name": "Ann", "count": 1, "tone": "warm"}
    assert (run["band"], run["model"], run["launched_by"]) == ("quick", "qwen3", "alice")
    response = client.post(
        "/v1/flows/greet/runs",
        json={"inputs": {"name": "Bo", "count": 3, "tone": "dry"}, "band": "deep", "model": "m2"},
    )
    run = get_run(client, response.json()["id"])
    assert (run["band"], run["model"]) == ("deep", "m2")
    assert run["inputs"] == {"name": "Bo", "count": 3, "tone": "dry"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"inputs": {}}, "name"),
        ({"inputs": {"name": 3}}, "name"),
        ({"inputs": {"name": None}}, "name"),
        ({"inputs": {"name": "a", "count": "three"}}, "count"),
        ({"inputs": {"name": "a", "count": 1.5}}, "count"),
        ({"inputs": {"name": "a", "count": True}}, "count"),
        ({"inputs": {"name": "a", "tone": "loud"}}, "tone"),
        ({"inputs": {"name": "a", "colour": "red"}}, "colour"),
        ({"inputs": {"name": "a"}, "band": "huge"}, "band"),
    ],
)
def test_inputs_that_do_not_match_the_spec_are_422_with_the_field(
    client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    details = assert_error(client.post("/v1/flows/greet/runs", json=body), 422, "invalid_input")
    assert set(details) == {field}, details
    assert client.get("/v1/runs").json()["runs"] == []


@pytest.mark.parametrize(
    ("content", "location"),
    [
        (b'{"inputs": {"name": "a"', ["body", 23]),
        (b"not json at all", ["body", 0]),
        (b'{"inputs": [1, 2]}', ["body", "inputs"]),
        (b'{"inputs": {"name": "a"}, "launched_by": "mallory"}', ["body", "launched_by"]),
        (b'{"inputs": {}, "band": 7}', ["body", "band"]),
        (b"[]", ["body"]),
        (b'"text"', ["body"]),
    ],
)
def test_malformed_json_and_bad_bodies_are_422(
    client: httpx.Client, content: bytes, location: list[Any]
) -> None:
    response = client.post(
        "/v1/flows/greet/runs", content=content, headers={"content-type": "application/json"}
    )
    details = assert_error(response, 422, "invalid_request")
    assert details[0]["location"] == location, details
    assert client.get("/v1/runs").json()["runs"] == []


def test_an_over_long_idempotency_key_is_422(client: httpx.Client) -> None:
    response = client.post(
        "/v1/flows/greet/runs",
        json={"inputs": {"name": "a"}},
        headers={"Idempotency-Key": "k" * 201},
    )
    details = assert_error(response, 422, "invalid_request")
    assert details[0]["location"] == ["header", "idempotency-key"]


def test_a_body_nested_too_deep_to_parse_is_400_in_the_error_shape(
    client: httpx.Client,
) -> None:
    body = '{"inputs": ' + "[" * 5000 + "]" * 5000 + "}"
    response = client.post(
        "/v1/flows/greet/runs", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "bad_request")
    assert client.get("/v1/runs").json()["runs"] == []


def chunked(*parts: bytes) -> Iterator[bytes]:
    """A body sent without a Content-Length (chunked transfer encoding)."""
    yield from parts


JSON = {"content-type": "application/json"}


def test_bodies_over_the_limit_are_413(start_server: Callable[..., LiveServer]) -> None:
    server = start_server(tokens={"t": "alice"}, max_body=2048)
    with server.client("t") as client:
        big = {"inputs": {"name": "x" * 3000}}
        assert_error(client.post("/v1/flows/greet/runs", json=big), 413, "too_large")
        assert_error(client.post("/v1/lint", content=b"#" * 2049), 413, "too_large")
        # without a Content-Length, the app counts what it receives
        response = client.post("/v1/lint", content=chunked(b"#" * 1500, b"#" * 1500))
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "too_large")
        assert client.get("/v1/runs").json()["runs"] == []
        # at the limit exactly: accepted, and a chunked body under it too
        assert client.post("/v1/lint", content=b"#" * 2048).status_code == 200
        assert client.post("/v1/lint", content=chunked(b"#" * 1024, b"#" * 1024)).status_code == 200
        small = chunked(b'{"inputs": ', b'{"name": "small"}}')
        response = client.post("/v1/flows/greet/runs", content=small, headers=JSON)
        assert response.status_code == 201, response.text
        assert get_run(client, response.json()["id"])["inputs"]["name"] == "small"


@pytest.mark.parametrize("path", ["/v1/flows/greet/runs", "/v1/runs/x/steps/review/approve"])
def test_a_chunked_json_body_over_the_limit_is_413(
    start_server: Callable[..., LiveServer], path: str
) -> None:
    server = start_server(tokens={"t": "alice"}, max_body=2048)
    with server.client("t") as client:
        body = chunked(b'{"inputs": {"name": "', b"x" * 1500, b"x" * 1500, b'"}}')
        response = client.post(path, content=body, headers=JSON)
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "too_large")


def test_the_default_body_limit_is_one_mebibyte(client: httpx.Client) -> None:
    limit = 1024 * 1024
    assert_error(client.post("/v1/lint", content=b"#" * (limit + 1)), 413, "too_large")
    assert client.post("/v1/lint", content=b"#" * limit).status_code == 200


# Listing and reading runs


def test_list_runs_filters_and_pages(project: ApiProject, client: httpx.Client) -> None:
    greets = [launch(client, "greet", {"name": f"n{i}"}) for i in range(3)]
    gates = [launch(client, "gate") for _ in range(2)]
    failing = launch(client, "fragile", {"marker": str(project.root / "absent")})
    for run_id in greets:
        assert wait_status(client, run_id)["status"] == "completed"
    for run_id in gates:
        wait_step(client, run_id, "review", "waiting")
    assert wait_status(client, failing)["status"] == "failed"
    everything = greets + gates + [failing]

    def ids(**params: Any) -> list[str]:
        response = client.get("/v1/runs", params=params)
        assert response.status_code == 200, response.text
        return [run["id"] for run in response.json()["runs"]]

    newest_first = list(reversed(everything))
    assert ids() == newest_first
    assert ids(flow="greet") == list(reversed(greets))
    assert ids(flow="nope") == []
    assert ids(status="completed") == list(reversed(greets))
    assert ids(status="running") == list(reversed(gates))
    assert ids(status="failed") == [failing]
    assert ids(waiting="true") == list(reversed(gates))
    assert ids(waiting="false") == [r for r in newest_first if r not in gates]
    assert ids(flow="gate", waiting="false") == []
    assert ids(flow="greet", status="failed") == []
    summary = client.get("/v1/runs", params={"flow": "fragile"}).json()["runs"][0]
    assert set(summary) == {
        "id", "flow", "status", "band", "model", "created_at", "finished_at", "error",
    }  # fmt: skip
    assert summary["error"] and summary["finished_at"] >= summary["created_at"]

    walks: list[tuple[int, dict[str, str]]] = [(1, {}), (2, {}), (4, {}), (6, {})]
    for limit, params in [*walks, (1, {"flow": "greet"})]:
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            query: dict[str, Any] = {**params, "limit": limit}
            if cursor:
                query["cursor"] = cursor
            page = client.get("/v1/runs", params=query).json()
            assert len(page["runs"]) <= limit
            seen += [run["id"] for run in page["runs"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert pages < 20
        assert seen == ids(**params), (limit, params)

    bad: list[dict[str, Any]] = [{"cursor": "!!"}, {"limit": 0}, {"limit": 501}, {"limit": "x"}]
    for params in bad:
        assert_error(client.get("/v1/runs", params=params), 422)
    assert_error(client.get("/v1/runs", params={"waiting": "maybe"}), 422, "invalid_request")


def test_one_run_has_the_documented_shape(client: httpx.Client) -> None:
    run_id = launch(client, "greet", {"name": "Ann"})
    run = wait_status(client, run_id)
    for key in (
        "id", "flow", "status", "band", "model", "inputs", "report", "error",
        "created_at", "updated_at", "steps", "launched_by", "finished_at",
    ):  # fmt: skip
        assert key in run, key
    assert run["id"] == run_id and run["flow"] == "greet" and run["status"] == "completed"
    assert run["report"] == "## shout\n\ndone" and run["error"] is None
    assert [s["id"] for s in run["steps"]] == ["hello", "shout"]  # DAG order
    for step in run["steps"]:
        for key in ("id", "kind", "status", "attempts", "output", "fields", "data", "error"):
            assert key in step, key
        assert (step["kind"], step["status"], step["attempts"]) == ("agent", "completed", 1)
    assert run["steps"][0]["output"] == "Hello there, friend"
    assert_error(client.get("/v1/runs/nope"), 404, "not_found")
    assert_error(client.get("/v1/runs/nope/events"), 404, "not_found")


# Cancel and retry


def test_cancel_a_running_run_then_again_is_409(client: httpx.Client) -> None:
    run_id = launch(client, "sleepy")
    wait_step(client, run_id, "nap", "running")
    started = time.monotonic()
    response = client.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled" and response.json()["id"] == run_id
    run = get_run(client, run_id)
    assert run["status"] == "cancelled"
    assert step_statuses(run) == {"nap": "cancelled"}
    assert time.monotonic() - started < 5
    details = assert_error(client.post(f"/v1/runs/{run_id}/cancel"), 409, "conflict")
    assert details is None
    assert "run_cancelled" in [e["event"] for e in stored_events(client, run_id)]
    assert_error(client.post("/v1/runs/nope/cancel"), 404, "not_found")
    done = launch(client, "greet", {"name": "Ann"})
    wait_status(client, done)
    assert_error(client.post(f"/v1/runs/{done}/cancel"), 409, "conflict")
    assert get_run(client, done)["status"] == "completed"


def test_retry_a_failed_run(project: ApiProject, client: httpx.Client) -> None:
    marker = project.root / "marker"
    run_id = launch(client, "fragile", {"marker": str(marker)})
    run = wait_status(client, run_id)
    assert run["status"] == "failed", run
    assert step_statuses(run) == {"first": "completed", "check": "failed"}
    assert "marker missing" in run["steps"][1]["error"]
    assert_error(client.post(f"/v1/runs/{run_id}/cancel"), 409, "conflict")
    marker.touch()
    response = client.post(f"/v1/runs/{run_id}/retry")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "running"
    run = wait_status(client, run_id)
    assert run["status"] == "completed", run
    first, check = run["steps"]
    assert first["attempts"] == 1  # settled steps keep their results
    assert check["output"] == "marker found" and check["attempts"] == 2
    assert "run_retried" in [e["event"] for e in stored_events(client, run_id)]
    assert_error(client.post(f"/v1/runs/{run_id}/retry"), 409, "conflict")
    assert_error(client.post("/v1/runs/nope/retry"), 404, "not_found")


# Approvals


def decide(client: httpx.Client, run_id: str, verb: str, **body: Any) -> httpx.Response:
    return client.post(f"/v1/runs/{run_id}/steps/review/{verb}", json=body)


def decisions(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    return [e for e in stored_events(client, run_id) if e["event"] == "gate_decided"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {}}, "audience"),
        ({"payload": {"audience": "everyone"}}, "audience"),
        ({"payload": {"audience": 3}}, "audience"),
        ({"payload": {"audience": "team", "size": "big"}}, "size"),
        ({"payload": {"audience": "team", "extra": 1}}, "extra"),
    ],
)
def test_a_payload_is_checked_against_the_form_and_the_gate_keeps_waiting(
    client: httpx.Client, server: LiveServer, body: dict[str, Any], field: str
) -> None:
    run_id = launch(client, "gate")
    wait_step(client, run_id, "review", "waiting")
    with server.client("tok-bob") as bob:
        details = assert_error(decide(bob, run_id, "approve", **body), 422, "invalid_input")
        assert set(details) == {field}, details
        run = get_run(bob, run_id)
        assert step_statuses(run)["review"] == "waiting" and run["status"] == "running"
        assert decisions(bob, run_id) == []
        # a good payload is then accepted; defaults fill the rest
        response = decide(bob, run_id, "approve", comment="ok", payload={"audience": "public"})
        assert response.status_code == 200, response.text
        assert response.json()["data"]["payload"] == {"audience": "public", "size": 1}


def test_approve_records_the_identity_of_the_token_and_a_second_decision_is_409(
    client: httpx.Client, server: LiveServer
) -> None:
    run_id = launch(client, "gate")
    wait_step(client, run_id, "review", "waiting")
    with server.client("tok-bob") as bob:
        # the identity comes from the token, never from the body
        forged = decide(bob, run_id, "approve", payload={"audience": "team"}, by="mallory")
        assert_error(forged, 422, "invalid_request")
        assert_error(decide(bob, run_id, "approve", comment="x" * 10_001), 422)
        response = decide(bob, run_id, "approve", comment="ship it", payload={"audience": "team"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == "review" and body["status"] == "completed"
        data = body["data"]
        assert (data["approved"], data["by"], data["comment"]) == (True, "bob", "ship it")
        assert data["payload"] == {"audience": "team", "size": 1}
        for verb in ("approve", "reject"):
            for who in (bob, client):
                again = decide(who, run_id, verb, payload={"audience": "team"})
                assert_error(again, 409, "conflict")
        run = wait_status(bob, run_id)
        assert run["status"] == "completed"
        review = {s["id"]: s for s in run["steps"]}["review"]
        assert review["data"]["by"] == "bob" and review["data"]["approved"] is True
        (decided,) = decisions(bob, run_id)
        assert decided["payload"]["by"] == "bob" and decided["step_id"] == "review"


def test_reject_fails_the_run(client: httpx.Client, server: LiveServer) -> None:
    run_id = launch(client, "gate")
    wait_step(client, run_id, "review", "waiting")
    with server.client("tok-lead") as lead:
        # a rejection carries no payload to check
        response = decide(lead, run_id, "reject", comment="not yet", payload={"junk": 1})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "failed"
        assert response.json()["data"]["by"] == "lead"
        assert response.json()["data"]["approved"] is False
    run = wait_status(client, run_id)
    assert run["status"] == "failed" and "not yet" in run["error"]
    assert_error(decide(client, run_id, "approve", payload={"audience": "team"}), 409)


def test_decisions_on_steps_that_are_not_waiting_gates(client: httpx.Client) -> None:
    run_id = launch(client, "gate")
    wait_step(client, run_id, "review", "waiting")
    for verb in ("approve", "reject"):
        assert_error(client.post(f"/v1/runs/{run_id}/steps/draft/{verb}", json={}), 409)
        assert_error(client.post(f"/v1/runs/{run_id}/steps/nope/{verb}", json={}), 404)
        assert_error(client.post(f"/v1/runs/nope/steps/review/{verb}", json={}), 404)
        # decisions only by POST
        assert_error(client.get(f"/v1/runs/{run_id}/steps/review/{verb}"), 405)
    run_id = launch(client, "greet", {"name": "x"})
    assert_error(client.post(f"/v1/runs/{run_id}/steps/hello/approve", json={}), 409)


def test_only_listed_approvers_may_decide(client: httpx.Client, server: LiveServer) -> None:
    run_id = launch(client, "leadgate")
    wait_step(client, run_id, "review", "waiting")
    with server.client("tok-bob") as bob:
        for verb in ("approve", "reject"):
            for who in (client, bob):
                assert_error(decide(who, run_id, verb), 403, "not_allowed")
        assert step_statuses(get_run(bob, run_id))["review"] == "waiting"
        assert decisions(bob, run_id) == []
    with server.client("tok-lead") as lead:
        response = decide(lead, run_id, "approve")
        assert response.status_code == 200, response.text
        assert response.json()["data"]["by"] == "lead"
    assert wait_status(client, run_id)["status"] == "completed"


def test_prevent_self_approval(client: httpx.Client, server: LiveServer) -> None:
    run_id = launch(client, "selfgate")  # launched by alice
    wait_step(client, run_id, "review", "waiting")
    for verb in ("approve", "reject"):
        assert_error(decide(client, run_id, verb), 403, "not_allowed")
    assert step_statuses(get_run(client, run_id))["review"] == "waiting"
    with server.client("tok-bob") as bob:
        response = decide(bob, run_id, "approve")
        assert response.status_code == 200, response.text
        assert response.json()["data"]["by"] == "bob"


# Errors


def test_unknown_routes_and_wrong_methods_have_the_error_shape(client: httpx.Client) -> None:
    for path in ("/nope", "/v1", "/v1/nope", "/v1/runs/x/y/z", "/v2/flows"):
        assert_error(client.get(path), 404, "not_found")
    for method, path in [
        ("DELETE", "/v1/runs/x"),
        ("PUT", "/v1/flows"),
        ("POST", "/v1/runs"),
        ("GET", "/v1/lint"),
        ("PATCH", "/v1/flows/greet"),
        ("GET", "/v1/runs/x/cancel"),
        ("POST", "/healthz"),
    ]:
        response = client.request(method, path)
        assert_error(response, 405, "method_not_allowed")


def test_bad_requests_never_give_a_500(client: httpx.Client) -> None:
    run_id = launch(client, "greet", {"name": "x"})
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/v1/runs/{run_id}/events", {"params": {"after": "-1"}}),
        ("GET", f"/v1/runs/{run_id}/events", {"params": {"after": "abc"}}),
        ("GET", f"/v1/runs/{run_id}/events", {"params": {"after": "1e99"}}),
        ("GET", "/v1/runs", {"params": {"cursor": "bm90fGE="}}),
        ("GET", "/v1/runs", {"params": {"cursor": "\u00e9\u00e9"}}),
        ("GET", "/v1/runs", {"params": {"limit": "99999999999999999999"}}),
        ("POST", "/v1/flows/greet/runs", {"content": b"\xff\xfe", "headers": JSON}),
        ("POST", "/v1/flows/greet/runs", {"content": b"{}", "headers": {"content-type": "text/x"}}),
        ("POST", "/v1/flows/greet/runs", {"content": b"[" * 5000 + b"]" * 5000, "headers": JSON}),
        ("POST", f"/v1/runs/{run_id}/steps/hello/approve", {"content": b"nope"}),
        ("POST", f"/v1/runs/{run_id}/steps/review/approve", {"json": {"payload": [1]}}),
        ("GET", "/v1/flows/" + "a" * 5000, {}),
        ("GET", "/v1/runs/" + "%00", {}),
    ]  # fmt: skip
    for method, path, options in requests:
        response = client.request(method, path, **options)
        assert 400 <= response.status_code < 500, (
            method,
            path,
            response.status_code,
            response.text,
        )
        assert_error(response, response.status_code)
    assert client.get("/healthz").status_code == 200


# Nothing a request sends is rendered, imported or trusted


def test_request_text_is_never_rendered_or_executed(
    project: ApiProject, client: httpx.Client
) -> None:
    project.flow(
        "echo",
        """
        inputs:
          text: {type: string}
        steps:
          - id: say
            kind: code
            call: "PKG.steps:pause"
            with: {seconds: 0, label: "{{ inputs.text }}"}
        """,
    )
    for text in ("{{ 7 * 7 }}", "{% for x in range(3) %}x{% endfor %}", "{{ ''.__class__ }}"):
        run = wait_status(client, launch(client, "echo", {"text": text}))
        assert run["status"] == "completed", run
        assert run["steps"][0]["output"] == f"{text} after 0s"
    marker = project.root / "pwned"
    body = f'version: 1\nname: x\nsteps: !!python/object/apply:os.system ["touch {marker}"]\n'
    response = client.post("/v1/lint", content=body)
    assert response.status_code == 200
    assert [d["rule"] for d in response.json()["diagnostics"]] == ["FR001"]
    assert not marker.exists()
    # a billion laughs is refused at once, not expanded
    laughs = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    previous = "a"
    for level in range(1, 9):
        laughs += f"l{level}: &l{level} [" + ",".join([f"*{previous}"] * 9) + "]\n"
        previous = f"l{level}"
    started = time.monotonic()
    response = client.post("/v1/lint", content=laughs)
    assert response.status_code == 200
    assert "expands to more than" in response.json()["diagnostics"][0]["message"]
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "content",
    [
        b'{"inputs": {"name": "\\ud800"}}',
        b'{"inputs": {"name": "a"}, "model": "\\udfff"}',
        b'{"inputs": {"name": "a"}, "band": "\\udfff"}',
    ],
    ids=["input", "model", "band"],
)
def test_a_lone_surrogate_in_a_launch_is_422_not_500(server: LiveServer, content: bytes) -> None:
    with server.client() as client:  # a fresh connection: a 500 may close it
        response = client.post(
            "/v1/flows/greet/runs", content=content, headers={"content-type": "application/json"}
        )
        assert_error(response, 422)
        assert client.get("/v1/runs").json()["runs"] == []


def test_a_lone_surrogate_in_a_decision_is_422(client: httpx.Client) -> None:
    run_id = launch(client, "gate")
    wait_step(client, run_id, "review", "waiting")
    for body in (
        b'{"payload": {"audience": "\\ud800"}}',
        b'{"payload": {"audience": "team", "\\udfff": 1}}',
        b'{"comment": "\\ud800"}',
    ):
        for verb in ("approve", "reject"):
            response = client.post(
                f"/v1/runs/{run_id}/steps/review/{verb}", content=body, headers=JSON
            )
            assert_error(response, 422)
    assert step_statuses(get_run(client, run_id))["review"] == "waiting"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_not_accepted_as_inputs(
    project: ApiProject, client: httpx.Client, literal: str
) -> None:
    project.flow(
        "num",
        """
        inputs:
          x: {type: number}
        steps:
          - {id: hello, kind: agent, prompt: "Greet {{ inputs.x }}"}
        """,
    )
    response = client.post(
        "/v1/flows/num/runs",
        content=f'{{"inputs": {{"x": {literal}}}}}'.encode(),
        headers={"content-type": "application/json"},
    )
    details = assert_error(response, 422)
    assert "x" in json.dumps(details)


SNAPSHOT_OF_RUN = (
    "SELECT s.body FROM runs r JOIN snapshots s ON s.hash = r.snapshot_hash WHERE r.id = ?"
)


def test_each_launch_snapshots_the_personas_as_they_are_then(
    project: ApiProject, start_server: Callable[..., LiveServer]
) -> None:
    persona = project.root / "personas" / "helper.md"
    persona.write_text("first\n", "utf-8")
    project.flow("ask", "steps:\n  - {id: ask, kind: agent, persona: helper, prompt: hi}\n")
    server = start_server()
    texts = ["second, longer\n", "third, longer!\n"]  # the last edit keeps the size
    with server.client() as client:
        run_ids = [launch(client, "ask")]
        for text in texts:
            time.sleep(0.05)  # an edit comes after a launch, not within the same clock tick
            persona.write_text(text, "utf-8")
            run_ids += [launch(client, "ask"), launch(client, "ask")]
    with sqlite3.connect(project.root / ".flowrunner" / "api.db") as db:
        personas = [
            json.loads(db.execute(SNAPSHOT_OF_RUN, (r,)).fetchone()[0])["personas"]["helper"]
            for r in run_ids
        ]
    assert personas == ["first\n", texts[0], texts[0], texts[1], texts[1]]
