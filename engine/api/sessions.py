"""Signed session cookies of the web console: who signed in, and the CSRF token of the session.

A session is ``{"who": identity or None, "csrf": random token}``, signed with
:mod:`itsdangerous` and timestamped: a cookie older than its lifetime, or not signed
with this server's key, is no session. ``who`` is None before sign-in (the cookie then
only carries the CSRF token the sign-in form needs). The key is
``FLOWRUNNER_SESSION_SECRET``, or a random one per process: then every session ends when
``serve`` restarts.

Forms of the console send the CSRF token as a hidden ``csrf_token`` field; the console's
script sends it to the JSON API as the ``X-CSRF-Token`` header. Both are compared in
constant time with the session's token. The cookie is HttpOnly and SameSite=Strict (a
page on another site cannot make the browser send it), Secure when served over TLS.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "flowrunner_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True, slots=True)
class Session:
    """``who`` is the signed-in identity (None before sign-in); ``csrf`` guards its posts."""

    who: str | None
    csrf: str

    @classmethod
    def new(cls, who: str | None) -> Session:
        return cls(who, secrets.token_urlsafe(32))

    def csrf_matches(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


class Sessions:
    """Reads and writes session cookies signed with one key, valid for ``seconds``."""

    def __init__(self, secret: str | None = None, seconds: float = 12 * 3600) -> None:
        self.seconds = int(seconds)
        self._serializer = URLSafeTimedSerializer(
            secret or secrets.token_urlsafe(32), salt="flowrunner-session"
        )

    def read(self, request: Request) -> Session | None:
        """The request's session, or None (no cookie, a bad signature, expired)."""
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.seconds)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict):
            return None
        who, csrf = data.get("who"), data.get("csrf")
        if not isinstance(csrf, str) or not (who is None or isinstance(who, str)):
            return None
        return Session(who, csrf)

    def write(self, response: Response, session: Session, request: Request) -> None:
        """Set the cookie of ``session`` on ``response``."""
        response.set_cookie(
            COOKIE,
            self._serializer.dumps({"who": session.who, "csrf": session.csrf}),
            max_age=self.seconds,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def clear(response: Response, request: Request) -> None:
        """Expire the cookie (sign-out)."""
        response.delete_cookie(
            COOKIE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
