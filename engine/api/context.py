"""What every route needs: the project, the store, identities and live frames."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from starlette.exceptions import HTTPException

from engine import errors
from engine.api.frames import Frames
from engine.api.sessions import CSRF_HEADER, Sessions
from engine.config import Project
from engine.lint import CheckedFlow, FileResult, check_file
from engine.model.documents import AgentStep
from engine.runner.snapshot import Snapshot
from engine.store.base import Store

ANONYMOUS = "anonymous"

ERRORS: dict[type[errors.FlowrunnerError], tuple[int, str]] = {
    errors.NotFound: (404, "not_found"),
    errors.Conflict: (409, "conflict"),
    errors.NotAllowed: (403, "not_allowed"),
    errors.InvalidInput: (422, "invalid_input"),
    errors.InvalidFlow: (422, "invalid_flow"),
    errors.StoreError: (503, "store_unavailable"),
    errors.ConfigError: (500, "configuration"),
}
"""Engine error type -> (HTTP status, error code): the one table the API (and the console's
error pages) map through."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def error_status(exc: errors.FlowrunnerError) -> tuple[int, str]:
    """The (HTTP status, error code) of an engine error."""
    return next(
        (mapped for kind, mapped in ERRORS.items() if isinstance(exc, kind)), (500, "error")
    )


@dataclass
class Api:
    """Set on ``app.state.api``; ``tokens`` maps bearer tokens to identities."""

    project: Project
    store: Store
    tokens: dict[str, str] | None = None
    frames: Frames = field(default_factory=Frames)
    on_change: Callable[[], None] = lambda: None
    """Called after a change a worker should see at once (a launch, a decision, a retry)."""
    checked: dict[Path, tuple[tuple[int, ...], CheckedFlow]] = field(default_factory=dict)
    """Validated flows by file, with the file signature they were checked at."""

    snapshots: dict[Path, tuple[CheckedFlow, Snapshot]] = field(default_factory=dict)
    """The launch snapshot of each validated flow above (taken once per check)."""

    looks: dict[Path, asyncio.Future[FileResult]] = field(default_factory=dict)
    """Looks at a flow's files that are queued and not yet started (see :meth:`look`)."""

    sessions: Sessions = field(default_factory=Sessions)
    """The web console's signed session cookies (a random key unless ``serve`` sets one)."""

    def changed(self, run_id: str) -> None:
        """A request changed ``run_id``: the worker looks for work, feeds and streams read it."""
        self.on_change()
        self.frames.changed(run_id)

    def snapshot(self, checked: CheckedFlow) -> Snapshot:
        """The snapshot a launch of ``checked`` (from :meth:`checked_flow`) stores. It is taken
        once per check: a new check (a flow, prompt or persona file changed) takes a new one."""
        path = Path(checked.path)
        cached = self.snapshots.get(path)
        if cached is None or cached[0] is not checked:
            cached = self.snapshots[path] = (checked, Snapshot.take(checked, self.project))
        return cached[1]

    async def look(self, path: Path) -> FileResult:
        """The flow in ``path`` checked against its files as they are after this call began.

        Requests that ask while a look at the same flow is queued share it: it starts
        after all of them asked, so each still sees every edit made before its request,
        and a burst of launches stats the files once rather than once per launch.
        """
        look = self.looks.get(path)
        if look is None:
            loop = asyncio.get_running_loop()
            look = self.looks[path] = loop.create_future()
            loop.call_soon(self._look, path, look)
        return await asyncio.shield(look)  # a cancelled request leaves the look to the others

    def _look(self, path: Path, look: asyncio.Future[FileResult]) -> None:
        del self.looks[path]
        try:
            look.set_result(self.checked_flow(path))
        except Exception as exc:  # every request that shares the look gets the error
            look.set_exception(exc)

    def checked_flow(self, path: Path) -> FileResult:
        """The flow in ``path`` checked, reusing the last check while no file it reads changed."""
        signature = _signature(path, self.project.personas_dir)
        cached = self.checked.get(path)
        if cached is not None and cached[0] == signature + _prompt_signature(cached[1]):
            return FileResult(str(path), [], cached[1])
        result = check_file(path, self.project)
        if result.checked is not None:
            self.checked[path] = (signature + _prompt_signature(result.checked), result.checked)
        return result


def _stat(path: Path | str) -> tuple[int, ...]:
    try:
        found = os.stat(path)
    except OSError:
        return (-1,)
    return (found.st_mtime_ns, found.st_size)


def _signature(path: Path, personas: Path) -> tuple[int, ...]:
    """The flow file's and every persona file's (mtime, size), in name order."""
    try:
        with os.scandir(personas) as entries:
            names = sorted(entry.path for entry in entries if entry.name.endswith(".md"))
    except OSError:
        names = []
    return _stat(path) + _stat(personas) + tuple(n for name in names for n in _stat(name))


def _prompt_signature(checked: CheckedFlow) -> tuple[int, ...]:
    folder = checked.path.parent
    return tuple(
        n
        for step in checked.flow.steps
        if isinstance(step, AgentStep) and step.prompt_file
        for n in _stat(folder / step.prompt_file)
    )


async def api(request: Request) -> Api:
    found: Api = request.app.state.api
    return found


async def identity(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The identity of the bearer token (``anonymous`` when the API has no tokens), or of the
    web console's session cookie: then an unsafe method (POST, ...) must also send the
    session's CSRF token as ``X-CSRF-Token`` (403 otherwise).
    Dependencies are coroutines: FastAPI runs a plain function in a thread pool."""
    context: Api = request.app.state.api
    tokens = context.tokens
    if not tokens:
        return ANONYMOUS
    if authorization is None:
        session = context.sessions.read(request)
        if session is not None and session.who is not None and session.who in tokens.values():
            if request.method not in SAFE_METHODS and not session.csrf_matches(
                request.headers.get(CSRF_HEADER)
            ):
                raise HTTPException(403, "the session's X-CSRF-Token header is required")
            return session.who
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or token not in tokens:
        raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
    return tokens[token]


Identity = Annotated[str, Depends(identity)]
Context = Annotated[Api, Depends(api)]


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one shape of every error the API returns."""
    return {"error": {"code": code, "message": message, "details": details}}


def plain_json(value: Any, where: str = "body") -> None:
    """Refuse what JSON parsing lets through but nothing can store or send back:
    lone surrogates in strings, and non-finite numbers (NaN, Infinity, 1e999)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: not a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            plain_json(key, where)
            plain_json(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            plain_json(item, f"{where}[{index}]")
