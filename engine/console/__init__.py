"""The web console: server-rendered pages over the same ``Api`` context as the JSON API.

``/`` lists runs, ``/runs/{id}`` shows a run and its graph, ``/runs/{id}/steps/{step}``
a step (and a gate's decision form), ``/inbox`` the gates the viewer may decide,
``/flows`` the flows and their launch forms; ``/signin`` and ``/signout`` manage the
session when tokens are configured. Its script and stylesheet are served from the
package under ``/static/``. None of these routes is part of the OpenAPI document.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from engine.console import flows, inbox, runs, signin, steps
from engine.console.pages import HERE


def install(app: FastAPI) -> None:
    """Add the console's pages and static files to ``app``."""
    for module in (signin, runs, steps, inbox, flows):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
