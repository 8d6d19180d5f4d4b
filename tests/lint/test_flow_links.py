"""A file in ``flows/`` that links outside the folder is refused, never read.

A flow found by name (``run NAME``) or by listing the folder (``lint``) must be a
file inside ``flows/``, as a persona must be inside ``personas/``: a link to a
file elsewhere (another project, a secret, ``/proc/self/environ``) is reported
without a position or a source line, so nothing of the target is shown. Links
that stay inside ``flows/`` work as before. Through the real console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FLOWRUNNER = Path(sys.executable).parent / "flowrunner"

SECRET = "TOPSECRET-7c41"

OUTSIDE = f"""# {SECRET}
version: 1
name: outside
steps:
  - {{id: leak, kind: agent, prompt: "{SECRET}"}}
"""

INSIDE = """version: 1
name: inside
steps:
  - {id: hello, kind: agent, prompt: hello}
"""

REFUSED = "FR001 error: resolves outside flows/: a flow is read only from inside that folder"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """``flows/`` with a flow, a link to a file outside and a link to a folder outside."""
    root = tmp_path / "project"
    (root / "flows" / "team").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.yaml").write_text(OUTSIDE, "utf-8")
    (root / "flows" / "team" / "inside.yaml").write_text(INSIDE, "utf-8")
    (root / "flows" / "evil.yaml").symlink_to(elsewhere / "notes.yaml")
    (root / "flows" / "shared").symlink_to(elsewhere, target_is_directory=True)
    (root / "replies.yaml").write_text("replies:\n  - reply: fine\n", "utf-8")
    return root


def flowrunner(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRUNNER_")}
    env.update(FLOWRUNNER_AGENT_BACKEND="scripted", FLOWRUNNER_SCRIPTED_REPLIES="replies.yaml")
    done = subprocess.run(
        [str(FLOWRUNNER), *args], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in done.stderr + done.stdout
    assert SECRET not in done.stderr + done.stdout
    return done


def test_lint_reports_the_link_out_without_reading_it(project: Path) -> None:
    done = flowrunner(project, "lint")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"flows/evil.yaml: {REFUSED}",
        "flows/team/inside.yaml: ok",
        "2 files checked: 1 error, 0 warnings",
    ]


def test_lint_formats_give_the_refusal_no_position(project: Path) -> None:
    [refused] = json.loads(flowrunner(project, "lint", "--format", "json").stdout)["diagnostics"]
    assert (refused["path"], refused["line"], refused["column"]) == ("flows/evil.yaml", 0, 0)
    github = flowrunner(project, "lint", "--format", "github").stdout
    assert github == f"::error file=flows/evil.yaml,title=FR001::{REFUSED.split(': ', 1)[1]}\n"
    sarif = json.loads(flowrunner(project, "lint", "--format", "sarif").stdout)
    [result] = sarif["runs"][0]["results"]
    location = result["locations"][0]["physicalLocation"]
    assert location == {"artifactLocation": {"uri": "flows/evil.yaml"}}


@pytest.mark.parametrize("name", ["evil", "shared/notes"])
def test_run_refuses_a_flow_that_links_out_and_stores_nothing(project: Path, name: str) -> None:
    done = flowrunner(project, "run", name)
    assert done.returncode == 2
    assert done.stdout == ""
    shown = f"flows/{name}.yaml"
    assert done.stderr.splitlines() == [
        f"{shown}: {REFUSED}",
        f"flowrunner: {shown} is not a valid flow",
    ]
    assert not (project / ".flowrunner").exists()


def test_a_link_inside_flows_runs(project: Path) -> None:
    (project / "flows" / "alias.yaml").symlink_to("team/inside.yaml")
    done = flowrunner(project, "run", "alias", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"
