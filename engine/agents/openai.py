"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint, streamed.

Ollama, vLLM, llama.cpp's server, LM Studio and hosted APIs all speak it. The
request is one user message with the whole prompt and ``"stream": true``; the
reply arrives as server-sent events (``data: {...}`` lines ending with
``data: [DONE]``). A server that ignores ``stream`` and answers with one JSON
completion is understood too. Leaving ``complete`` early (cancellation, an
error) closes the response, so the server sees the client go away.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from engine.agents.base import AgentError, AgentReply, AgentRequest, OnDelta

_EXCERPT = 200
_CONNECT_TIMEOUT = 10.0


class OpenAIBackend:
    """Streams chat completions from ``{base_url}/chat/completions``."""

    name: str = "openai"

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 600) -> None:
        """``timeout`` bounds each network wait (connect at most 10 s), not the whole reply."""
        self.url = base_url.rstrip("/") + "/chat/completions"
        headers = {"Accept": "text/event-stream, application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT)),
        )

    async def complete(self, request: AgentRequest, on_delta: OnDelta | None = None) -> AgentReply:
        """Send the prompt as one user message and collect the streamed reply."""
        body = {
            "model": request.model,
            "messages": [{"role": "user", "content": request.prompt}],
            "stream": True,
        }
        try:
            async with self._client.stream("POST", self.url, json=body) as response:
                if not response.is_success:
                    await response.aread()
                    raise AgentError(
                        f"the model at {self.url} answered HTTP {response.status_code}: "
                        f"{_excerpt(response.text)}"
                    )
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
        return AgentReply(text=text, backend=self.name)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

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
