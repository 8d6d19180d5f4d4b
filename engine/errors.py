"""The engine's few error types; drivers' errors are translated into these at the edges.

The HTTP API maps each to one status code, the CLI to one line and an exit code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class FlowrunnerError(Exception):
    """Base of every error a user can cause or meet."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(FlowrunnerError):
    """No such flow, run or step."""


class Conflict(FlowrunnerError):
    """Not allowed in the current state: a decided gate, a finished run, a reused key."""


class InvalidInput(FlowrunnerError):
    """Inputs, a band or a decision payload that do not match the flow; ``details`` lists them."""


class NotAllowed(FlowrunnerError):
    """The identity may not do this (not an approver, or deciding its own run)."""


class InvalidFlow(FlowrunnerError):
    """A flow that does not pass validation; ``details`` holds its diagnostics."""

    def __init__(self, message: str, diagnostics: Sequence[Any]) -> None:
        super().__init__(message, list(diagnostics))


class StoreError(FlowrunnerError):
    """The store failed (connection lost, disk full, locked too long)."""


class ConfigError(FlowrunnerError):
    """The operator's configuration is wrong (unknown backend, missing command, ...)."""
