"""SQL lives in ``.sql`` files: named queries (``-- name: x``) and numbered migrations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(dialect: str) -> dict[str, str]:
    """The named queries of ``engine/store/sql/<dialect>/queries.sql``."""
    text = files("engine.store").joinpath("sql", dialect, "queries.sql").read_text("utf-8")
    parts = _HEADER.split(text)
    return {
        name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """``engine/store/migrations/<dialect>/NNNN_name.sql``, in order."""
    folder = files("engine.store").joinpath("migrations", dialect)
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    return sorted(found, key=lambda migration: migration.version)
