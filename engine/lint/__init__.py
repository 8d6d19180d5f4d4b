"""Flow validation: the pipeline shared by ``lint``, launch and the HTTP API, and its output."""

from engine.lint.pipeline import (
    CheckedFlow,
    FileResult,
    LintReport,
    check_file,
    check_text,
    flow_files,
    lint_paths,
)

__all__ = [
    "CheckedFlow",
    "FileResult",
    "LintReport",
    "check_file",
    "check_text",
    "flow_files",
    "lint_paths",
]
