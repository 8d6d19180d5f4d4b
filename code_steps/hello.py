"""Code step of the ``hello`` tutorial flow: frame the agent's greeting in a banner."""

from __future__ import annotations

import textwrap
from typing import Any

from code_steps import Context, as_int

MIN_WIDTH = 20


def greeting_text(text: str, field_names: tuple[str, ...] = ("mood",)) -> str:
    """The greeting without the ``name: value`` field lines the agent was asked to add."""
    prefixes = tuple(f"{name}:" for name in field_names)
    kept = [line for line in text.splitlines() if not line.strip().casefold().startswith(prefixes)]
    return " ".join(" ".join(kept).split())


def frame(text: str, width: int) -> str:
    """``text`` wrapped to ``width`` columns inside an ASCII box."""
    inner = width - 4
    lines = textwrap.wrap(text, inner) or [""]
    rule = "+" + "-" * (inner + 2) + "+"
    return "\n".join([rule, *(f"| {line.ljust(inner)} |" for line in lines), rule])


def banner(
    ctx: Context, text: str, name: str = "world", mood: str = "", width: int | str = 48
) -> dict[str, Any]:
    """Frame the greeting for ``name`` in a box ``width`` columns wide and count its words.

    Returns ``{banner, words, name, mood}``; the report prints ``banner``.
    """
    columns = as_int(width, "width")
    if columns < MIN_WIDTH:
        raise ValueError(f"width must be at least {MIN_WIDTH}, got {columns}")
    greeting = greeting_text(text) or f"Hello, {name}!"
    return {
        "banner": frame(greeting, columns),
        "words": len(greeting.split()),
        "name": name,
        "mood": mood.strip() or "unknown",
    }
