"""The ``scripted`` backend: canned replies from a file, for tests and dry runs.

The file (YAML or JSON) lists rules tried in order; the first whose ``match``
regular expression is found in the prompt (``re.search`` with ``DOTALL``)
answers, and a rule without ``match`` matches every prompt::

    replies:
      - match: "Review the plan"
        reply: "LGTM"
      - reply: "fallback answer"

Replies are literal text. Every reply is marked ``scripted`` so that wherever
it appears nobody mistakes it for a model's output.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from engine.agents.base import (
    AgentError,
    AgentReply,
    AgentRequest,
    ConfigError,
    OnDelta,
    stream_text,
)


class ScriptedRule(BaseModel):
    """One canned reply and the pattern of the prompts it answers (None: every prompt)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str | None = None
    reply: str
    delay: float = Field(default=0, ge=0, le=3600, description="Seconds before the reply.")

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value, re.DOTALL)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class ScriptedReplies(BaseModel):
    """A scripted replies file: ``{"replies": [rule, ...]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replies: list[ScriptedRule] = Field(min_length=1)


class ScriptedBackend:
    """Answers each prompt with the reply of the first rule that matches it."""

    name: str = "scripted"

    def __init__(self, rules: Sequence[ScriptedRule]) -> None:
        self.rules = tuple(rules)
        self._patterns = [
            re.compile(rule.match, re.DOTALL) if rule.match is not None else None
            for rule in self.rules
        ]

    @classmethod
    def from_data(cls, data: object, source: str = "scripted replies") -> ScriptedBackend:
        """The backend for already-parsed ``data``; ``source`` names it in errors."""
        try:
            document = ScriptedReplies.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_problems(exc)}") from None
        return cls(document.replies)

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedBackend:
        """The backend for a YAML or JSON replies file (JSON when the name ends in .json)."""
        path = Path(path)
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"cannot read scripted replies {path}: {reason}") from None
        return cls.from_data(_parse(text, path), str(path))

    def rule_for(self, prompt: str) -> ScriptedRule | None:
        """The first rule matching ``prompt``, or None."""
        for rule, pattern in zip(self.rules, self._patterns, strict=True):
            if pattern is None or pattern.search(prompt):
                return rule
        return None

    def reply_for(self, prompt: str) -> str | None:
        """The reply of the first rule matching ``prompt``, or None."""
        rule = self.rule_for(prompt)
        return rule.reply if rule is not None else None

    async def complete(self, request: AgentRequest, on_delta: OnDelta | None = None) -> AgentReply:
        """The matching canned reply, streamed in a few pieces."""
        rule = self.rule_for(request.prompt)
        if rule is None:
            call = f" (call {request.sequence})" if request.sequence else ""
            raise AgentError(f"no scripted reply matches step {request.step_id}{call}")
        text = rule.reply
        if rule.delay:
            await asyncio.sleep(rule.delay)
        await stream_text(text, on_delta)
        return AgentReply(text=text, backend=self.name, scripted=True)

    async def aclose(self) -> None:
        """Nothing to release."""


def _parse(text: str, path: Path) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"
            ) from None
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None


def _problems(exc: ValidationError) -> str:
    """Each validation error as ``where: what``, joined with '; '."""
    found = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "the document"
        message = error["msg"].removeprefix("Value error, ")
        found.append(f"{where}: {message}")
    return "; ".join(found)
