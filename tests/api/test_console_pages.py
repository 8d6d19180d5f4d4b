"""Every console page answers with HTML under a strict CSP, and shows what the store holds."""

from __future__ import annotations

import re

from tests.api.conftest import ApiProject, LiveServer, launch, wait_status, wait_step
from tests.api.console_helpers import assert_safe_page, browser


def test_every_page_answers_under_the_csp_without_inline_script(server: LiveServer) -> None:
    with server.client() as api, browser(server) as client:
        done = launch(api, "greet", {"name": "Ada"})
        gated = launch(api, "gate")
        wait_status(api, done, "completed")
        wait_step(api, gated, "review", "waiting")
        pages = [
            "/",
            "/?status=completed&flow=greet",
            "/?waiting=true",
            f"/runs/{done}",
            f"/runs/{done}/steps/hello",
            f"/runs/{gated}/steps/review",
            "/inbox",
            "/flows",
            "/flows/greet",
            "/flows/gate",
        ]
        for path in pages:
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text)
            assert_safe_page(response)
        script = client.get("/static/console.js")
        assert script.status_code == 200 and "EventSource" in script.text
        assert client.get("/static/console.css").status_code == 200


def test_a_run_page_draws_its_graph_with_status_as_text(server: LiveServer) -> None:
    with server.client() as api, browser(server) as client:
        gated = launch(api, "gate")
        wait_step(api, gated, "review", "waiting")
        html = client.get(f"/runs/{gated}").text
    # one node per step, linking to its page, with kind by shape and status as class and text
    nodes = re.findall(r'<a href="/runs/[^"]+/steps/(\w+)" class="node kind-(\w+) st-(\w+)"', html)
    assert nodes == [
        ("draft", "agent", "completed"),
        ("review", "approval", "waiting"),
        ("publish", "agent", "pending"),
    ]
    assert "<title>review (approval): waiting</title>" in html
    assert re.search(r'<polygon points="[^"]+"/>', html)  # the gate is not a rectangle
    assert html.count('marker-end="url(#arrow)"') == 2  # draft -> review -> publish
    assert '<button type="submit" class="danger">Cancel</button>' in html  # running
    assert re.search(r"<button type=\"submit\" disabled>Retry</button>", html)


def test_the_runs_list_filters_and_pages(server: LiveServer) -> None:
    with server.client() as api, browser(server) as client:
        greeted = [launch(api, "greet", {"name": f"n{i}"}) for i in range(3)]
        gated = launch(api, "gate")
        for run_id in greeted:
            wait_status(api, run_id, "completed")
        wait_step(api, gated, "review", "waiting")
        everything = client.get("/").text
        assert [gated, *reversed(greeted)] == re.findall(r'<a href="/runs/(\w+)">', everything)
        waiting = client.get("/?waiting=true").text
        assert re.findall(r'<a href="/runs/(\w+)">', waiting) == [gated]
        by_flow = client.get("/?flow=greet&status=completed").text
        assert set(re.findall(r'<a href="/runs/(\w+)">', by_flow)) == set(greeted)
        bad = client.get("/?status=sideways")
        assert bad.status_code == 422 and "status" in bad.text
        assert_safe_page(bad)


def test_an_unknown_run_is_a_404_page_not_json(server: LiveServer) -> None:
    with browser(server) as client:
        response = client.get("/runs/nope")
    assert response.status_code == 404
    assert_safe_page(response)
    assert "no run" in response.text.lower() or "nope" in response.text


def test_the_flow_page_shows_diagnostics_with_the_source_line(server: LiveServer) -> None:
    project_flows = server.project.flows_dir
    (project_flows / "broken.yaml").write_text(
        "version: 1\nname: broken\nsteps:\n  - {id: a, kind: agent, prompt: hi, needs: [zz]}\n",
        "utf-8",
    )
    with browser(server) as client:
        listing = client.get("/flows").text
        assert "broken" in listing and "1 error" in listing
        response = client.get("/flows/broken")
    assert response.status_code == 200
    assert_safe_page(response)
    assert re.search(r"broken\.yaml:4:\d+", response.text)
    assert "{id: a, kind: agent, prompt: hi, needs: [zz]}" in response.text
    assert "cannot be drawn or launched" in response.text


def test_the_launch_form_opens_the_new_run(server: LiveServer) -> None:
    with browser(server) as client:
        page = client.get("/flows/greet").text
        for name in ("name", "count", "tone", "band", "model"):
            assert f'name="{name}"' in page, name
        assert '<option value="deep">deep</option>' in page
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token
        form = {"csrf_token": token.group(1), "name": "Ada", "count": "3", "tone": "dry"}
        answer = client.post("/flows/greet", data={**form, "band": "deep"})
        assert answer.status_code == 303, answer.text
        run_id = answer.headers["location"].removeprefix("/runs/")
    with server.client() as api:
        run = wait_status(api, run_id, "completed")
    assert run["inputs"] == {"name": "Ada", "count": 3, "tone": "dry"}
    assert run["band"] == "deep"
    assert run["launched_by"] == "alice"


def test_a_bad_launch_input_is_shown_beside_its_field(server: LiveServer) -> None:
    with browser(server) as client:
        page = client.get("/flows/greet").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token
        answer = client.post(
            "/flows/greet", data={"csrf_token": token.group(1), "name": "", "count": "many"}
        )
    assert answer.status_code == 422
    html = answer.text
    assert re.search(r'id="e-count" role="alert">expected a whole number', html)
    assert 'value="many"' in html  # what was typed is kept
    with server.client() as api:
        assert api.get("/v1/runs").json()["runs"] == []


def test_a_code_step_page_shows_its_arguments_as_rendered(
    project: ApiProject, server: LiveServer
) -> None:
    project.flow(
        "wrapped",
        """
        inputs:
          who: {type: string}
        steps:
          - id: nap
            kind: code
            call: "PKG.steps:pause"
            with: {seconds: 0, label: "{{ inputs.who }} napped"}
        """,
    )
    with server.client() as api, browser(server) as client:
        run_id = launch(api, "wrapped", {"who": "Ada"})
        wait_status(api, run_id, "completed")
        html = client.get(f"/runs/{run_id}/steps/nap").text
    assert "Arguments (as rendered for its last attempt)" in html
    assert "Ada napped" in html and "inputs.who" not in html
