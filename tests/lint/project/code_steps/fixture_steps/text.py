"""Functions the fixture flows call; lint only inspects their signatures."""

from __future__ import annotations

from typing import Any

GREETING = "not a function"


def summarize(ctx: Any, text: str) -> str:
    """One required keyword besides ``ctx``."""
    return text[:80]


def merge(ctx: Any, sources: list[str], limit: int = 10, **options: Any) -> dict[str, Any]:
    """A required list, an optional int, and any other keyword."""
    return {"sources": sources[:limit], "options": options}


async def publish(ctx: Any, *, audience: str = "team", title: str = "") -> str:
    """An async step taking keyword-only arguments, all optional."""
    return f"{title} for {audience}"


def no_context(text: str) -> str:
    """Forgets the ``ctx`` parameter every code step receives first."""
    return text


def count(ctx: Any) -> int:
    """Takes no keyword at all."""
    return 0
