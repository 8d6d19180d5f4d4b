"""The one validation pipeline: YAML with positions, then pydantic, then the rules.

``lint``, launching a run and ``POST /v1/lint`` all call :func:`check_text` or
:func:`check_file`; the runtime only accepts the :class:`CheckedFlow` it
returns for a flow without errors. Bad input never raises: it comes back as
diagnostics.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import Project
from engine.lint import graph, resources, shape, templates
from engine.lint.reporter import Reporter, shown_path
from engine.model.diagnostics import Diagnostic, Severity
from engine.model.documents import AgentStep, Flow
from engine.model.source import Limits, YamlProblem, decode, load_yaml, read_document

FLOW_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class CheckedFlow:
    """A flow that passed every check: the only kind the runtime accepts.

    ``flow`` has its defaults applied, ``prompts`` maps each agent step to its
    prompt template (inline or read from its prompt_file), and ``order`` lists
    the steps so that each comes after everything it needs.
    """

    path: Path
    source: str
    flow: Flow
    prompts: dict[str, str]
    order: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FileResult:
    """The outcome of checking one file: its diagnostics, and the flow when it has no error."""

    path: str
    diagnostics: list[Diagnostic]
    checked: CheckedFlow | None = None
    prompt_files: tuple[str, ...] = ()


@dataclass(slots=True)
class LintReport:
    """The outcome of checking several files, as ``lint`` prints it."""

    files: list[str] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    uses: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The prompt files each flow file reads."""

    def add(self, result: FileResult) -> None:
        for path in (result.path, *result.prompt_files):
            if path not in self.files:
                self.files.append(path)
        self.diagnostics.extend(result.diagnostics)
        self.uses[result.path] = result.prompt_files

    @property
    def errors(self) -> int:
        return sum(d.severity is Severity.ERROR for d in self.diagnostics)

    @property
    def warnings(self) -> int:
        return len(self.diagnostics) - self.errors


DEFAULT_LIMITS = Limits()


def check_file(path: Path, project: Project, limits: Limits = DEFAULT_LIMITS) -> FileResult:
    """Check one flow file; one in ``flows/`` that resolves outside it is refused unread."""
    shown = shown_path(path)
    if project.links_outside_flows(path):
        return FileResult(shown, [_outside_flows(shown)])
    try:
        text = decode(read_document(path, limits), limits)
    except OSError as exc:
        return FileResult(shown, [Diagnostic(shown, 1, 1, "FR001", f"cannot read: {exc.strerror}")])
    except YamlProblem as problem:
        return FileResult(shown, [_yaml_diagnostic(shown, problem)])
    return check_text(text, path, project, limits, shown=shown)


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while one document is checked.

    Loading a large flow allocates hundreds of thousands of small containers
    and no reference cycles; the collector's full passes over them made the
    time grow faster than the document (measured in bench/lint_bench.py).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def check_text(
    text: str,
    path: Path,
    project: Project,
    limits: Limits = DEFAULT_LIMITS,
    *,
    shown: str | None = None,
) -> FileResult:
    """Check a flow document whose file is (or would be) ``path``."""
    with _no_cyclic_gc():
        return _check_text(text, path, project, limits, shown or shown_path(path))


def _check_text(
    text: str,
    path: Path,
    project: Project,
    limits: Limits,
    shown: str,
) -> FileResult:
    try:
        data, source = load_yaml(text, limits)
    except YamlProblem as problem:
        return FileResult(shown, [_yaml_diagnostic(shown, problem)])
    report = Reporter(shown, source)
    raw = shape.check_shape(data, report)
    if raw is None:
        return FileResult(shown, sorted(report.found, key=Diagnostic.sort_key))
    flow = raw.with_defaults()
    step_graph = graph.check_graph(raw, report)
    resources.check_contracts_and_bands(flow, raw, report)
    resources.check_personas(flow, raw, project, report)
    prompt_files = _read_prompt_files(raw, path, report)
    resources.check_calls(flow, project, report)
    acyclic = not any(d.rule in ("FR003", "FR005") for d in report.found)
    order = step_graph.execution_order() if acyclic else []
    ancestry = step_graph.ancestry(order) if acyclic else None
    templates.TemplateCheck(flow, report, ancestry).run(templates.sites(flow, prompt_files))
    diagnostics = sorted(set(report.found), key=Diagnostic.sort_key)
    read = tuple(shown for _, shown, _ in prompt_files.values())
    if report.has_errors:
        return FileResult(shown, diagnostics, prompt_files=read)
    prompts = {
        step.id: step.prompt if step.prompt is not None else prompt_files[index][2]
        for index, step in enumerate(flow.steps)
        if isinstance(step, AgentStep)
    }
    checked = CheckedFlow(path, text, flow, prompts, tuple(order))
    return FileResult(shown, diagnostics, checked, read)


def _read_prompt_files(
    flow: Flow, path: Path, report: Reporter
) -> dict[int, tuple[Path, str, str]]:
    read: dict[int, tuple[Path, str, str]] = {}
    for index, file in resources.load_prompt_files(flow, path, report).items():
        shown = shown_path(file)
        try:
            limits = Limits(max_bytes=resources.MAX_PROMPT_FILE_BYTES)
            text = decode(read_document(file, limits), limits)
        except (OSError, YamlProblem) as exc:
            reason = exc.message if isinstance(exc, YamlProblem) else exc.strerror
            report.at_value(
                f"/steps/{index}/prompt_file", "FR015", f"cannot read prompt_file {shown}: {reason}"
            )
            continue
        read[index] = (file, shown, text)
    return read


def _outside_flows(shown: str) -> Diagnostic:
    """About the whole file (line 0), so no format shows a line of the file it links to."""
    message = "resolves outside flows/: a flow is read only from inside that folder"
    return Diagnostic(shown, 0, 0, "FR001", message)


def _yaml_diagnostic(shown: str, problem: YamlProblem) -> Diagnostic:
    return Diagnostic(shown, problem.line, problem.column, problem.rule, problem.message)


def flow_files(paths: Iterable[Path]) -> list[Path]:
    """The flow files named by ``paths``: files as given, folders searched recursively."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.suffix in FLOW_SUFFIXES and p.is_file())
            )
        else:
            found.append(path)
    return found


def lint_paths(paths: Iterable[Path], project: Project) -> LintReport:
    """Check every flow file under ``paths``; flow names must be unique among them."""
    report = LintReport()
    names: dict[str, str] = {}
    for path in flow_files(paths):
        result = check_file(path, project)
        report.add(result)
        if result.checked is None:
            continue
        name = result.checked.flow.name
        if name in names:
            report.diagnostics.append(_duplicate_name(result, name, names[name]))
        else:
            names[name] = result.path
    report.diagnostics.sort(key=Diagnostic.sort_key)
    return report


def _duplicate_name(result: FileResult, name: str, other: str) -> Diagnostic:
    assert result.checked is not None
    _, source = load_yaml(result.checked.source)
    line, column, _ = source.value_at("/name")
    message = f"flow name '{name}' is already used by {other}"
    return Diagnostic(result.path, line, column, "FR002", message, "/name")
