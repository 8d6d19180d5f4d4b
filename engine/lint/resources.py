"""FR010 personas, FR012 contracts, FR013 bands, FR015 prompt files, FR011 code calls."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import calls
from engine.config import Project
from engine.lint.reporter import Reporter, shown_path
from engine.model.documents import AgentStep, CodeStep, Flow

MAX_PROMPT_FILE_BYTES = 1024 * 1024


def step_key_pointer(flow: Flow, index: int, key: str) -> str:
    """Where a step's effective ``key`` is written: on the step, or in `defaults`."""
    if key in flow.steps[index].model_fields_set:
        return f"/steps/{index}/{key}"
    return f"/defaults/{key}"


def check_personas(flow: Flow, raw: Flow, project: Project, report: Reporter) -> None:
    """FR010: every persona an agent step uses is a file inside the personas folder."""
    problems: dict[str, str | None] = {}
    for index, step in enumerate(flow.steps):
        if not isinstance(step, AgentStep) or step.persona is None:
            continue
        if step.persona not in problems:
            problems[step.persona] = _persona_problem(step.persona, project)
        problem = problems[step.persona]
        if problem is not None:
            report.at_value(step_key_pointer(raw, index, "persona"), "FR010", problem)


def _persona_problem(persona: str, project: Project) -> str | None:
    """Outside (a link out), or not a file; no server path is named (the API shows it)."""
    path = project.personas_dir / f"{persona}.md"
    if not project.inside_personas(path):
        return f"persona '{persona}' resolves outside personas/"
    if not path.is_file():  # False, not an error, for a dangling or looping link
        return f"persona '{persona}' not found: no file {_shown(path, project)}"
    return None


def check_contracts_and_bands(flow: Flow, raw: Flow, report: Reporter) -> None:
    """FR012 unknown contracts and FR013 bands the flow does not declare."""
    for position, name in enumerate(raw.defaults.contracts or []):
        if name not in flow.contracts:
            report.at_value(f"/defaults/contracts/{position}", "FR012", _no_contract(name, flow))
    for index, step in enumerate(raw.steps):
        if isinstance(step, AgentStep):
            for position, name in enumerate(step.contracts or []):
                if name not in flow.contracts:
                    pointer = f"/steps/{index}/contracts/{position}"
                    report.at_value(pointer, "FR012", _no_contract(name, flow))
        for position, band in enumerate(step.bands or []):
            if band not in (flow.bands or []):
                declared = ", ".join(flow.bands) if flow.bands else "none"
                report.at_value(
                    f"/steps/{index}/bands/{position}",
                    "FR013",
                    f"band '{band}' is not among the flow's bands (declared: {declared})",
                )


def _no_contract(name: str, flow: Flow) -> str:
    declared = ", ".join(flow.contracts) if flow.contracts else "none"
    return f"unknown contract '{name}' (declared: {declared})"


def load_prompt_files(flow: Flow, flow_path: Path, report: Reporter) -> dict[int, Path]:
    """FR015: every `prompt_file` exists inside the flow's folder; returns the readable ones."""
    folder = Path(os.path.realpath(flow_path.parent))
    found: dict[int, Path] = {}
    for index, step in enumerate(flow.steps):
        if not isinstance(step, AgentStep) or step.prompt_file is None:
            continue
        pointer = f"/steps/{index}/prompt_file"
        path = Path(os.path.realpath(folder / step.prompt_file))  # a looping link: not found
        if not path.is_relative_to(folder):
            report.at_value(
                pointer, "FR015", f"prompt_file '{step.prompt_file}' is outside the flow's folder"
            )
        elif not path.is_file():
            report.at_value(pointer, "FR015", f"prompt_file '{step.prompt_file}' not found")
        elif path.stat().st_size > MAX_PROMPT_FILE_BYTES:
            report.at_value(
                pointer,
                "FR015",
                f"prompt_file '{step.prompt_file}' is larger than {MAX_PROMPT_FILE_BYTES} bytes",
            )
        else:
            found[index] = path
    return found


def check_calls(flow: Flow, project: Project, report: Reporter) -> None:
    """FR011: each code step's `call` resolves safely and accepts ctx plus the `with` keys."""
    resolved: dict[str, Callable[..., Any] | calls.CallError] = {}
    for index, step in enumerate(flow.steps):
        if not isinstance(step, CodeStep):
            continue
        if step.call not in resolved:
            try:
                resolved[step.call] = calls.resolve(step.call, project.code_roots)
            except calls.CallError as exc:
                resolved[step.call] = exc
        function = resolved[step.call]
        if isinstance(function, calls.CallError):
            message = f"cannot resolve '{step.call}': {function}"
            if isinstance(function, calls.NotInRoots):
                message += f" ({', '.join(_root(root, project) for root in project.code_roots)})"
            report.at_value(f"/steps/{index}/call", "FR011", message)
            continue
        problem = calls.signature_problem(function, step.with_)
        if problem is not None:
            report.at_value(
                f"/steps/{index}/call",
                "FR011",
                f"'{step.call}' cannot be called with ctx and the `with` keys "
                f"({', '.join(step.with_) or 'none'}): {problem}",
            )


def _root(root: Path, project: Project) -> str:
    """A code root as messages name it: relative to the project when inside it, so no
    server path leaks through the HTTP API."""
    if root.is_relative_to(project.root):
        return str(root.relative_to(project.root))
    return shown_path(root)


def _shown(path: Path, project: Project) -> str:
    return str(path.relative_to(project.root)) if path.is_relative_to(project.root) else str(path)
