"""Templates at run time: data stays data, the sandbox holds, renders are bounded."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.store.sqlite import SqliteStore

from .conftest import (
    ProjectKit,
    idle,
    launch,
    replies,
    run_flow,
    scripted,
    statuses,
    steps_by_id,
)


async def test_an_output_holding_template_syntax_is_inserted_as_text(
    kit: ProjectKit, store: SqliteStore
) -> None:
    module = kit.code("def keep(ctx, text):\n    return {'text': text}\n")
    checked = kit.checked(
        f"""
        version: 1
        name: x
        inputs:
          note: {{type: string, default: "{{{{ 6*7 }}}}"}}
        steps:
          - {{id: a, kind: agent, prompt: "a", fields: [tag]}}
          - id: b
            kind: agent
            needs: [a]
            prompt: >-
              Echo: {{{{ steps.a.output }}}} / {{{{ steps.a.fields.tag }}}}
              / {{{{ inputs.note }}}}
          - id: c
            kind: code
            needs: [a]
            call: "{module}:keep"
            with: {{text: "{{{{ steps.a.output }}}}"}}
        report: "{{{{ steps.a.output }}}}|{{{{ steps.b.output }}}}"
        """
    )
    evil = "{{ 7*7 }} {% for i in range(3) %}loop{% endfor %} {{ run.id }}"
    backend = scripted(("^a$", f"{evil}\ntag: {{{{ 8*8 }}}}"), ("Echo", "echoed"))
    details = await run_flow(kit, store, checked, backend)
    found = steps_by_id(details)
    assert found["a"].output == f"{evil}\ntag: {{{{ 8*8 }}}}"
    assert found["a"].fields == {"tag": "{{ 8*8 }}"}
    assert found["c"].data == {"text": found["a"].output}
    calls = await store.agent_calls(details.run.id, "b")
    assert calls[0].prompt == f"Echo: {found['a'].output} / {{{{ 8*8 }}}} / {{{{ 6*7 }}}}"
    assert "49" not in calls[0].prompt and "64" not in calls[0].prompt
    assert details.run.report == f"{found['a'].output}|echoed"


async def test_a_gate_message_keeps_output_text_literal(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: a, kind: agent, prompt: "a"}
          - {id: gate, kind: approval, needs: [a], message: "Approve {{ steps.a.output }}?"}
        """
    )
    run_id = await launch(kit, store, checked)
    details = await idle(kit, store, run_id, replies("{{ 7*7 }}"))
    assert steps_by_id(details)["gate"].input == "Approve {{ 7*7 }}?"
    (waiting,) = [e for e in await store.events(run_id) if e.event == "step_waiting"]
    assert waiting.payload["message"] == "Approve {{ 7*7 }}?"


SIZED = [  # each would allocate a gigabyte or more before the size cap saw its result
    ("center", "{{ 'x'|center(1000000000) }}", "the center filter would build"),
    ("percent", "{{ '%1000000000d' % 1 }}", "'%' would build"),
    ("percent-star", "{{ '%*d' % (1000000000, 1) }}", "'*' widths"),
    ("ljust", "{{ 'x'.ljust(1000000000) }}", "str.ljust would build"),
    ("zfill", "{{ '1'.zfill(1000000000) }}", "str.zfill would build"),
    ("format-width", "{{ '{:>1000000000}'.format(1) }}", "str.format would build"),
    ("format-nested", "{{ '{0:{1}}'.format(1, 1000000000) }}", "nested fields"),
    ("format-filter", "{{ '%1000000000s'|format('a') }}", "the format filter would build"),
    ("indent", "{{ 'a\\nb'|indent(1000000000) }}", "the indent filter would build"),
    ("indent-str", "{{ 'a\\nb'|indent('x' * 900000) * 2 }}", "would build"),
    ("join", "{{ range(100000)|join('x' * 100000) }}", "the join filter would build"),
    ("str-join", "{{ ('x' * 100000).join(range(100000)|map('string')) }}", "str.join"),
    ("replace", "{{ ('x' * 100000)|replace('x', 'yy' * 5000) }}", "the replace filter"),
    ("wordwrap", "{{ 'a b'|wordwrap(1, wrapstring='x' * 999999) }}", "the wordwrap filter"),
    ("to-bytes", "{{ (1).to_bytes(1000000000, 'big') }}", "int.to_bytes would build"),
    ("tojson-indent", "{{ [1]|tojson(indent=1000000000) }}", "indent is at most"),
    ("expandtabs", "{{ 'a\\tb'.expandtabs(1000000000) }}", "str.expandtabs"),
    ("power-tower", "{{ ((10**1000)**60)**1000 }}", "'**' would build"),
    ("nested-lists", "{% set a = ['x' * 600000] %}{% set a = [a, a] %}{{ a }}", "the value"),
    ("concat-doubling", "{% set a = 'x' * 600000 %}{% set a = a ~ a %}{{ a }}", "'~' would"),
    (
        "capture-loop",
        "{% set a %}{% for i in range(2000) %}{{ 'x' * 1000 }}{% endfor %}{% endset %}{{ a }}",
        "captured output would build",
    ),
    (
        "macro-recursion",
        "{% macro f(s) %}{{ f(s ~ 'y') }}{% endmacro %}{{ f('x' * 900000) }}",
        "more than 32,000,000 characters in all",
    ),
    ("lipsum", "{{ lipsum(1000000000) }}", "lipsum takes"),
]

HOSTILE = [
    pytest.param("{{ ''.__class__ }}", "SecurityError", id="dunder-class"),
    pytest.param("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError", id="mro"),
    pytest.param('{{ "{0.__class__}".format(inputs.x) }}', "SecurityError", id="str-format"),
    pytest.param(
        '{{ "{a.__class__}".format_map({"a": inputs.x}) }}', "SecurityError", id="format-map"
    ),
    pytest.param(
        "{% set f = '{0.__class__}'.format %}{{ f(inputs.x) }}", "SecurityError", id="format-ref"
    ),
    pytest.param("{{ inputs.x|attr('__class__') }}", "SecurityError", id="attr-filter"),
    pytest.param(
        '{{ "{0.__class__}"|attr("format")(inputs.x) }}', "SecurityError", id="attr-format"
    ),
    pytest.param("{{ 'x' * 10**9 }}", "'*' would build", id="huge-product"),
    pytest.param("{{ 10**9 * 'x' }}", "'*' would build", id="huge-product-reversed"),
    pytest.param("{{ [0] * 10**8 }}", "'*' would build", id="huge-list"),
    pytest.param("{{ 2 ** 100000 }}", "'**' would build", id="huge-power"),
    *(pytest.param(t, e, id=i) for i, t, e in SIZED),
    pytest.param("{{ inputs.update({'x': 1}) }}", "SecurityError", id="mutate-inputs"),
    pytest.param("{{ foo }}", "UndefinedError", id="undefined-name"),
    pytest.param("{{ run.nope }}", "UndefinedError", id="undefined-attribute"),
    pytest.param("{{ inputs.x | int(base=0) + inputs.x }}", "TypeError", id="runtime-type"),
]


@pytest.mark.parametrize(("template", "error"), HOSTILE)
async def test_hostile_prompts_fail_the_step_with_a_clear_error(
    kit: ProjectKit, store: SqliteStore, template: str, error: str
) -> None:
    kit.flow(
        """
        version: 1
        name: x
        inputs:
          x: {type: string, default: "abc"}
        steps:
          - id: a
            kind: agent
            retries: 2
            prompt: PROMPT
        """.replace("PROMPT", _yaml_string(template))
    )
    checked = kit.check(kit.root / "flows" / "x.yaml")
    backend = replies("should not be asked")
    details = await run_flow(kit, store, checked, backend)
    a = steps_by_id(details)["a"]
    assert backend.requests == [], "the prompt rendered and reached the backend"
    assert (str(a.status), a.attempts) == ("failed", 1)  # not retried: it would fail again
    assert a.error.startswith("step 'a' prompt: ")
    assert error in a.error
    assert "\n" not in a.error and len(a.error) < 1000
    for leak in ("<class", "subclasses", "object at 0x"):
        assert leak not in a.error
    assert str(details.run.status) == "failed"


@pytest.mark.parametrize(
    "where",
    ["with", "when", "message", "report"],
)
async def test_the_sandbox_holds_in_every_kind_of_template(
    kit: ProjectKit, store: SqliteStore, where: str
) -> None:
    module = kit.code("def f(ctx, v):\n    return v\n")
    hostile = "''.__class__.__mro__"
    templates = {
        "with": ('with: {v: "{{ HOSTILE }}"}', "", "", ""),
        "when": ("with: {v: ok}", 'when: "HOSTILE"', "", ""),
        "message": ("with: {v: ok}", "", 'message: "{{ HOSTILE }}"', ""),
        "report": ("with: {v: ok}", "", "", 'report: "{{ HOSTILE }}"'),
    }
    with_, when, message, report = (t.replace("HOSTILE", hostile) for t in templates[where])
    gate = "- {id: gate, kind: approval, needs: [c], " + message + "}" if message else ""
    checked = kit.checked(
        f"""
        version: 1
        name: x
        steps:
          - id: c
            kind: code
            call: "{module}:f"
            {with_}
            {when}
          {gate}
        {report}
        """
    )
    details = await run_flow(kit, store, checked, replies("unused"))
    assert str(details.run.status) == "failed"
    assert "SecurityError" in (details.run.error or "")
    assert "<class" not in (details.run.error or "")
    failed = {s.id: s.error for s in details.steps if str(s.status) == "failed"}
    if where == "report":
        assert failed == {}
        assert statuses(details) == {"c": "completed"}
    else:
        (step,) = failed
        assert step == ("gate" if where == "message" else "c")


def _yaml_string(text: str) -> str:
    """``text`` as a YAML double-quoted scalar."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def test_a_render_larger_than_the_cap_fails_the_step(
    kit: ProjectKit, store: SqliteStore
) -> None:
    kit.env(max_render_bytes=2000)
    checked = kit.checked(
        """
        version: 1
        name: x
        inputs:
          big: {type: string}
        steps:
          - {id: small, kind: agent, prompt: "{{ inputs.big[:100] }}"}
          - {id: loop, kind: agent, prompt: "{% for i in range(100000) %}0123456789{% endfor %}"}
          - {id: large, kind: agent, needs: [small], prompt: "{{ inputs.big }}"}
        """
    )
    backend = replies("ok")
    details = await run_flow(kit, store, checked, backend, {"big": "y" * 2500})
    found = steps_by_id(details)
    assert str(details.run.status) == "failed"
    failed = [s for s in details.steps if str(s.status) == "failed"]
    assert len(failed) == 1
    assert "rendered text exceeds 2000 bytes" in failed[0].error
    assert all(len(r.prompt) <= 2000 for r in backend.requests)
    assert "large" not in [r.step_id for r in backend.requests]
    assert str(found["loop"].status) in ("failed", "cancelled")


async def test_the_render_cap_counts_bytes(kit: ProjectKit, store: SqliteStore) -> None:
    kit.env(max_render_bytes=2000)
    checked = kit.checked(
        """
        version: 1
        name: x
        inputs:
          big: {type: string}
        steps:
          - {id: a, kind: agent, prompt: "{{ inputs.big }}"}
        """
    )
    backend = replies("ok")
    big = "\u00e9" * 1500  # 1500 characters, 3000 bytes of UTF-8
    details = await run_flow(kit, store, checked, backend, {"big": big})
    assert backend.requests == [], "a 3000-byte prompt passed a 2000-byte cap"
    assert str(steps_by_id(details)["a"].status) == "failed"


async def test_a_render_at_the_cap_is_fine(kit: ProjectKit, store: SqliteStore) -> None:
    kit.env(max_render_bytes=2000)
    checked = kit.checked(
        """
        version: 1
        name: x
        inputs:
          big: {type: string}
        steps:
          - {id: a, kind: agent, prompt: "{{ inputs.big }}"}
        """
    )
    backend = replies("ok")
    details = await run_flow(kit, store, checked, backend, {"big": "y" * 2000})
    assert str(details.run.status) == "completed"
    assert backend.requests[0].prompt == "y" * 2000


async def test_an_undefined_name_fails_the_step(kit: ProjectKit, store: SqliteStore) -> None:
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - {id: a, kind: agent, prompt: "a"}
          - {id: b, kind: agent, needs: [a], prompt: "{{ steps.a.data.verdict }}"}
          - {id: c, kind: agent, needs: [b], prompt: "c"}
        """
    )
    backend = replies("plain text")
    details = await run_flow(kit, store, checked, backend)
    assert statuses(details) == {"a": "completed", "b": "failed", "c": "cancelled"}
    error = steps_by_id(details)["b"].error
    assert error.startswith("step 'b' prompt: UndefinedError:")
    assert "verdict" in error
    assert details.run.error == f"step 'b' failed: {error}"


async def test_a_render_that_runs_too_long_fails_its_step_and_nothing_else(
    kit: ProjectKit, store: SqliteStore
) -> None:
    """A template that would loop for hours stops at the render timeout; a sibling
    step of the same worker completes, and the worker's loop keeps turning meanwhile."""
    kit.env(render_timeout="1")
    checked = kit.checked(
        """
        version: 1
        name: x
        steps:
          - id: slow
            kind: agent
            prompt: >-
              {% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}
          - {id: fine, kind: agent, prompt: "hello"}
        """
    )
    gaps: list[float] = []

    async def watch() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    try:
        details = await run_flow(kit, store, checked, replies("ok"))
    finally:
        watcher.cancel()
    found = steps_by_id(details)
    assert found["slow"].error == "step 'slow' prompt: template rendering took longer than 1 s"
    assert str(found["fine"].status) == "completed"
    assert time.monotonic() - started < 5
    assert max(gaps) < 0.5, "the event loop was held up while the template rendered"
