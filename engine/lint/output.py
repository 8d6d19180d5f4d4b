"""The formats of ``flowrunner lint``: text, json, github and sarif."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from engine.lint.pipeline import LintReport
from engine.model.diagnostics import Diagnostic, Severity
from engine.model.source import YamlProblem, decode, read_document

RULES = {
    "FR001": "YAML syntax error",
    "FR002": "schema violation",
    "FR003": "duplicate step id",
    "FR004": "needs names a step that does not exist",
    "FR005": "dependency cycle",
    "FR006": "template syntax error",
    "FR007": "template references a step that is not an ancestor",
    "FR008": "template references an undeclared field",
    "FR009": "template references an undeclared input",
    "FR010": "persona file not found",
    "FR011": "code step call cannot be resolved or called",
    "FR012": "unknown contract",
    "FR013": "step band not among the flow's bands",
    "FR014": "duplicate YAML mapping key",
    "FR015": "prompt_file not found or outside the flow's folder",
    "FR016": "when expression does not compile",
    "FR017": "step never runs",
}


def _source_line(diagnostic: Diagnostic, cache: dict[str, list[str]]) -> str:
    if diagnostic.path not in cache:
        try:  # a file over the limit shows no line: it is never read whole
            cache[diagnostic.path] = decode(read_document(Path(diagnostic.path))).splitlines()
        except (OSError, YamlProblem):
            cache[diagnostic.path] = []
    lines = cache[diagnostic.path]
    return lines[diagnostic.line - 1] if 0 < diagnostic.line <= len(lines) else ""


def as_text(report: LintReport) -> str:
    """``path:line:col: RULE severity: message``, the source line and a caret; then a summary."""
    out: list[str] = []
    cache: dict[str, list[str]] = {}
    for diagnostic in report.diagnostics:
        d = diagnostic
        if not d.line:  # the file as a whole: no position, and nothing of it is shown
            out.append(f"{d.path}: {d.rule} {d.severity}: {d.message}")
            continue
        out.append(f"{d.path}:{d.line}:{d.column}: {d.rule} {d.severity}: {d.message}")
        line = _source_line(d, cache)
        if line:
            out.append(f"  {line}")
            out.append("  " + " " * (d.column - 1) + "^")
    named = {d.path for d in report.diagnostics}
    for path in report.files:
        if path in named:
            continue
        broken = [used for used in report.uses.get(path, ()) if used in named]
        out.append(f"{path}: see {', '.join(broken)}" if broken else f"{path}: ok")
    files = len(report.files)
    out.append(
        f"{files} file{'s' if files != 1 else ''} checked: "
        f"{report.errors} error{'s' if report.errors != 1 else ''}, "
        f"{report.warnings} warning{'s' if report.warnings != 1 else ''}"
    )
    return "\n".join(out)


def as_json(report: LintReport) -> str:
    """``{"files": [...], "diagnostics": [...]}``."""
    document = {"files": report.files, "diagnostics": [d.as_json() for d in report.diagnostics]}
    return json.dumps(document, indent=2)


def _github_escape(text: str, *, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def as_github(report: LintReport) -> str:
    """GitHub Actions workflow commands, one annotation per diagnostic."""
    lines = []
    for d in report.diagnostics:
        level = "error" if d.severity is Severity.ERROR else "warning"
        position = f"line={d.line},col={d.column}," if d.line else ""
        lines.append(
            f"::{level} file={_github_escape(d.path, prop=True)},{position}"
            f"title={d.rule}::{_github_escape(d.message)}"
        )
    return "\n".join(lines)


def as_sarif(report: LintReport) -> str:
    """SARIF 2.1.0: one run of the flowrunner tool, every file read listed as an artifact."""
    rules = [
        {"id": rule, "shortDescription": {"text": text}, "helpUri": _help(rule)}
        for rule, text in RULES.items()
    ]
    index = {rule: i for i, rule in enumerate(RULES)}
    results = [
        {
            "ruleId": d.rule,
            "ruleIndex": index[d.rule],
            "level": "error" if d.severity is Severity.ERROR else "warning",
            "message": {"text": d.message},
            "locations": [{"physicalLocation": _sarif_location(d)}],
        }
        for d in report.diagnostics
    ]
    document = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "flowrunner", "rules": rules}},
                "artifacts": [{"location": {"uri": Path(p).as_posix()}} for p in report.files],
                "results": results,
            }
        ],
    }
    return json.dumps(document, indent=2)


def _sarif_location(d: Diagnostic) -> dict[str, object]:
    """The file, and the region when the diagnostic has a position (line 0: the whole file)."""
    location: dict[str, object] = {"artifactLocation": {"uri": Path(d.path).as_posix()}}
    if d.line:
        location["region"] = {"startLine": d.line, "startColumn": d.column}
    return location


def _help(rule: str) -> str:
    return f"docs/lint-rules.md#{rule.lower()}"


FORMATS: dict[str, Callable[[LintReport], str]] = {
    "text": as_text,
    "json": as_json,
    "github": as_github,
    "sarif": as_sarif,
}
