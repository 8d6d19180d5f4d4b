"""Sign-in and sign-out of the console.

With tokens configured (``FLOWRUNNER_API_TOKEN``, ``FLOWRUNNER_API_TOKENS_FILE``), the
sign-in form takes a token, compares it in constant time with each configured one,
and on a match starts a session of its identity (a new cookie, a new CSRF token). The
token itself is never stored in the cookie, put in a URL, or written back into a page.
Without tokens the console is open and these pages send the viewer to the runs.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from starlette.responses import Response

from engine.api.context import Api
from engine.api.sessions import Session, Sessions
from engine.console.pages import ConsoleRoute, first, local, page, posted, redirect, viewer

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


def match(tokens: dict[str, str], given: str) -> str | None:
    """The identity of ``given`` among ``tokens``, comparing with every one in constant time."""
    found = None
    sent = given.encode()
    for token, who in tokens.items():
        if hmac.compare_digest(sent, token.encode()):
            found = who
    return found


@router.get("/signin")
async def signin_page(request: Request) -> Response:
    seen = viewer(request)
    if seen.open:
        return redirect("/")
    target = local(request.query_params.get("next", "/"))
    return page(request, seen, "signin.html", target=target, problem=None, title="Sign in")


@router.post("/signin")
async def signin(request: Request) -> Response:
    seen = viewer(request)
    if seen.open:
        return redirect("/")
    form = await posted(request, seen.session)
    context: Api = request.app.state.api
    target = local(first(form, "next", "/"))
    who = match(context.tokens or {}, first(form, "token"))
    if who is None:
        problem = "That token is not one this server knows."
        return page(
            request, seen, "signin.html", 401, target=target, problem=problem, title="Sign in"
        )
    response = redirect(target)
    context.sessions.write(response, Session.new(who), request)
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    seen = viewer(request)
    await posted(request, seen.session)
    response = redirect("/signin" if not seen.open else "/")
    Sessions.clear(response, request)
    return response
