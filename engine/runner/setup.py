"""Building the store and the agent backend from the settings."""

from __future__ import annotations

from pathlib import Path

from engine.agents import Backend, make_backend
from engine.config import Project
from engine.errors import ConfigError
from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore


def sqlite_path(url: str, project: Project) -> Path:
    """``sqlite:///relative/path`` (to the project) or ``sqlite:////absolute/path``."""
    path = Path(url.removeprefix("sqlite:///"))
    return path if path.is_absolute() else project.root / path


def open_store(project: Project, *, worker_only: bool = False) -> Store:
    """The store ``FLOWRUNNER_DATABASE_URL`` names (not yet opened); ``worker_only``: for a
    process that only executes steps (PostgreSQL: generic plans from the start)."""
    url = project.settings.database_url
    if url.startswith("sqlite:///"):
        return SqliteStore(sqlite_path(url, project))
    if url.startswith(("postgresql://", "postgres://")):
        settings = project.settings
        return PostgresStore(
            url,
            pool_size=settings.db_pool_size,
            statement_timeout=settings.db_statement_timeout,
            retry_seconds=settings.db_retry_seconds,
            generic_plans=worker_only,
        )
    raise ConfigError(
        "FLOWRUNNER_DATABASE_URL must start with sqlite:/// or postgresql:// "
        f"(got {_redacted(url)!r})"
    )


def _redacted(url: str) -> str:
    """A URL without its password, fit for an error message."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    return f"{scheme}://{credentials.partition(':')[0]}:***@{host}"


def agent_backend(project: Project) -> Backend:
    """The backend ``FLOWRUNNER_AGENT_BACKEND`` names, built from its settings."""
    settings = project.settings
    replies = settings.scripted_replies
    return make_backend(
        settings.agent_backend,
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key,
        command=settings.agent_command,
        agent_env=settings.agent_env,
        scripted_file=project.root / replies if replies else None,
        max_retry_after=settings.openai_max_retry_after,
    )
