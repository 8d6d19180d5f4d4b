"""Requests generated from the OpenAPI document (schemathesis): no input gets a 500.

The app is built when the module loads (schemathesis collects one test per
operation from it), over the shipped flows and a fresh SQLite file.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from engine.api.app import create_app
from engine.api.context import Api
from engine.config import Project
from engine.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
STORE = SqliteStore(Path(tempfile.mkdtemp(prefix="fr-schemathesis-")) / "api.db")
asyncio.run(STORE.open())
APP = create_app(Api(Project.open(ROOT), STORE), max_body=64 * 1024)

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"
