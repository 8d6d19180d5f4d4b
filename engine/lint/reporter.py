"""Collects the diagnostics of one flow file, turning JSON Pointers into positions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.model.diagnostics import Diagnostic, Severity
from engine.model.source import SourceMap


def shown_path(path: Path) -> str:
    """How a file is named in diagnostics: relative to the current directory when inside it."""
    absolute = path.absolute()
    cwd = Path.cwd()
    return str(absolute.relative_to(cwd)) if absolute.is_relative_to(cwd) else str(path)


@dataclass(slots=True)
class Reporter:
    """Diagnostics of the file shown as ``path``, located through its source map."""

    path: str
    source: SourceMap
    found: list[Diagnostic] = field(default_factory=list)

    def at_value(
        self, pointer: str, rule: str, message: str, severity: Severity = Severity.ERROR
    ) -> None:
        """Report at the value ``pointer`` names (or its nearest located ancestor)."""
        line, column, _ = self.source.value_at(pointer)
        self.at(line, column, rule, message, pointer, severity=severity)

    def at_key(
        self, pointer: str, rule: str, message: str, severity: Severity = Severity.ERROR
    ) -> None:
        """Report at the key naming ``pointer`` (for unknown keys and whole members)."""
        line, column, _ = self.source.key_at(pointer)
        self.at(line, column, rule, message, pointer, severity=severity)

    def at(
        self,
        line: int,
        column: int,
        rule: str,
        message: str,
        pointer: str,
        *,
        path: str | None = None,
        severity: Severity = Severity.ERROR,
    ) -> None:
        self.found.append(
            Diagnostic(path or self.path, line, column, rule, message, pointer, severity)
        )

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.found)
