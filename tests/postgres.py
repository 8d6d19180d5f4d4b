"""A clean PostgreSQL schema per test, on the server ``FLOWRUNNER_TEST_DATABASE_URL`` names.

A schema is much cheaper than a database: creating one and migrating it takes
a few milliseconds. The store (and every process a test starts) reaches it
through the URL's ``search_path`` parameter. Without the variable the
PostgreSQL tests are skipped; CI sets it, and a server it names but cannot
reach is an error, not a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

URL_VARIABLE = "FLOWRUNNER_TEST_DATABASE_URL"


def server_url() -> str:
    url = os.environ.get(URL_VARIABLE)
    if not url:
        pytest.skip(f"{URL_VARIABLE} is not set (see README: PostgreSQL tests)")
    return url


def with_search_path(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """An empty schema, dropped afterwards; yields the URL that uses it."""
    url = server_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    try:
        yield with_search_path(url, schema)
    finally:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()
