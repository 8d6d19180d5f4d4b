"""FR006 template syntax, FR016 `when`, and what templates read: FR007 steps, FR008 fields,
FR009 inputs. Lines inside block scalars and prompt files map to the file's own lines."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError

from engine.lint.reporter import Reporter
from engine.model.diagnostics import pointer_join
from engine.model.documents import AgentStep, ApprovalStep, CodeStep, Flow
from engine.model.graph import Ancestry
from engine.templates import Reference, parse_expression, references, template_references


@dataclass(frozen=True, slots=True)
class Site:
    """One template of a flow: who uses it, its text, and where it is written."""

    owner: str | None  # the step rendering it; None for the report, which sees every step
    source: str
    pointer: str
    expression: bool = False
    file: Path | None = None  # a prompt_file: positions are inside that file
    shown: str = ""  # how that file is named in diagnostics


def sites(flow: Flow, prompt_files: dict[int, tuple[Path, str, str]]) -> Iterator[Site]:
    """Every template of ``flow``; ``prompt_files`` maps step index to (path, shown, text)."""
    for index, step in enumerate(flow.steps):
        base = f"/steps/{index}"
        if isinstance(step.when, str):
            yield Site(step.id, step.when, f"{base}/when", expression=True)
        if isinstance(step, AgentStep):
            if step.prompt is not None:
                yield Site(step.id, step.prompt, f"{base}/prompt")
            elif index in prompt_files:
                path, shown, text = prompt_files[index]
                yield Site(step.id, text, f"{base}/prompt_file", file=path, shown=shown)
        elif isinstance(step, CodeStep):
            yield from _value_sites(step.id, step.with_, f"{base}/with")
        elif isinstance(step, ApprovalStep) and step.message is not None:
            yield Site(step.id, step.message, f"{base}/message")
    if flow.report is not None:
        yield Site(None, flow.report, "/report")


def _value_sites(owner: str, value: Any, pointer: str) -> Iterator[Site]:
    if isinstance(value, str):
        yield Site(owner, value, pointer)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _value_sites(owner, item, pointer_join(pointer, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _value_sites(owner, item, pointer_join(pointer, position))


class TemplateCheck:
    """Parses every site, then checks what each one reads against the flow."""

    def __init__(self, flow: Flow, report: Reporter, ancestry: Ancestry | None) -> None:
        self.flow = flow
        self.report = report
        self.ancestry = ancestry
        self.steps = {step.id: step for step in reversed(flow.steps)}
        self.read: dict[str, list[tuple[Site, Reference]]] = defaultdict(list)

    def run(self, all_sites: Iterator[Site]) -> None:
        for site in all_sites:
            for reference in self._parse(site):
                self._check(site, reference)
        self._check_ancestry()

    def _parse(self, site: Site) -> list[Reference]:
        try:
            if not site.expression:
                return template_references(site.source)
            tree = parse_expression(site.source)
        except TemplateSyntaxError as exc:
            if site.expression:
                self._at(
                    site, exc.lineno or 1, None, "FR016", f"`when` does not compile: {exc.message}"
                )
            else:
                self._at(
                    site, exc.lineno or 1, None, "FR006", f"template syntax error: {exc.message}"
                )
            return []
        return list(references(tree))

    def _check(self, site: Site, ref: Reference) -> None:
        if ref.kind == "input":
            if ref.name not in self.flow.inputs:
                declared = ", ".join(self.flow.inputs) or "none"
                message = f"inputs.{ref.name} is not a declared input (declared: {declared})"
                self._at(site, ref.lineno, ref.text, "FR009", message)
            return
        step = self.steps.get(ref.name)
        if step is None:
            message = f"steps.{ref.name} is not a step of this flow"
            self._at(site, ref.lineno, ref.text, "FR007", message)
            return
        if ref.kind == "field":
            declared_fields = step.fields if isinstance(step, AgentStep) else []
            if ref.field not in declared_fields:
                declared = ", ".join(declared_fields) or "none"
                message = (
                    f"steps.{ref.name}.fields.{ref.field}: step '{ref.name}' declares no field "
                    f"'{ref.field}' (declared: {declared})"
                )
                self._at(site, ref.lineno, ref.text, "FR008", message)
        if site.owner is not None:
            self.read[site.owner].append((site, ref))

    def _check_ancestry(self) -> None:
        if self.ancestry is None:
            return  # the graph has a cycle (FR005): ancestry is not defined
        for owner, reads in self.read.items():
            ancestors = self.ancestry.ancestors_among(owner, {ref.name for _, ref in reads})
            reported: set[tuple[str, str]] = set()
            for site, ref in reads:
                if ref.name in ancestors or (site.pointer, ref.name) in reported:
                    continue
                reported.add((site.pointer, ref.name))
                if ref.name == owner:
                    message = f"step '{owner}' reads steps.{owner}, its own result"
                else:
                    message = (
                        f"steps.{ref.name} is not an ancestor of step '{owner}' "
                        f"(add '{ref.name}' to its needs)"
                    )
                self._at(site, ref.lineno, f"steps.{ref.name}", "FR007", message)

    def _at(self, site: Site, lineno: int, text: str | None, rule: str, message: str) -> None:
        if site.file is not None:
            line_text = _line(site.source, lineno)
            column = _column(line_text, text, 0, 1)
            self.report.at(lineno, column, rule, message, site.pointer, path=site.shown)
            return
        line, column = self._locate(site, lineno, text)
        self.report.at(line, column, rule, message, site.pointer)

    def _locate(self, site: Site, lineno: int, text: str | None) -> tuple[int, int]:
        """The file position of ``text`` on line ``lineno`` of a template written in the flow.

        A literal block (``|``) keeps its lines, so template line n is file line
        n after the indicator. Other styles fold or escape lines, so the text is
        searched for in the lines the scalar can cover, and a template error
        without a text is put at the scalar's start.
        """
        position = self.report.source.value_at(site.pointer)
        source = self.report.source
        if position.style == "|":
            line = position.line + lineno
            line_text = source.line_text(line)
            indent = len(line_text) - len(line_text.lstrip(" "))
            return line, _column(line_text, text, 0, indent + 1)
        if text:
            for line in range(position.line, position.line + site.source.count("\n") + 2):
                start = position.column - 1 if line == position.line else 0
                found = source.line_text(line).find(text, start)
                if found >= 0:
                    return line, found + 1
        return position.line, position.column


def _line(text: str, lineno: int) -> str:
    lines = text.splitlines()
    return lines[lineno - 1] if 0 < lineno <= len(lines) else ""


def _column(line_text: str, text: str | None, start: int, fallback: int) -> int:
    if text:
        found = line_text.find(text, start)
        if found >= 0:
            return found + 1
    return fallback
