"""The PostgreSQL migrations: together they build exactly ``schema.sql``, once, whoever races."""

from __future__ import annotations

import asyncio
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from engine.store.postgres import PostgresStore
from engine.store.queries import load_migrations
from tests.postgres import fresh_schema

TABLES = """
SELECT c.relname, c.relkind::text AS kind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1
ORDER BY c.relname
"""

COLUMNS = """
SELECT c.relname AS table_name, a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
       pg_get_expr(d.adbin, d.adrelid) AS default_value, a.attidentity::text AS identity,
       a.attgenerated::text AS generated, co.collname AS collation
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 0
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""

INDEXES = """
SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = $1
ORDER BY tablename, indexname
"""

CONSTRAINTS = """
SELECT c.relname AS table_name, k.conname, k.contype::text AS type,
       pg_get_constraintdef(k.oid) AS definition, k.condeferrable, k.condeferred
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = k.connamespace
WHERE n.nspname = $1
ORDER BY c.relname, k.conname
"""

OTHERS = """
SELECT 'function' AS what, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
       AS name, pg_get_functiondef(p.oid) AS definition
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = $1 AND p.prokind IN ('f', 'p')
UNION ALL
SELECT 'trigger', c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND NOT t.tgisinternal
UNION ALL
SELECT 'type', t.typname, format_type(t.oid, NULL)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = $1 AND t.typtype IN ('e', 'd', 'c') AND t.typrelid = 0
ORDER BY 1, 2
"""


def _schema_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["search_path"][0]


async def describe(conn: asyncpg.Connection[Any], schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """What the catalog says about ``schema``: its name is written ``<schema>`` throughout.

    The search path is emptied first, so that every name the catalog functions print
    is qualified, whichever schema is described.
    """
    await conn.execute("SET search_path TO pg_catalog")

    def plain(value: Any) -> Any:
        return value.replace(f"{schema}.", "<schema>.") if isinstance(value, str) else value

    found = {}
    for name, query in [
        ("relations", TABLES),
        ("columns", COLUMNS),
        ("indexes", INDEXES),
        ("constraints", CONSTRAINTS),
        ("others", OTHERS),
    ]:
        rows = await conn.fetch(query, schema)
        found[name] = [tuple(plain(value) for value in row.values()) for row in rows]
    return found


async def test_the_migrations_build_exactly_schema_sql() -> None:
    schema_sql = files("engine.store").joinpath("sql", "postgres", "schema.sql").read_text("utf-8")
    async with fresh_schema() as migrated_url, fresh_schema() as declared_url:
        store = PostgresStore(migrated_url, retry_seconds=2)
        await store.open()  # every migration, from zero
        await store.close()
        conn = await asyncpg.connect(declared_url)  # search_path is the second schema
        try:
            await conn.execute(schema_sql)
            migrated = await describe(conn, _schema_of(migrated_url))
            declared = await describe(conn, _schema_of(declared_url))
            applied = await conn.fetch(
                f"SELECT version, name FROM {_schema_of(migrated_url)}.schema_migrations "
                "ORDER BY version"
            )
        finally:
            await conn.close()
    assert {"runs", "steps", "events", "commits", "schema_migrations"} <= {
        name for name, kind in migrated["relations"] if kind == "r"
    }
    for part in declared:
        assert migrated[part] == declared[part], part
    assert [tuple(row) for row in applied] == [
        (m.version, m.name) for m in load_migrations("postgres")
    ]


async def test_concurrent_opens_migrate_once() -> None:
    """Four processes starting at once on an empty schema: the advisory lock lets one
    migrate; the others find the work done and open without an error."""
    async with fresh_schema() as url:
        stores = [PostgresStore(url, retry_seconds=2) for _ in range(4)]
        try:
            await asyncio.gather(*(store.open() for store in stores))
            assert [await store.runs_to_finish() for store in stores] == [[]] * 4
        finally:
            await asyncio.gather(*(store.close() for store in stores))
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version "
                "ORDER BY version"
            )
        finally:
            await conn.close()
    assert [(row["version"], row["n"]) for row in rows] == [
        (migration.version, 1) for migration in load_migrations("postgres")
    ]
