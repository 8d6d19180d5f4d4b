"""Diagnostics: what every check reports, with the position of the offending node."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in a flow document; line and column are 1-based, or both 0 when
    the problem is the file as a whole (a file refused unread)."""

    path: str
    line: int
    column: int
    rule: str
    message: str
    pointer: str = ""
    severity: Severity = Severity.ERROR

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.path, self.line, self.column, self.rule, self.message)

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "rule": self.rule,
            "severity": str(self.severity),
            "message": self.message,
            "pointer": self.pointer,
        }


def pointer_join(parent: str, key: str | int) -> str:
    """Extend a JSON Pointer (RFC 6901) by one reference token."""
    token = str(key).replace("~", "~0").replace("/", "~1")
    return f"{parent}/{token}"
