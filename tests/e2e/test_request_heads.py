"""Request heads are bounded in size and in header count (``FLOWRUNNER_MAX_HEADER_BYTES``,
``FLOWRUNNER_MAX_HEADERS``): a real ``flowrunner serve`` answers 431 to a 100 MB header line
at once, without buffering it, and to a request of thousands of headers, and keeps serving."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from .conftest import E2EProject
from .test_hostile import peak_rss_mb

MB = 1024 * 1024


@dataclass
class Answer:
    head: bytes
    """The status line and headers of the response (empty when none came)."""
    body: bytes
    seconds: float
    """From the first byte sent to the end of the response."""
    sent: int
    """How much of the request went out before the server stopped reading."""


def send(base: str, start: bytes, filler: bytes, total: int, timeout: float = 30) -> Answer:
    """Send ``start``, then ``filler`` repeated up to ``total`` bytes (from a thread, until
    the server stops reading), while reading the response; then ``\\r\\n\\r\\n``."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sent = 0

    def write() -> None:
        nonlocal sent
        try:
            sock.sendall(start)
            while sent < total:
                sock.sendall(filler)
                sent += len(filler)
            sock.sendall(b"\r\n\r\n")
        except OSError:  # the server answered and closed: stop sending
            pass

    started = time.monotonic()
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                None,
            )
            if length is not None and len(body) >= length:
                break
    except OSError:
        pass
    seconds = time.monotonic() - started
    sock.close()
    writer.join(10)
    head, _, body = received.partition(b"\r\n\r\n")
    return Answer(head, body, seconds, sent)


def status(answer: Answer) -> int | None:
    line = answer.head.split(b"\r\n", 1)[0]
    return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None


def healthy(base: str) -> None:
    for _ in range(3):
        assert httpx.get(f"{base}/healthz", timeout=5).json() == {"ok": True}


def test_a_100_mb_header_line_is_431_at_once_and_never_buffered(project: E2EProject) -> None:
    process, base = project.serve()
    healthy(base)
    baseline = peak_rss_mb(process.pid)
    answer = send(base, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 65536, 100 * MB)
    grown = peak_rss_mb(process.pid) - baseline
    assert status(answer) == 431, answer.head
    assert b'"code":"headers_too_large"' in answer.body
    assert b"65536 bytes" in answer.body
    assert answer.seconds < 2, f"the 431 took {answer.seconds:.2f}s"
    assert grown < 20, f"serve's peak memory grew by {grown:.0f} MB"
    healthy(base)
    # a long URL is part of the head too
    answer = send(base, b"GET /healthz?", b"a" * 65536, 100 * MB)
    assert status(answer) == 431, answer.head
    healthy(base)


def test_a_request_of_thousands_of_headers_is_431(project: E2EProject) -> None:
    _, base = project.serve()
    many = b"".join(b"X-%d: v\r\n" % n for n in range(5000))
    answer = send(base, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many[:-2], b"", 0)
    assert status(answer) == 431, answer.head
    assert b"100 headers" in answer.body
    healthy(base)


@pytest.mark.parametrize(("count", "expected"), [(100, 200), (101, 431)])
def test_the_header_count_limit_is_exact(project: E2EProject, count: int, expected: int) -> None:
    _, base = project.serve()
    headers = b"Host: x\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(count - 1))
    answer = send(base, b"GET /healthz HTTP/1.1\r\n" + headers[:-2], b"", 0)
    assert status(answer) == expected, answer.head


def test_the_limits_are_settings_and_a_head_within_them_is_served(project: E2EProject) -> None:
    _, base = project.serve(FLOWRUNNER_MAX_HEADER_BYTES="4096", FLOWRUNNER_MAX_HEADERS="20")
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
    fits = send(base, start + b"a" * (4096 - len(start) - 4), b"", 0)
    assert status(fits) == 200 and fits.body == b'{"ok":true}', fits.head
    over = send(base, start + b"a" * (4096 - len(start) - 3), b"", 0)
    assert status(over) == 431, over.head
    assert b"4096 bytes" in over.body
    few = b"Host: x\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(20))
    assert status(send(base, b"GET /healthz HTTP/1.1\r\n" + few[:-2], b"", 0)) == 431
    # and keep-alive requests each get the whole budget
    with httpx.Client(base_url=base, timeout=5) as client:
        for _ in range(5):
            response = client.get("/healthz", headers={"X-Pad": "a" * 3000})
            assert response.status_code == 200
