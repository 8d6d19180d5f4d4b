"""A scripted OpenAI-compatible chat-completions server on loopback, for tests.

It speaks real HTTP/1.1 with the real streaming protocol: a request with
``"stream": true`` gets ``text/event-stream`` in chunked transfer encoding, a
role chunk, one ``data: {"choices":[{"delta":{"content":...}}]}`` event per
word, a finish chunk and ``data: [DONE]``; any other request gets one JSON
completion. Only the standard library is used for serving.

In a test::

    with ChatServer(lambda prompt: "hello world", chunk_delay=0.01) as server:
        backend = OpenAIBackend(server.url, api_key=None)
        ...
        assert server.requests[0]["messages"][0]["content"] == prompt

In a fixture: ``yield from serving(reply)``. From another process (prints the
URL on its first stdout line, serves until SIGTERM or Ctrl-C)::

    python -m tests.fakes.chat_server --port 0 --replies replies.yaml

where the replies file has the format of the scripted backend.

A reply may also be an iterable of pieces instead of a string: each piece is
one content chunk, sent as soon as the iterable yields it, so a generator can
hold a stream half-way (on a ``threading.Event``, say) until the test has
seen the first pieces arrive::

    def reply(prompt):
        yield "first words "
        release.wait(30)
        yield "the rest"
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

Reply = Callable[[str], str | Iterable[str]]
_WORDS = re.compile(r"\S+\s*|\s+")


def echo(prompt: str) -> str:
    """The default reply: the prompt itself."""
    return prompt


def chunks(text: str) -> list[str]:
    """``text`` cut into words (each with its trailing spaces); they join back to ``text``."""
    return _WORDS.findall(text)


class ChatServer:
    """Serves ``POST {url}/chat/completions`` with ``reply(prompt)`` on 127.0.0.1.

    ``prompt`` is the content of the user messages, joined with blank lines.
    Attributes may be changed while it runs: ``reply``, ``chunk_delay`` (seconds
    slept before each content chunk), ``fail_status`` (answer every completion
    with this HTTP status), ``refusals`` (answers for the next requests, first
    first, before any other: each an HTTP status and its headers, such as
    ``(429, {"Retry-After": "2"})``), ``api_key`` (when set, other bearers get
    401) and ``ignore_stream`` (answer one JSON completion even when a stream is
    asked). ``requests`` holds every parsed request body, ``headers`` their
    headers, ``arrivals`` the time (``time.time()``) each arrived, and
    ``disconnects`` counts streams the client left before the end.
    """

    def __init__(
        self,
        reply: Reply = echo,
        *,
        chunk_delay: float = 0.0,
        fail_status: int | None = None,
        api_key: str | None = None,
        ignore_stream: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.reply = reply
        self.chunk_delay = chunk_delay
        self.fail_status = fail_status
        self.api_key = api_key
        self.ignore_stream = ignore_stream
        self.refusals: list[tuple[int, dict[str, str]]] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.arrivals: list[float] = []
        self.disconnects = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd = _Server((host, port), _Handler)
        self._httpd.chat = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The endpoint root to configure, e.g. ``http://127.0.0.1:PORT/v1``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def prompts(self) -> list[str]:
        """The user content of every request so far."""
        return [_prompt(body) for body in self.requests]

    def start(self) -> ChatServer:
        """Serve in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port; streams in flight end at their next write."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def record(self, body: dict[str, Any], headers: dict[str, str], arrived: float) -> None:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            self.arrivals.append(arrived)

    def next_refusal(self) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            return self.refusals.pop(0) if self.refusals else None

    def next_id(self) -> str:
        with self._lock:
            return f"chatcmpl-{next(self._ids)}"

    def count_disconnect(self) -> None:
        with self._lock:
            self.disconnects += 1


def serving(reply: Reply = echo, **options: Any) -> Iterator[ChatServer]:
    """For pytest fixtures: ``yield from serving(reply, chunk_delay=...)``."""
    with ChatServer(reply, **options) as server:
        yield server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    chat: ChatServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a cancelled call, a closed pool) is normal, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _prompt(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    return "\n\n".join(
        str(message.get("content", ""))
        for message in messages
        if isinstance(message, dict) and message.get("role") == "user"
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``requests`` instead of a log."""

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        chat = self.server.chat
        arrived = time.time()
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._error(400, "the body is not JSON")
            return
        chat.record(body if isinstance(body, dict) else {"body": body}, dict(self.headers), arrived)
        refusal = chat.next_refusal()
        if refusal is not None:
            status, headers = refusal
            self._error(status, "scripted refusal", headers=headers)
        elif chat.api_key and self.headers.get("Authorization") != f"Bearer {chat.api_key}":
            self._error(401, "invalid api key", "invalid_request_error")
        elif chat.fail_status is not None:
            self._error(chat.fail_status, "scripted failure")
        else:
            self._complete(chat, body if isinstance(body, dict) else {})

    def _complete(self, chat: ChatServer, body: dict[str, Any]) -> None:
        try:
            answer = chat.reply(_prompt(body))
            pieces = chunks(answer) if isinstance(answer, str) else answer
            if not body.get("stream") or chat.ignore_stream:
                text = "".join(pieces)
        except Exception as exc:  # a reply function that fails is reported like a broken model
            self._error(500, f"reply failed: {exc}")
            return
        model = str(body.get("model", ""))
        head = {"id": chat.next_id(), "created": int(time.time()), "model": model}
        if not body.get("stream") or chat.ignore_stream:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            self._json(200, {**head, "object": "chat.completion", "choices": [choice]})
            return
        try:
            self._stream(chat, head, pieces)
        except (BrokenPipeError, ConnectionResetError):
            chat.count_disconnect()
            self.close_connection = True

    def _stream(self, chat: ChatServer, head: dict[str, Any], pieces: Iterable[str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        head = {**head, "object": "chat.completion.chunk"}

        def event(delta: dict[str, str], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return json.dumps({**head, "choices": [choice]})

        self._send_event(event({"role": "assistant", "content": ""}))
        for piece in pieces:
            if chat.chunk_delay:
                time.sleep(chat.chunk_delay)
            self._send_event(event({"content": piece}))
        self._send_event(event({}, "stop"))
        self._send_event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _send_event(self, data: str) -> None:
        payload = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")

    def _error(
        self,
        status: int,
        message: str,
        kind: str = "server_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        body = {"error": {"message": message, "type": kind, "code": status}}
        self._json(status, body, headers)

    def _json(self, status: int, value: object, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, header in (headers or {}).items():
            self.send_header(name, header)
        self.end_headers()
        self.wfile.write(payload)


def replies_from_file(path: Path) -> Reply:
    """``reply(prompt)`` from a scripted-backend replies file; no matching rule is an error."""
    from engine.agents.scripted import ScriptedBackend  # the file format is the engine's

    backend = ScriptedBackend.from_file(path)

    def reply(prompt: str) -> str:
        text = backend.reply_for(prompt)
        if text is None:
            raise LookupError("no scripted reply matches the prompt")
        return text

    return reply


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C; the first line on stdout is the endpoint URL."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.chat_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--replies", type=Path, help="scripted replies file (default: echo)")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds per chunk")
    parser.add_argument("--fail-status", type=int, help="answer every completion with it")
    parser.add_argument("--api-key", help="require this bearer token")
    args = parser.parse_args(argv)
    try:
        reply = replies_from_file(args.replies) if args.replies else echo
    except Exception as exc:  # a bad replies file: say why, like any command-line error
        parser.error(str(exc))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = ChatServer(
        reply,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        chunk_delay=args.chunk_delay,
        fail_status=args.fail_status,
    )
    with server:
        print(server.url, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
