"""No-op code steps for bench/overhead.py (the project's code root is this folder)."""

from typing import Any


def noop(ctx: Any) -> str:
    return "ok"
