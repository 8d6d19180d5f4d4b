"""schema.json: generated from the models, fresh, described, and in agreement with lint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.cli.main import app
from engine.schema import render

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "flows").glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=../schema.json"


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "check_jsonschema", "--schemafile", str(ROOT / "schema.json")]
    return subprocess.run([*command, *map(str, files)], capture_output=True, text=True)


def test_schema_json_is_up_to_date() -> None:
    result = CliRunner().invoke(app, ["--project", str(ROOT), "schema", "--check"])
    assert result.exit_code == 0, result.output


def test_schema_check_fails_when_stale(tmp_path: Path) -> None:
    stale = tmp_path / "schema.json"
    stale.write_text(render().replace("A step id", "An old step id"))
    result = CliRunner().invoke(app, ["schema", "--check", "--output", str(stale)])
    assert result.exit_code == 1
    assert "stale" in result.output


def _properties(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        for name, spec in node.get("properties", {}).items():
            found.append((f"{where}.{name}", spec))
        for key, value in node.items():
            found += _properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += _properties(item, f"{where}/{index}")
    return found


def test_every_key_has_a_description_for_editors() -> None:
    schema = json.loads(render())
    undocumented = [where for where, spec in _properties(schema) if "description" not in spec]
    assert not undocumented


def test_every_shipped_flow_starts_with_the_modeline() -> None:
    assert SHIPPED
    for path in SHIPPED:
        assert path.read_text("utf-8").splitlines()[0] == MODELINE, path


def test_check_jsonschema_accepts_every_shipped_flow() -> None:
    result = check_jsonschema(*SHIPPED)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        ("    prompt: hi\n    promt: typo\n", "'promt' was unexpected"),
        ("    prompt: hi\n    retries: two\n", "'two' is not of type 'integer'"),
    ],
)
def test_check_jsonschema_rejects_bad_flows(tmp_path: Path, mutation: str, expected: str) -> None:
    flow = tmp_path / "bad.yaml"
    flow.write_text(f"version: 1\nname: bad\nsteps:\n  - id: a\n    kind: agent\n{mutation}")
    result = check_jsonschema(flow)
    assert result.returncode == 1
    assert expected in result.stdout


def test_an_unknown_kind_is_one_clear_error(tmp_path: Path) -> None:
    flow = tmp_path / "bad.yaml"
    flow.write_text("version: 1\nname: bad\nsteps:\n  - id: a\n    kind: agnt\n    prompt: hi\n")
    result = check_jsonschema(flow)
    assert "'agnt' is not one of ['agent', 'approval', 'code']" in result.stdout
    assert "Best Match" not in result.stdout
