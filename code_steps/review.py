"""Code steps of the ``code-review`` flow.

``verify`` turns the reviewers' outputs into a checked list of findings;
``publish`` writes the approved result to a markdown file.

Reviewers write findings one per line, as the flow's ``findings`` contract asks::

    - [high] path/file.py:12 \u2014 message

A reviewer with ``output: json`` may instead return ``{"findings": [{"severity",
"path", "line", "message"}, ...]}``; both shapes are read.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from code_steps import (
    Context,
    as_bool,
    as_int,
    as_str_list,
    flow_name,
    parse_verdict,
    settled_data,
)

SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high", "critical")
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
AUDIENCES = frozenset({"team", "public"})
_VERDICTS = frozenset({"confirmed", "refuted", "unsure"})
_SNIPPET_RADIUS = 3
DUPLICATE = "duplicate of an earlier finding"

# "- [high] rest of the line": a finding, well formed or not.
_FINDING_HEAD = re.compile(r"^\s*[-*]\s*\[(?P<severity>[A-Za-z]+)\]\s*(?P<rest>.*)$")
# "path/file.py:12 - message" (also :12-14, and an em/en dash or a colon as separator).
_CITATION = re.compile(
    r"^(?P<path>[^\s:]+):(?P<line>\d+)(?:-\d+)?(?:\s*[\u2014\u2013:-]+\s*|\s+)(?P<message>\S.*)$"
)


@dataclass(frozen=True)
class Finding:
    """One reviewer finding; ``line`` 0 and ``path`` "" mean no citation was given."""

    severity: str
    path: str
    line: int
    message: str
    source: str
    verdict: str | None = None

    def key(self) -> tuple[str, int, str]:
        """Identity used to drop the same finding reported by two reviewers."""
        return (self.path, self.line, " ".join(self.message.casefold().split()))


def severity_rank(name: str) -> int:
    """Rank of a severity name (``info`` lowest); unknown names raise ValueError."""
    try:
        return _RANK[name.strip().casefold()]
    except KeyError:
        raise ValueError(
            f"unknown severity {name!r}; expected one of {', '.join(SEVERITIES)}"
        ) from None


def parse_findings(text: str, source: str) -> list[Finding]:
    """Every ``- [severity] path:line — message`` line of a reviewer's output."""
    findings = []
    for raw in text.splitlines():
        head = _FINDING_HEAD.match(raw.replace("`", ""))
        if head is None:
            continue
        severity, rest = head["severity"].casefold(), head["rest"].strip()
        cited = _CITATION.match(rest)
        if cited is None:
            findings.append(Finding(severity, "", 0, rest, source))
        else:
            path, line = cited["path"], int(cited["line"])
            findings.append(Finding(severity, path, line, cited["message"].strip(), source))
    return findings


def findings_from_data(data: Any, source: str) -> list[Finding]:
    """Findings of a JSON reviewer: a list, or a mapping with a ``findings`` list."""
    items = data.get("findings") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return []
    findings = []
    for item in items:
        if not isinstance(item, dict):
            continue
        line = item.get("line")
        findings.append(
            Finding(
                severity=str(item.get("severity", "")).casefold(),
                path=str(item.get("path", "")).strip(),
                line=line if isinstance(line, int) and not isinstance(line, bool) else 0,
                message=str(item.get("message", "")).strip(),
                source=source,
            )
        )
    return findings


def collect_findings(ctx: Context, sources: Iterable[str]) -> list[Finding]:
    """Findings of every completed source step, in order; skipped steps give none."""
    findings: list[Finding] = []
    for step_id in sources:
        step = ctx.steps.get(step_id)
        if step is None or step.skipped or step.status != "completed":
            continue
        if step.data is not None:
            findings.extend(findings_from_data(step.data, step_id))
        else:
            findings.extend(parse_findings(step.output, step_id))
    return findings


class SourceTree:
    """Read-only view of the reviewed repository, caching the lines of each file."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._lines: dict[str, list[str] | None] = {}

    def resolve(self, path: str) -> Path | None:
        """The file a finding cites, or None when it lies outside the repository."""
        relative = Path(path)
        if relative.is_absolute():
            return None
        candidate = (self.root / relative).resolve()
        return candidate if candidate.is_relative_to(self.root) else None

    def lines(self, path: str) -> list[str] | None:
        """The lines of a cited file, or None when it is not a readable file."""
        if path not in self._lines:
            target = self.resolve(path)
            if target is None or not target.is_file():
                self._lines[path] = None
            else:
                text = target.read_text(encoding="utf-8", errors="replace")
                self._lines[path] = text.splitlines()
        return self._lines[path]

    def citation_problem(self, finding: Finding) -> str | None:
        """Why a finding's ``path:line`` citation does not hold, or None when it does."""
        if not finding.path or finding.line < 1:
            return "no path:line citation"
        target = self.resolve(finding.path)
        if target is None:
            return f"{finding.path} is outside the repository"
        lines = self.lines(finding.path)
        if lines is None:
            return f"{finding.path} {'is not a file' if target.exists() else 'does not exist'}"
        if finding.line > len(lines):
            return f"{finding.path} has {len(lines)} lines, not {finding.line}"
        return None

    def snippet(self, finding: Finding) -> str:
        """The cited line with a few lines around it, numbered."""
        lines = self.lines(finding.path) or []
        first = max(1, finding.line - _SNIPPET_RADIUS)
        last = min(len(lines), finding.line + _SNIPPET_RADIUS)
        return "\n".join(f"{n:>5} | {lines[n - 1]}" for n in range(first, last + 1))


def screen(
    findings: Iterable[Finding], tree: SourceTree, threshold: int
) -> Iterator[tuple[Finding, str | None]]:
    """Each finding with the reason it is rejected (None when it passes the checks)."""
    seen: set[tuple[str, int, str]] = set()
    for finding in findings:
        if finding.severity not in _RANK:
            yield finding, f"unknown severity {finding.severity!r}"
        elif _RANK[finding.severity] < threshold:
            yield finding, f"below minimum severity {SEVERITIES[threshold]}"
        elif finding.key() in seen:
            yield finding, DUPLICATE
        else:
            seen.add(finding.key())
            yield finding, tree.citation_problem(finding)


def verifier_prompt(finding: Finding, snippet: str) -> str:
    """The prompt asking the ``verifier`` sub-agent to confirm or refute one finding."""
    return (
        "Check one code-review finding against the source below. Answer in at most "
        "three sentences, then end with one line: `verdict: confirmed`, "
        "`verdict: refuted` or `verdict: unsure`.\n\n"
        f"Finding ({finding.severity}, reported by {finding.source}): {finding.message}\n"
        f"Location: {finding.path}:{finding.line}\n\n"
        f"```\n{snippet}\n```\n"
    )


def ask_verifier(ctx: Context, finding: Finding, tree: SourceTree) -> tuple[Finding, str | None]:
    """Ask the verifier about one finding: the finding with its verdict, and a reason to reject."""
    reply = ctx.dispatch_sync("verifier", verifier_prompt(finding, tree.snippet(finding)))
    verdict = parse_verdict(reply, _VERDICTS, default="unsure")
    checked = replace(finding, verdict=verdict)
    if verdict == "refuted":
        first_line = next((line.strip() for line in reply.splitlines() if line.strip()), "")
        return checked, f"refuted by verifier: {first_line}"
    return checked, None


def _sort_key(finding: Finding) -> tuple[int, str, int]:
    return (-_RANK[finding.severity], finding.path, finding.line)


def _rejection(finding: Finding, reason: str) -> dict[str, Any]:
    return {**asdict(finding), "reason": reason}


def verify(
    ctx: Context,
    min_severity: str = "medium",
    sources: list[str] | str | None = None,
    repo: str | None = None,
    double_check: bool | str = False,
    max_checks: int | str = 20,
) -> dict[str, Any]:
    """Keep the reviewers' findings that are severe enough and cite a real ``file:line``.

    ``sources`` names the reviewer steps to read (default: every step in
    ``ctx.steps``); ``repo`` defaults to the ``repo`` input. A finding reported
    twice (same place, same message) is kept once and counted in ``duplicates``.
    With ``double_check``, up to ``max_checks`` surviving findings, most severe
    first, are sent one by one to the ``verifier`` persona; a refuted one is
    rejected. Returns ``{count, min_severity, findings, rejected, duplicates,
    by_severity, double_checked}``; each rejected entry carries a ``reason``.
    """
    threshold = severity_rank(min_severity)
    step_ids = as_str_list(sources) if sources is not None else list(ctx.steps)
    tree = SourceTree(Path(repo if repo is not None else str(ctx.inputs.get("repo", "."))))
    screened = list(screen(collect_findings(ctx, step_ids), tree, threshold))
    kept = sorted((f for f, reason in screened if reason is None), key=_sort_key)
    rejected = [_rejection(f, r) for f, r in screened if r is not None and r != DUPLICATE]
    checks = min(len(kept), as_int(max_checks, "max_checks")) if as_bool(double_check) else 0
    confirmed: list[Finding] = []
    for finding in kept[:checks]:
        checked, reason = ask_verifier(ctx, finding, tree)
        if reason is None:
            confirmed.append(checked)
        else:
            rejected.append(_rejection(checked, reason))
    confirmed += kept[checks:]
    by_severity = {name: 0 for name in reversed(SEVERITIES)}
    for finding in confirmed:
        by_severity[finding.severity] += 1
    return {
        "count": len(confirmed),
        "min_severity": SEVERITIES[threshold],
        "findings": [asdict(finding) for finding in confirmed],
        "rejected": rejected,
        "duplicates": sum(reason == DUPLICATE for _, reason in screened),
        "by_severity": by_severity,
        "double_checked": checks,
    }


def _finding_line(item: dict[str, Any]) -> str:
    verdict = f" ({item['verdict']})" if item.get("verdict") else ""
    return (
        f"- **{item['severity']}** `{item['path']}:{item['line']}` \u2014 "
        f"{item['message']}{verdict}"
    )


def render_markdown(
    title: str, verified: dict[str, Any], decision: Any, audience: str, run_id: str
) -> str:
    """The published review: verified findings, plus rejected ones for the team."""
    findings = verified.get("findings") or []
    parts = [f"# {title}", "", f"Run `{run_id}`, {len(findings)} verified finding(s).", ""]
    parts += [_finding_line(item) for item in findings] or ["No verified findings."]
    rejected = verified.get("rejected") or []
    if audience == "team" and rejected:
        parts += ["", "## Rejected", ""]
        parts += [f"{_finding_line(item)} \u2014 _{item['reason']}_" for item in rejected]
    if isinstance(decision, dict) and decision.get("approved"):
        comment = f": {decision['comment']}" if decision.get("comment") else ""
        parts += ["", f"Approved by {decision.get('by') or 'unknown'}{comment}"]
    return "\n".join(parts) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.casefold()).strip("-.") or "run"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def publish(
    ctx: Context,
    audience: str = "team",
    out_dir: str = ".flowrunner/reports",
    title: str = "Code review",
    source: str = "verify",
    gate: str = "sign_off",
) -> str:
    """Write the verified findings of step ``source`` to ``<out_dir>/<flow>-<run>.md``.

    A ``public`` audience gets the verified findings only; the ``team`` one also
    gets the rejected findings with their reasons. The approval of step ``gate``
    (who, and their comment) closes the file. Returns the written path. A rerun
    of the step overwrites the same file.
    """
    if audience not in AUDIENCES:
        raise ValueError(f"audience must be one of {sorted(AUDIENCES)}, got {audience!r}")
    verified = settled_data(ctx, source)
    if not isinstance(verified, dict):
        raise ValueError(f"step {source!r} has no verified findings to publish")
    run_id = str(ctx.run_id)
    markdown = render_markdown(title, verified, settled_data(ctx, gate), audience, run_id)
    path = Path(out_dir) / f"{_slug(flow_name(ctx))}-{_slug(run_id)}.md"
    write_atomically(path, markdown)
    return str(path)
