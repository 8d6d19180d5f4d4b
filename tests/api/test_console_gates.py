"""A gate's page: its form generated from the flow, a decision with typed values, errors
beside their fields, and a gate decided meanwhile saying who decided it."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from tests.api.conftest import TOKENS, ApiProject, LiveServer, get_run, launch, wait_step
from tests.api.console_helpers import assert_safe_page, browser, csrf_of

TYPED = """
steps:
  - id: review
    kind: approval
    message: "Ship <b>it</b>?"
    form:
      audience: {type: string, enum: [team, public], description: Who reads it.}
      copies: {type: integer}
      ratio: {type: number, default: 0.5}
      urgent: {type: boolean, default: false}
      tags: {type: array, items: string, default: []}
      extra: {type: object, default: {}}
      note: {type: string, default: "n/a"}
  - {id: after, kind: agent, needs: [review], prompt: "After"}
"""


def _start(project: ApiProject, start_server: Callable[..., LiveServer]) -> LiveServer:
    project.flow("typed", TYPED)
    return start_server(tokens=TOKENS)


def _decide(client: httpx.Client, run_id: str, data: dict[str, str]) -> httpx.Response:
    page = client.get(f"/runs/{run_id}/steps/review")
    return client.post(
        f"/runs/{run_id}/steps/review", data={"csrf_token": csrf_of(page.text), **data}
    )


def test_the_form_is_generated_from_the_gates_form(
    project: ApiProject, start_server: Callable[..., LiveServer]
) -> None:
    server = _start(project, start_server)
    with server.client() as api, browser(server) as client:
        run_id = launch(api, "typed")
        wait_step(api, run_id, "review", "waiting")
        response = client.get(f"/runs/{run_id}/steps/review")
    assert_safe_page(response)
    html = response.text
    assert "Ship &lt;b&gt;it&lt;/b&gt;?" in html
    assert '<select id="f-audience" name="audience"' in html
    assert '<option value="team">team</option>' in html
    assert '<input type="number" step="1" id="f-copies" name="copies" value=""' in html
    assert '<input type="number" step="any" id="f-ratio" name="ratio" value="0.5"' in html
    assert '<input type="checkbox" id="f-urgent" name="urgent" value="true"' in html
    assert re.search(r'<textarea id="f-tags" name="tags"[^>]*>\[\]</textarea>', html)
    assert re.search(r'<textarea id="f-extra" name="extra"[^>]*>\{\}</textarea>', html)
    assert '<input type="text" id="f-note" name="note" value="n/a"' in html
    for name in ("audience", "copies"):  # required: no default
        assert re.search(rf'<label for="f-{name}">{name} <span class="required">required', html)
    assert '<label for="f-ratio">ratio</label>' in html
    assert "Who reads it." in html
    assert '<textarea id="comment" name="comment"' in html
    assert '<button type="submit" name="decision" value="approve">Approve</button>' in html
    assert 'name="decision" value="reject" class="danger">Reject</button>' in html


def test_an_approval_through_the_form_carries_typed_values(
    project: ApiProject, start_server: Callable[..., LiveServer]
) -> None:
    server = _start(project, start_server)
    with server.client() as api, browser(server) as client:
        run_id = launch(api, "typed")
        wait_step(api, run_id, "review", "waiting")
        answer = _decide(
            client,
            run_id,
            {
                "decision": "approve",
                "audience": "public",
                "copies": "3",
                "ratio": "2.5",
                "urgent": "true",
                "tags": '["a", "b"]',
                "extra": '{"k": 1}',
                "note": "",
                "comment": "ship it",
            },
        )
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == f"/runs/{run_id}/steps/review"
        step = wait_step(api, run_id, "review", "completed")["steps"][0]
        shown = client.get(f"/runs/{run_id}/steps/review").text
    assert step["data"]["payload"] == {
        "audience": "public",
        "copies": 3,
        "ratio": 2.5,
        "urgent": True,
        "tags": ["a", "b"],
        "extra": {"k": 1},
        "note": "",
    }
    assert step["data"]["by"] == "alice" and step["data"]["comment"] == "ship it"
    assert "<strong>Approved</strong> by <strong>alice</strong>" in shown
    assert 'name="decision"' not in shown  # no form once decided


def test_a_bad_payload_is_a_422_with_each_error_beside_its_field(
    project: ApiProject, start_server: Callable[..., LiveServer]
) -> None:
    server = _start(project, start_server)
    with server.client() as api, browser(server) as client:
        run_id = launch(api, "typed")
        wait_step(api, run_id, "review", "waiting")
        answer = _decide(
            client,
            run_id,
            {"decision": "approve", "copies": "three", "tags": "[1, 2]", "ratio": "nan"},
        )
        assert answer.status_code == 422
        assert_safe_page(answer)
        html = answer.text
        assert re.search(r'id="e-copies" role="alert">expected a whole number', html)
        assert re.search(r'id="e-ratio" role="alert">expected a finite number', html)
        assert 'value="three"' in html  # what was typed is kept
        # the engine's own check, once the form's values could be read
        answer = _decide(client, run_id, {"decision": "approve", "copies": "3", "tags": "[1]"})
        assert answer.status_code == 422
        assert re.search(r'id="e-audience" role="alert">missing required', answer.text)
        assert re.search(r'id="e-tags" role="alert">item 0: expected string', answer.text)
        assert get_run(api, run_id)["steps"][0]["status"] == "waiting"


def test_a_rejection_needs_no_valid_payload(
    project: ApiProject, start_server: Callable[..., LiveServer]
) -> None:
    server = _start(project, start_server)
    with server.client() as api, browser(server) as client:
        run_id = launch(api, "typed")
        wait_step(api, run_id, "review", "waiting")
        answer = _decide(client, run_id, {"decision": "reject", "copies": "x", "comment": "no"})
        assert answer.status_code == 303
        step = wait_step(api, run_id, "review", "failed")["steps"][0]
    assert step["data"]["approved"] is False and step["data"]["comment"] == "no"


def test_a_gate_decided_meanwhile_says_who_decided_it(server: LiveServer) -> None:
    with server.client() as api, server.client("tok-bob") as bob, browser(server) as client:
        run_id = launch(api, "gate")
        wait_step(api, run_id, "review", "waiting")
        page = client.get(f"/runs/{run_id}/steps/review")
        decided = bob.post(
            f"/v1/runs/{run_id}/steps/review/approve",
            json={"comment": "bob's call", "payload": {"audience": "team"}},
        )
        assert decided.status_code == 200
        answer = client.post(
            f"/runs/{run_id}/steps/review",
            data={"csrf_token": csrf_of(page.text), "decision": "reject", "comment": "mine"},
        )
    assert answer.status_code == 409
    assert_safe_page(answer)
    assert "decided before your decision arrived" in answer.text
    assert "<strong>Approved</strong> by <strong>bob</strong>" in answer.text
    assert "bob&#39;s call" in answer.text
    assert "Traceback" not in answer.text


def test_who_may_not_decide_gets_no_form(server: LiveServer) -> None:
    with server.client() as api, browser(server) as client:
        lead = launch(api, "leadgate")
        own = launch(api, "selfgate")  # launched by alice
        wait_step(api, lead, "review", "waiting")
        wait_step(api, own, "review", "waiting")
        for run_id, reason in ((lead, "Only lead may decide"), (own, "You launched this run")):
            html = client.get(f"/runs/{run_id}/steps/review").text
            assert reason in html
            assert 'name="decision"' not in html
            answer = client.post(
                f"/runs/{run_id}/steps/review",
                data={"csrf_token": csrf_of(html), "decision": "approve"},
            )
            assert answer.status_code == 403
            assert get_run(api, run_id)["steps"][0]["status"] == "waiting"


def test_the_inbox_lists_the_gates_one_may_decide_oldest_first(server: LiveServer) -> None:
    with server.client() as api, server.client("tok-bob") as bob_api:
        first = launch(api, "gate")
        wait_step(api, first, "review", "waiting")
        lead = launch(api, "leadgate")
        mine = launch(api, "selfgate")  # alice's own: bob may decide it, alice may not
        wait_step(api, lead, "review", "waiting")
        wait_step(api, mine, "review", "waiting")
        second = launch(bob_api, "gate")
        wait_step(api, second, "review", "waiting")
        with (
            browser(server, "tok-alice") as alice,
            browser(server, "tok-bob") as bob,
            browser(server, "tok-lead") as lead_client,
        ):

            def listed(client: httpx.Client) -> list[str]:
                page = client.get("/inbox")
                assert page.status_code == 200
                assert_safe_page(page)
                return re.findall(r'<a href="/runs/(\w+)/steps/review">', page.text)

            assert listed(alice) == [first, second]
            assert listed(bob) == [first, mine, second]
            assert listed(lead_client) == [first, lead, mine, second]
