"""Agent backends: where an agent step's prompt goes and where its reply comes from.

The operator chooses the backend (``FLOWRUNNER_AGENT_BACKEND``), never the flow:

- ``openai``: an OpenAI-compatible chat-completions endpoint, streamed;
- ``command``: an agent CLI with the prompt on stdin;
- ``scripted``: canned replies from a file, marked as scripted;
- ``replay``: the calls recorded by an earlier run (built by the runner, which
  owns the recordings, so not through :func:`make_backend`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from engine.agents.base import (
    AgentError,
    AgentReply,
    AgentRequest,
    Backend,
    ConfigError,
    OnDelta,
    RetryLater,
)
from engine.agents.command import CommandBackend
from engine.agents.openai import OpenAIBackend
from engine.agents.replay import ReplayBackend
from engine.agents.scripted import ScriptedBackend, ScriptedRule

__all__ = [
    "BACKEND_NAMES",
    "AgentError",
    "AgentReply",
    "AgentRequest",
    "Backend",
    "CommandBackend",
    "ConfigError",
    "OnDelta",
    "OpenAIBackend",
    "ReplayBackend",
    "RetryLater",
    "ScriptedBackend",
    "ScriptedRule",
    "make_backend",
]

BACKEND_NAMES = ("openai", "command", "scripted")
"""The values ``FLOWRUNNER_AGENT_BACKEND`` accepts."""


def make_backend(
    name: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    command: str | None = None,
    agent_env: str = "",
    scripted_file: str | Path | None = None,
    timeout: float = 600,
    max_retry_after: float = 60,
) -> Backend:
    """The backend called ``name``, built from its settings, or :class:`ConfigError`.

    ``command`` is the ``FLOWRUNNER_AGENT_COMMAND`` text (shell words) and ``agent_env``
    the ``FLOWRUNNER_AGENT_ENV`` text (the variables its agent gets besides the basics);
    ``timeout`` bounds each network wait of the ``openai`` backend and ``max_retry_after``
    the time one of its calls waits in all on the endpoint's ``Retry-After``.
    """
    if name == "openai":
        if not base_url:
            raise ConfigError("FLOWRUNNER_OPENAI_BASE_URL is not set")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"FLOWRUNNER_OPENAI_BASE_URL must be an http:// or https:// URL, not {base_url!r}"
            )
        return OpenAIBackend(base_url, api_key, timeout=timeout, max_retry_after=max_retry_after)
    if name == "command":
        if command is None or not command.strip():
            raise ConfigError("FLOWRUNNER_AGENT_COMMAND is not set")
        return CommandBackend.from_setting(command, agent_env)
    if name == "scripted":
        if scripted_file is None or not str(scripted_file):
            raise ConfigError("the scripted backend needs a replies file, and none is set")
        return ScriptedBackend.from_file(scripted_file)
    choices = ", ".join(BACKEND_NAMES)
    raise ConfigError(
        f"unknown agent backend {name!r}: FLOWRUNNER_AGENT_BACKEND is one of {choices}"
    )
