"""The bounded httptools protocol in-process, on a real socket pair: what a client sees when a
pipelined request's head goes over the limit while the response before it is still on its
way (the limits against a real ``serve`` are in tests/e2e/test_request_heads.py)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from engine.api.heads import bounded_protocol


async def slow_ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app whose answer takes a moment, so the next request's head arrives before it."""
    await asyncio.sleep(0.05)
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    await send(start)
    await send({"type": "http.response.body", "body": b"ok"})


async def exchange(data: bytes, head_bytes: int = 4096) -> bytes:
    """Everything the server sends back to ``data``, written before it reads (so one read
    holds all of it), until it closes the connection."""
    config = uvicorn.Config(slow_ok, lifespan="off", log_level="warning")
    config.load()
    protocol = bounded_protocol(head_bytes, 100)
    state = ServerState()
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(
        lambda: protocol(config=config, server_state=state, app_state={}), ours
    )
    received = b""
    try:
        while chunk := await asyncio.wait_for(loop.sock_recv(theirs, 65536), 5):
            received += chunk
    finally:
        theirs.close()
    return received


async def test_a_pipelined_head_over_the_limit_ends_the_connection_after_the_answer_before() -> (
    None
):
    first = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    second = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000
    received = await exchange(first + second)
    # the first answer whole, then the close: no 431 written into the middle of it
    assert received == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


async def test_a_head_over_the_limit_alone_is_431() -> None:
    received = await exchange(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
    assert received.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert received.endswith(b'"message":"request head larger than 4096 bytes","details":null}}')
