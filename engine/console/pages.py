"""What every console page needs: the templates, the viewer's session, the safety headers.

Pages are Jinja templates of ``engine/console/templates`` rendered by a plain
:class:`jinja2.Environment` with autoescape on (not the flow sandbox: nothing a flow or
a run holds is ever a template here, only a value escaped into one). Every response of
the console carries :data:`HEADERS`: a Content-Security-Policy allowing nothing but this
server's own scripts, styles, images and connections, and no inline script or style.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import jinja2
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import HTMLResponse, RedirectResponse, Response

from engine.api.context import ANONYMOUS, Api, error_status
from engine.api.sessions import CSRF_FIELD, Session
from engine.errors import FlowrunnerError

HERE = Path(__file__).parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
PREVIEW = 240
"""Characters of an output shown in a list (the step's page shows it all)."""
FULL = 200_000
"""Characters of one value shown on a step's page before a link to see all of it."""
MAX_FIELDS = 1000


def _when(value: float | None) -> str:
    if value is None:
        return ""
    moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return ""
    seconds = max(0.0, end - start)
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _preview(value: Any, size: int = PREVIEW) -> str:
    text = value if isinstance(value, str) else _pretty(value)
    return text if len(text) <= size else text[:size] + "…"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=_when, preview=_preview, pretty=_pretty, duration=_duration, quote=quote
    )
    return env


TEMPLATES = _environment()


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking (``who`` None: nobody signed in, with tokens configured), the session's
    CSRF token, and whether its cookie must be (re)set on the response."""

    who: str | None
    session: Session
    fresh: bool
    open: bool
    """No tokens configured: the console is open (loopback only) and ``who`` is anonymous."""


class SignInRequired(Exception):
    """A page that needs a signed-in identity, asked for without one."""


class CsrfRefused(Exception):
    """A console post without its session's CSRF token."""


def viewer(request: Request) -> Viewer:
    """The request's viewer; a new session when it has none (or one no longer valid)."""
    context: Api = request.app.state.api
    tokens = context.tokens
    session = context.sessions.read(request)
    if not tokens:
        if session is None:
            return Viewer(ANONYMOUS, Session.new(ANONYMOUS), True, True)
        return Viewer(ANONYMOUS, session, False, True)
    if session is None:
        return Viewer(None, Session.new(None), True, False)
    if session.who is not None and session.who not in tokens.values():
        return Viewer(None, Session.new(None), True, False)  # an identity no longer configured
    return Viewer(session.who, session, False, False)


def signed_in(request: Request) -> tuple[Viewer, str]:
    """The viewer and its identity; :class:`SignInRequired` when nobody is signed in."""
    found = viewer(request)
    if found.who is None:
        raise SignInRequired
    return found, found.who


async def posted(request: Request, session: Session) -> dict[str, list[str]]:
    """The form a console page posted (``application/x-www-form-urlencoded``), once its CSRF
    token matched the session's (:class:`CsrfRefused` otherwise)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    fields: dict[str, list[str]] = {}
    for name, value in parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_FIELDS):
        fields.setdefault(name, []).append(value)
    sent = fields.get(CSRF_FIELD)
    if not sent or not session.csrf_matches(sent[0]):
        raise CsrfRefused
    return fields


def first(fields: dict[str, list[str]], name: str, default: str = "") -> str:
    return (fields.get(name) or [default])[0]


def page(
    request: Request,
    seen: Viewer,
    template: str,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    """The page ``template`` rendered for ``seen``, with the console's headers."""
    context: Api = request.app.state.api
    html = TEMPLATES.get_template(template).render(
        viewer=seen, csrf=seen.session.csrf, path=request.url.path, **values
    )
    response = HTMLResponse(html, status_code=status, headers=HEADERS)
    if seen.fresh:
        context.sessions.write(response, seen.session, request)
    return response


def redirect(url: str, headers: dict[str, str] | None = None) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={**HEADERS, **(headers or {})})


def local(target: str) -> str:
    """``target`` when it is a path of this server, else ``/`` (no open redirect)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


class ConsoleRoute(APIRoute):
    """A console route: engine errors, a missing sign-in and a refused CSRF token become
    pages (never a stack trace or the API's JSON)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return redirect("/signin?next=" + quote(target, safe=""))
            except CsrfRefused:
                return failure(
                    request,
                    403,
                    "This form has expired or did not come from "
                    "this console (its CSRF token is missing or wrong). Nothing "
                    "was changed: reload the page and try again.",
                )
            except FlowrunnerError as exc:
                return failure(request, error_status(exc)[0], exc.message)

        return handle


def failure(request: Request, status: int, message: str) -> HTMLResponse:
    return page(
        request,
        viewer(request),
        "error.html",
        status,
        status_code=status,
        message=message,
        title=f"Error {status}",
    )
