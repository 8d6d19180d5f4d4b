"""A running run keeps the flow it was launched with: editing the YAML, its prompt file
or a persona changes nothing in it, also after a kill -9 and a resume."""

from __future__ import annotations

import json

from tests.e2e.conftest import E2EProject

FLOW_V1 = """
contracts:
  tone: CONTRACT-V1
steps:
  - id: first
    kind: agent
    persona: author
    prompt_file: prompts/first.md.j2
    contracts: [tone]
    fields: [answer]
  - id: second
    kind: agent
    needs: [first]
    persona: author
    prompt: "[[id second]] [[sleep 2]] INLINE-V1 got {{ steps.first.fields.answer }}"
    fields: [answer]
  - id: third
    kind: agent
    needs: [second]
    prompt: "[[id third]] THIRD-V1 got {{ steps.second.fields.answer }}"
"""

FLOW_V2 = """
contracts:
  tone: CONTRACT-V2
steps:
  - id: first
    kind: agent
    persona: author
    prompt_file: prompts/first.md.j2
    contracts: [tone]
    fields: [answer]
  - id: second
    kind: agent
    needs: [first]
    persona: editor
    prompt: "[[id second]] INLINE-V2"
  - id: intruder
    kind: agent
    needs: [second]
    prompt: "[[id intruder]] INTRUDER-V2"
"""


def test_edits_to_a_running_flow_change_nothing_even_after_a_crash(
    project: E2EProject,
) -> None:
    project.write("personas/author.md", "PERSONA-V1")
    project.write("flows/prompts/first.md.j2", "[[id first]] [[sleep 1.5]] PROMPT-FILE-V1")
    project.flow("snap", FLOW_V1)
    run_id = project.launch("snap")
    first = project.worker()
    project.wait(lambda: project.started("first"), 30, "the first agent to start")

    # edit everything the run was launched from
    project.write("personas/author.md", "PERSONA-V2")
    project.write("personas/editor.md", "EDITOR-V2")
    project.write("flows/prompts/first.md.j2", "[[id first]] PROMPT-FILE-V2")
    project.flow("snap", FLOW_V2)
    assert not project.started("second"), "edited before the second step rendered its prompt"
    assert project.cli("lint", "flows/snap.yaml", check=False).returncode == 0

    project.wait(lambda: project.started("second"), 30, "the second agent to start")
    project.kill9(first)
    resumed = project.worker(until_idle=True)
    assert project.finish(resumed, 60) == 0, project.describe(run_id)

    assert project.run_status(run_id) == "completed", project.describe(run_id)
    assert project.step_statuses(run_id) == dict.fromkeys(["first", "second", "third"], "completed")
    assert [project.starts(s) for s in ("first", "second", "third", "intruder")] == [1, 2, 1, 0]
    prompts = {c["step_id"]: c["prompt"] for c in project.agent_calls(run_id)}
    assert set(prompts) == {"first", "second", "third"}
    answer = json.loads(project.steps(run_id)["first"]["fields"])["answer"]
    assert prompts == {
        "first": "PERSONA-V1\n\n---\n\n[[id first]] [[sleep 1.5]] PROMPT-FILE-V1\n\nCONTRACT-V1",
        "second": f"PERSONA-V1\n\n---\n\n[[id second]] [[sleep 2]] INLINE-V1 got {answer}",
        "third": prompts["third"],
    }
    assert prompts["third"].startswith("[[id third]] THIRD-V1 got second by ")
    assert not any("V2" in prompt for prompt in prompts.values())
    shown = json.loads(project.cli("show", run_id, "--json").stdout)
    assert [step["id"] for step in shown["steps"]] == ["first", "second", "third"]


def test_edited_persona_does_not_change_a_running_code_step_dispatch(
    project: E2EProject,
) -> None:
    project.write("personas/author.md", "PERSONA-V1")
    project.code(
        """
        def ask_twice(ctx):
            return [ctx.dispatch_sync("author", f"[[id d{n}]] [[sleep 1.5]]") for n in (1, 2)]
        """
    )
    project.flow(
        "dispatching",
        f"""
        steps:
          - id: ask
            kind: code
            call: {project.call("ask_twice")}
        """,
    )
    run_id = project.launch("dispatching")
    worker = project.worker(until_idle=True)
    project.wait(lambda: project.started("d1"), 30, "the first dispatch to start")
    project.write("personas/author.md", "PERSONA-V2")
    assert project.finish(worker, 60) == 0, project.describe(run_id)
    assert project.run_status(run_id) == "completed", project.describe(run_id)

    prompts = {c["sequence"]: c["prompt"] for c in project.agent_calls(run_id)}
    assert prompts[1] == "PERSONA-V1\n\n---\n\n[[id d1]] [[sleep 1.5]]"
    assert prompts[2] == "PERSONA-V1\n\n---\n\n[[id d2]] [[sleep 1.5]]"
