"""Golden-file tests of ``flowrunner lint``: every rule, clean flows, every output format.

The fixture project is ``tests/lint/project``: ``personas/``, ``code_steps/`` (the
package ``fixture_steps``, a code root through ``flowrunner.toml``) and ``flows/``.
Each ``flows/<stem>.yaml`` is linted alone, exactly as a user would from inside the
project (``flowrunner lint flows/<stem>.yaml``, run in-process with the project as
the current directory), and its stdout must equal ``golden/<stem>.txt``
byte for byte. Broken flows are named after the rule they break
(``fr004_unknown_need.yaml``); clean flows are named ``ok_*.yaml``.

FR011 messages name the code roots relative to the current directory; should
one be outside it, the fixture project's absolute path is written ``<project>``
so the golden files hold on any machine.

Regenerating the golden files after an intended change of the output::

    FLOWRUNNER_UPDATE_GOLDEN=1 .venv/bin/pytest tests/lint/test_golden.py

then read ``git diff tests/lint/golden`` line by line (each position must point
at the offending key or value) and copy changed outputs into
``docs/lint-rules.md``, which ``test_docs_show_golden_output`` keeps in step.
Cases listed in ``KNOWN_BUGS`` hold the output the engine *should* print and
are never overwritten; they are strict xfails, so fixing the bug makes them
fail until their entry is removed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from engine.cli.main import app
from engine.model.source import YamlProblem, load_yaml
from engine.schema import flow_schema

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "project"
FLOWS = PROJECT / "flows"
GOLDEN = HERE / "golden"
DOCS = HERE.parents[1] / "docs" / "lint-rules.md"
UPDATE = os.environ.get("FLOWRUNNER_UPDATE_GOLDEN") == "1"

RULES = [f"FR{number:03d}" for number in range(1, 18)]
CASES = sorted(path.stem for path in FLOWS.glob("*.yaml"))
BROKEN = [stem for stem in CASES if stem.startswith("fr")]
CLEAN = [stem for stem in CASES if stem.startswith("ok_")]

# Cases whose golden file holds the correct output, which the engine does not print yet.
KNOWN_BUGS: dict[str, str] = {}

# FR002 cases that JSON Schema cannot express: lint alone reports them.
SCHEMA_CANNOT_SEE = {"fr002_bad_default"}  # a default's type depends on the sibling `type`

# Rules a broken case may report besides its own (the cause of the others is the point).
ALSO_REPORTS = {
    "fr017_after_cycle": {"FR005"},
}

SUMMARY = re.compile(r"^\d+ files? checked: (\d+) errors?, (\d+) warnings?$")


@pytest.fixture(autouse=True)
def in_project(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every command from inside the fixture project, with no extra code roots."""
    monkeypatch.chdir(PROJECT)
    monkeypatch.delenv("FLOWRUNNER_CODE_ROOTS", raising=False)


def lint(*args: str) -> tuple[int, str, str]:
    """``flowrunner lint ARGS`` in-process: exit code, stdout (paths normalized), stderr."""
    result = CliRunner().invoke(app, ["lint", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    stdout = result.stdout.replace(str(PROJECT.resolve()), "<project>")
    return result.exit_code, stdout, result.stderr


def golden(stem: str) -> str:
    return (GOLDEN / f"{stem}.txt").read_text("utf-8")


def rules_in(text: str) -> set[str]:
    return set(re.findall(r"^\S+:\d+:\d+: (FR\d{3}) (?:error|warning): ", text, re.MULTILINE))


def expected_exit(text: str) -> int:
    match = SUMMARY.match(text.rstrip("\n").splitlines()[-1])
    assert match is not None, "a golden file ends with the summary line"
    return 1 if int(match.group(1)) else 0


def case(stem: str) -> Any:
    if stem in KNOWN_BUGS:
        return pytest.param(stem, marks=pytest.mark.xfail(reason=KNOWN_BUGS[stem], strict=True))
    return stem


@pytest.mark.parametrize("stem", [case(stem) for stem in CASES])
def test_golden_output(stem: str) -> None:
    """Linting one case prints exactly its golden file and exits 1 on errors, else 0."""
    code, stdout, stderr = lint(f"flows/{stem}.yaml")
    if UPDATE and stem not in KNOWN_BUGS:
        (GOLDEN / f"{stem}.txt").write_text(stdout, "utf-8")
    assert stderr == ""
    assert stdout == golden(stem)
    assert code == expected_exit(stdout)


def test_every_case_has_a_golden_file_and_no_golden_file_is_stale() -> None:
    assert sorted(path.stem for path in GOLDEN.glob("*.txt")) == CASES


@pytest.mark.parametrize("stem", BROKEN)
def test_broken_case_reports_its_own_rule(stem: str) -> None:
    """``frNNN_*`` reports FRNNN, and other rules only where the case says why."""
    own = stem[:5].upper()
    found = rules_in(golden(stem))
    assert own in found
    assert found - {own} <= ALSO_REPORTS.get(stem, set())


def test_every_rule_has_a_golden_case() -> None:
    """Coverage of the rules cannot silently drop when a case is removed or changed."""
    covered = set().union(*(rules_in(golden(stem)) for stem in BROKEN))
    assert covered == set(RULES)


@pytest.mark.parametrize("stem", CLEAN)
def test_clean_flow_has_no_diagnostic(stem: str) -> None:
    code, stdout, _ = lint(f"flows/{stem}.yaml", "--format", "json")
    report = json.loads(stdout)
    assert report["diagnostics"] == []
    assert report["files"][0] == f"flows/{stem}.yaml"  # then the prompt files it reads
    assert code == 0


@pytest.mark.parametrize("stem", CASES)
def test_schema_agrees_with_lint(stem: str) -> None:
    """schema.json rejects the FR002 cases and accepts every other loadable flow."""
    try:
        data, _ = load_yaml((FLOWS / f"{stem}.yaml").read_text("utf-8"))
    except (UnicodeDecodeError, YamlProblem):
        return  # FR001 and FR014: not a document the schema could see
    errors = list(jsonschema.Draft202012Validator(flow_schema()).iter_errors(data))
    expected = stem.startswith("fr002_") and stem not in SCHEMA_CANNOT_SEE
    assert bool(errors) == expected, [e.message for e in errors]


def test_invalid_utf8_case_is_really_invalid() -> None:
    """Guards the committed bytes against an editor that 'repairs' the file."""
    data = (FLOWS / "fr001_invalid_utf8.yaml").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")


def resolve(document: Any, pointer: str) -> Any:
    """The node a JSON Pointer (RFC 6901) names."""
    node = document
    for token in pointer.split("/")[1:] if pointer else []:
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


CYCLE = "flows/fr017_after_cycle.yaml"


def test_json_format() -> None:
    """One object: the files read and each diagnostic with a pointer to its node."""
    code, stdout, _ = lint(CYCLE, "--format", "json")
    report = json.loads(stdout)
    assert code == 1
    assert set(report) == {"files", "diagnostics"}
    assert report["files"] == [CYCLE]
    keys = {"path", "line", "column", "rule", "severity", "message", "pointer"}
    assert all(set(d) == keys for d in report["diagnostics"])
    found = [(d["rule"], d["severity"], d["pointer"]) for d in report["diagnostics"]]
    assert found == [
        ("FR005", "error", "/steps/0/needs/0"),
        ("FR017", "warning", "/steps/2/id"),
        ("FR017", "warning", "/steps/3/id"),
    ]
    data, source = load_yaml((PROJECT / CYCLE).read_text("utf-8"))
    named = [resolve(data, d["pointer"]) for d in report["diagnostics"]]
    assert named == ["review", "publish", "announce"]
    for d in report["diagnostics"]:
        assert source.value_at(d["pointer"])[:2] == (d["line"], d["column"])


def test_json_pointer_of_a_mapping_key() -> None:
    """A diagnostic about a key (FR002 unknown key) names that member."""
    _, stdout, _ = lint("flows/fr002_unknown_key.yaml", "--format", "json")
    [diagnostic] = json.loads(stdout)["diagnostics"]
    assert diagnostic["pointer"] == "/steps/0/wiht"
    assert (diagnostic["line"], diagnostic["column"]) == (8, 5)


def test_github_format() -> None:
    code, stdout, _ = lint(CYCLE, "--format", "github")
    assert code == 1
    assert stdout.splitlines() == [
        f"::error file={CYCLE},line=7,col=13,title=FR005::dependency cycle: plan -> review -> plan",
        f"::warning file={CYCLE},line=13,col=9,title=FR017::"
        "step 'publish' can never run: it depends on a dependency cycle",
        f"::warning file={CYCLE},line=17,col=9,title=FR017::"
        "step 'announce' can never run: it depends on a dependency cycle",
    ]


def test_sarif_format() -> None:
    code, stdout, _ = lint(CYCLE, "flows/ok_bands.yaml", "--format", "sarif")
    document = json.loads(stdout)
    assert code == 1
    assert document["version"] == "2.1.0"
    [run] = document["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [rule["id"] for rule in rules] == RULES
    assert [a["location"]["uri"] for a in run["artifacts"]] == [CYCLE, "flows/ok_bands.yaml"]
    results = [
        (
            r["ruleId"],
            rules[r["ruleIndex"]]["id"],
            r["level"],
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            r["locations"][0]["physicalLocation"]["region"],
        )
        for r in run["results"]
    ]
    assert results == [
        ("FR005", "FR005", "error", CYCLE, {"startLine": 7, "startColumn": 13}),
        ("FR017", "FR017", "warning", CYCLE, {"startLine": 13, "startColumn": 9}),
        ("FR017", "FR017", "warning", CYCLE, {"startLine": 17, "startColumn": 9}),
    ]


def test_sarif_help_links_resolve_to_doc_anchors() -> None:
    _, stdout, _ = lint(CYCLE, "--format", "sarif")
    doc = DOCS.read_text("utf-8")
    for rule in json.loads(stdout)["runs"][0]["tool"]["driver"]["rules"]:
        page, _, anchor = rule["helpUri"].partition("#")
        assert page == "docs/lint-rules.md"
        assert f'<a id="{anchor}"></a>' in doc


def test_lint_folder_names_every_file_and_sorts_diagnostics() -> None:
    code, stdout, _ = lint("flows")
    assert code == 1
    for stem in CASES:
        assert f"flows/{stem}.yaml" in stdout
    assert "is already used by" not in stdout  # every fixture flow has its own name
    _, stdout, _ = lint("flows", "--format", "json")
    report = json.loads(stdout)
    flows = [path for path in report["files"] if path.endswith(".yaml")]
    assert flows == [f"flows/{stem}.yaml" for stem in CASES]
    prompts = {path for path in report["files"] if not path.endswith(".yaml")}
    assert prompts == {"flows/prompts/summary.md.j2", "flows/prompts/broken.md.j2"}
    positions = [(d["path"], d["line"], d["column"]) for d in report["diagnostics"]]
    assert positions == sorted(positions)
    assert {d["rule"] for d in report["diagnostics"]} == set(RULES)


def test_default_path_is_the_flows_folder() -> None:
    code, stdout, _ = lint("--format", "json")
    assert code == 1
    files = json.loads(stdout)["files"]
    assert len([path for path in files if path.endswith(".yaml")]) == len(CASES)


def test_duplicate_flow_names_across_files(tmp_path: Path) -> None:
    """FR002 also covers two flows of one folder sharing a name."""
    (tmp_path / "flows").mkdir()
    text = (FLOWS / "ok_raw_block.yaml").read_text("utf-8")
    for name in ("first.yaml", "second.yaml"):
        (tmp_path / "flows" / name).write_text(text, "utf-8")
    code, stdout, _ = lint_in(tmp_path)
    assert code == 1
    assert stdout.splitlines()[0] == (
        f"{tmp_path / 'flows' / 'second.yaml'}:3:7: FR002 error: "
        f"flow name 'ok-raw-block' is already used by {tmp_path / 'flows' / 'first.yaml'}"
    )


def lint_in(project: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--project", str(project), "lint"])
    return result.exit_code, result.stdout, result.stderr


def test_nonexistent_path_is_bad_usage() -> None:
    code, stdout, stderr = lint("flows/no_such_flow.yaml")
    assert code == 2
    assert stdout == ""
    assert stderr == "flowrunner: no such file or folder: flows/no_such_flow.yaml\n"


def rule_sections(doc: str) -> dict[str, str]:
    """Each ``## FRNNN: title`` section of the rules reference, by rule."""
    parts = re.split(r"^## (FR\d{3}): .*$", doc, flags=re.MULTILINE)
    return {
        rule: body.split("\n## ", 1)[0] for rule, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def test_docs_show_golden_output() -> None:
    """Each rule's section quotes the exact output of one of its cases, so it cannot go stale."""
    sections = rule_sections(DOCS.read_text("utf-8"))
    assert list(sections) == RULES
    for rule in RULES:
        quoted = [
            stem
            for stem in BROKEN
            if stem.startswith(rule.lower()) and stem not in KNOWN_BUGS
            if golden(stem).rstrip("\n") in sections[rule]
        ]
        assert quoted, f"docs/lint-rules.md: the {rule} section quotes no golden output"


def test_every_output_quoted_in_the_docs_is_current() -> None:
    """A case whose output the doc shows must be shown exactly as the engine prints it now."""
    text = DOCS.read_text("utf-8")
    for stem in CASES:
        first = golden(stem).splitlines()[0]
        location = first.split(": ", 1)[0]  # e.g. flows/fr004_unknown_need.yaml:9:14
        if f"{location}: " in text:
            assert golden(stem).rstrip("\n") in text, f"docs/lint-rules.md shows stale {stem}"
