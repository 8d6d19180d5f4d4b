"""The environment an agent command starts with: a few basics and what the operator lists.

The worker's own environment holds its secrets (the store URL with its
password, API tokens, the model key, whatever else its host put there), so
the agent never inherits it. It gets:

- the basics a command line program expects, when the worker has them:
  ``PATH`` (to find the agent CLI and the tools it runs), ``HOME`` (where a CLI
  keeps its configuration and its login), ``USER``, ``LANG``, ``LC_ALL`` and
  ``LC_CTYPE`` (the encoding of the prompt on stdin and the reply on stdout),
  ``TERM`` (some CLIs look at it even without a terminal) and ``TMPDIR`` (where
  to write scratch files);
- the variables named by ``FLOWRUNNER_AGENT_ENV`` (names separated by commas
  or spaces), such as the agent's own API key, when the worker has them.

``FLOWRUNNER_*`` variables cannot be listed: they are the worker's settings,
among them ``FLOWRUNNER_DATABASE_URL``, ``FLOWRUNNER_API_TOKEN`` and
``FLOWRUNNER_OPENAI_API_KEY``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from engine.agents.base import ConfigError

BASICS = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TMPDIR")
"""Variables every agent command gets from the worker's environment, when set there."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED = "FLOWRUNNER_"


def passed_names(setting: str) -> tuple[str, ...]:
    """The variable names in ``FLOWRUNNER_AGENT_ENV``, or :class:`ConfigError` naming a bad one."""
    names = tuple(dict.fromkeys(name for name in re.split(r"[\s,]+", setting) if name))
    for name in names:
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"FLOWRUNNER_AGENT_ENV: {name!r} is not a variable name "
                "(letters, digits and '_', not starting with a digit)"
            )
        if name.upper().startswith(_RESERVED):
            raise ConfigError(
                f"FLOWRUNNER_AGENT_ENV cannot pass {name}: the worker's own settings "
                "(its store URL, its tokens) never reach the agent"
            )
    return names


def agent_environment(source: Mapping[str, str], passed: Iterable[str] = ()) -> dict[str, str]:
    """The basics and the ``passed`` names that ``source`` (the worker's environment) has."""
    return {name: source[name] for name in (*BASICS, *passed) if name in source}
