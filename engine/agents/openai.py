"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint, streamed.

Ollama, vLLM, llama.cpp's server, LM Studio and hosted APIs all speak it. The
request is one user message with the whole prompt and ``"stream": true``; the
reply arrives as server-sent events (``data: {...}`` lines ending with
``data: [DONE]``). A server that ignores ``stream`` and answers with one JSON
completion is understood too. Leaving ``complete`` early (cancellation, an
error) closes the response, so the server sees the client go away.

A refusal for now (HTTP 429 or 503) with a ``Retry-After`` header is asked
again once that time has passed, within one call: at most ``max_retry_after``
seconds of waiting in all and four requests; past either cap the attempt
fails with :class:`RetryLater` (and the step's own retries apply). Nothing
of a refused request has reached ``on_delta``, so a retry repeats none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from engine.agents.base import AgentError, AgentReply, AgentRequest, OnDelta, RetryLater
from engine.agents.retry_after import RETRY_STATUSES, seconds_to_wait

log = logging.getLogger("flowrunner.agents")

_EXCERPT = 200
_CONNECT_TIMEOUT = 10.0
_MAX_TRIES = 4
"""Requests one call makes at most when the server keeps asking to retry later."""


class OpenAIBackend:
    """Streams chat completions from ``{base_url}/chat/completions``."""

    name: str = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float = 600,
        max_retry_after: float = 60,
    ) -> None:
        """``timeout`` bounds each network wait (connect at most 10 s), not the whole reply;
        ``max_retry_after`` the seconds one call waits in all on ``Retry-After``."""
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.max_retry_after = max_retry_after
        headers = {"Accept": "text/event-stream, application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT)),
        )

    async def complete(self, request: AgentRequest, on_delta: OnDelta | None = None) -> AgentReply:
        """Send the prompt as one user message and collect the streamed reply, asking again
        after a refusal's ``Retry-After`` while the caps allow."""
        body = {
            "model": request.model,
            "messages": [{"role": "user", "content": request.prompt}],
            "stream": True,
        }
        waited, tries = 0.0, 0
        while True:
            tries += 1
            try:
                return AgentReply(text=await self._send(body, on_delta), backend=self.name)
            except RetryLater as later:
                refusal = self._past_caps(later, tries, waited)
                if refusal is not None:
                    raise refusal from None
                log.info(
                    "%s; asking again in %gs (step %s)", later, later.retry_after, request.step_id
                )
                await asyncio.sleep(later.retry_after)
                waited += later.retry_after

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _send(self, body: dict[str, Any], on_delta: OnDelta | None) -> str:
        """One request: the reply's text, or :class:`AgentError` (:class:`RetryLater` for a
        refusal that says when to ask again)."""
        try:
            async with self._client.stream("POST", self.url, json=body) as response:
                if not response.is_success:
                    await response.aread()
                    raise self._refused(response)
                content_type = response.headers.get("content-type", "")
                if content_type.startswith("text/event-stream"):
                    text = await self._read_stream(response, on_delta)
                else:
                    text = self._read_completion(await response.aread())
                    if on_delta is not None and text:
                        on_delta(text)
        except httpx.ConnectError as exc:
            raise AgentError(f"cannot reach the model at {self.url}: {_reason(exc)}") from exc
        except httpx.TimeoutException as exc:
            raise AgentError(f"the model at {self.url} timed out ({_reason(exc)})") from exc
        except httpx.HTTPError as exc:
            raise AgentError(f"request to the model at {self.url} failed: {_reason(exc)}") from exc
        return text

    def _past_caps(self, later: RetryLater, tries: int, waited: float) -> RetryLater | None:
        """The error ending the call when asking again would pass a cap, else None."""
        if waited + later.retry_after > self.max_retry_after:
            return RetryLater(
                f"{later} (not retried: a call waits {self.max_retry_after:g}s at most, "
                "FLOWRUNNER_OPENAI_MAX_RETRY_AFTER)",
                later.retry_after,
            )
        if tries >= _MAX_TRIES:
            return RetryLater(f"{later} ({tries} tries)", later.retry_after)
        return None

    def _refused(self, response: httpx.Response) -> AgentError:
        status, excerpt = response.status_code, _excerpt(response.text)
        delay = None
        if status in RETRY_STATUSES:
            delay = seconds_to_wait(response.headers.get("retry-after"), time.time())
        if delay is None:
            return AgentError(f"the model at {self.url} answered HTTP {status}: {excerpt}")
        return RetryLater(
            f"the model at {self.url} answered HTTP {status}, "
            f"retry after {round(delay, 1):g}s: {excerpt}",
            delay,
        )

    async def _read_stream(self, response: httpx.Response, on_delta: OnDelta | None) -> str:
        parts: list[str] = []
        async for data in _sse_data(response.aiter_lines()):
            if data == "[DONE]":
                break
            chunk = self._decode(data)
            piece = _delta_content(chunk)
            if piece:
                parts.append(piece)
                if on_delta is not None:
                    on_delta(piece)
        return "".join(parts)

    def _read_completion(self, raw: bytes) -> str:
        completion = self._decode(raw.decode("utf-8", errors="replace"))
        try:
            content = completion["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise AgentError(
                f"the model at {self.url} sent no completion: {_excerpt(json.dumps(completion))}"
            ) from None
        return content if isinstance(content, str) else ""

    def _decode(self, data: str) -> Any:
        try:
            value = json.loads(data)
        except json.JSONDecodeError:
            raise AgentError(
                f"the model at {self.url} sent malformed JSON: {_excerpt(data)}"
            ) from None
        if isinstance(value, dict) and "error" in value:
            raise AgentError(f"the model at {self.url} reported an error: {_excerpt(data)}")
        return value


async def _sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each server-sent event; a multi-line event's data lines join with newlines."""
    buffer: list[str] = []
    async for line in lines:
        if not line:
            if buffer:
                yield "\n".join(buffer)
                buffer = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            buffer.append(value.removeprefix(" "))
    if buffer:
        yield "\n".join(buffer)


def _delta_content(chunk: Any) -> str:
    """``choices[0].delta.content`` of a stream chunk, or '' (role and usage chunks)."""
    try:
        content = chunk["choices"][0]["delta"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    return content if isinstance(content, str) else ""


def _excerpt(text: str) -> str:
    """``text`` on one line, cut to a few hundred characters; a JSON error's message if any."""
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        body = None
    if isinstance(body, dict) and "error" in body:
        error = body["error"]
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(error, str):
            text = error
    line = " ".join(text.split())
    if not line:
        return "(empty body)"
    return line if len(line) <= _EXCERPT else line[: _EXCERPT - 3] + "..."


def _reason(exc: BaseException) -> str:
    """The most specific reason in an exception chain, e.g. 'connection refused'."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None and seen.errno > 0:
            return os.strerror(seen.errno).lower()  # asyncio's own strerror is less clear
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(exc).split())
    for prefix in ("[Errno", "[errno"):
        if text.startswith(prefix) and "]" in text:
            text = text.split("]", 1)[1].strip()
    return text.lower() if text else type(exc).__name__
