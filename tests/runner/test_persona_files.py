"""Odd files in ``personas/`` and prompt files: clear messages, never a traceback or a leak.

A launch snapshots every persona of the project (a code step may dispatch to
any of them). A link out of ``personas/`` is not a persona: lint refuses a step
naming it, and the snapshot leaves it out, so no dispatch can send the file
it points to to a model. A dangling or looping link, or a file that is not
UTF-8, that no step names does not stop a launch. Through the console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FLOWRUNNER = Path(sys.executable).parent / "flowrunner"

SECRET = "TOPSECRET-e90d"

STEPS = """
def probe(ctx, persona):
    return ctx.dispatch_sync(persona, "hello")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    personas = root / "personas"
    personas.mkdir(parents=True)
    (root / "flows").mkdir()
    (personas / "good.md").write_text("You are good.\n")
    (personas / "dangling.md").symlink_to("nowhere.md")
    (personas / "loop.md").symlink_to("loop.md")
    (personas / "binary.md").write_bytes(b"caf\xe9\n")
    secret = tmp_path / "secret.md"
    secret.write_text(f"{SECRET}\n")
    (personas / "outside.md").symlink_to(secret)
    (root / "persona_probe").mkdir()
    (root / "persona_probe" / "__init__.py").touch()
    (root / "persona_probe" / "steps.py").write_text(STEPS)
    (root / "replies.yaml").write_text("replies:\n  - reply: answered\n")
    return root


def flow(root: Path, name: str, steps: str) -> None:
    text = f"version: 1\nname: {name}\nsteps:\n" + textwrap.dedent(steps).lstrip("\n")
    (root / "flows" / f"{name}.yaml").write_text(text)


def flowrunner(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRUNNER_")}
    env.update(FLOWRUNNER_AGENT_BACKEND="scripted", FLOWRUNNER_SCRIPTED_REPLIES="replies.yaml")
    done = subprocess.run(
        [str(FLOWRUNNER), *args], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in done.stderr + done.stdout
    return done


def test_stray_persona_files_do_not_stop_a_launch_and_a_link_out_is_not_a_persona(
    project: Path,
) -> None:
    flow(
        project,
        "probe",
        """
        - {id: ask, kind: agent, persona: good, prompt: hi}
        - {id: good, kind: code, needs: [ask], call: "persona_probe.steps:probe",
           with: {persona: good}}
        - {id: out, kind: code, needs: [good], call: "persona_probe.steps:probe",
           with: {persona: outside}}
        """,
    )
    done = flowrunner(project, "run", "probe", "--json")
    assert done.returncode == 1, done.stderr
    run = json.loads(done.stdout)
    steps = {step["id"]: step for step in run["steps"]}
    assert steps["ask"]["status"] == steps["good"]["status"] == "completed"
    assert steps["out"]["status"] == "failed"
    assert steps["out"]["error"].startswith(
        "DispatchError: persona 'outside' is not in this run's snapshot (good)"
    )
    assert SECRET not in done.stdout + done.stderr


def test_a_step_persona_that_is_not_utf8_stops_the_launch_in_one_line(project: Path) -> None:
    flow(project, "latin", "- {id: a, kind: agent, persona: binary, prompt: hi}\n")
    done = flowrunner(project, "run", "latin")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "flowrunner: persona 'binary' is not UTF-8 text\n"
    assert flowrunner(project, "runs", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("persona", "message"),
    [
        ("outside", "persona 'outside' resolves outside personas/"),
        ("loop", "persona 'loop' not found: no file personas/loop.md"),
        ("dangling", "persona 'dangling' not found: no file personas/dangling.md"),
    ],
)
def test_lint_refuses_a_step_naming_a_persona_that_is_not_a_file_inside(
    project: Path, persona: str, message: str
) -> None:
    flow(project, "named", f"- {{id: a, kind: agent, persona: {persona}, prompt: hi}}\n")
    done = flowrunner(project, "lint", "flows/named.yaml")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == f"flows/named.yaml:4:33: FR010 error: {message}"


def test_a_prompt_file_that_loops_is_not_found(project: Path) -> None:
    (project / "flows" / "loop.md").symlink_to("loop.md")
    flow(project, "looping", "- {id: a, kind: agent, prompt_file: loop.md}\n")
    done = flowrunner(project, "lint", "flows/looping.yaml")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (
        "flows/looping.yaml:4:37: FR015 error: prompt_file 'loop.md' not found"
    )
