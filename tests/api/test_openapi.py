"""The committed OpenAPI document is the app's own, so clients can rely on it."""

from __future__ import annotations

from pathlib import Path

from engine.api.app import create_app, dump_openapi
from engine.api.context import Api
from engine.config import Project
from engine.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]


def test_docs_openapi_json_is_up_to_date(tmp_path: Path) -> None:
    app = create_app(Api(Project(ROOT), SqliteStore(tmp_path / "unused.db")))
    committed = (ROOT / "docs" / "openapi.json").read_text("utf-8")
    assert committed == dump_openapi(app), "docs/openapi.json is stale: regenerate it"
