"""Bounded request heads: uvicorn's httptools protocol, refusing an oversized head with 431.

httptools (llhttp) puts no limit on a request line or a header: it hands each one
over whole, after joining its pieces, so a 100 MB header line is buffered (and
copied over and over) before the app sees the request. :func:`bounded_protocol`
makes the protocol ``serve`` gives uvicorn count what it feeds the parser: a
request's head (request line, headers, the blank line ending them) may take
``max_bytes``, and no byte past that is parsed; it may hold ``max_headers``
headers. Beyond either the client gets a 431 in the API's error shape and the
connection is closed once the client stops sending or after :data:`LINGER_SECONDS`
(closing at once could reset the connection before the client reads the answer).

Each request of a keep-alive connection gets the whole budget: the count starts
again after each request's body. (The part of a head that arrives in the same
read as the previous request's end is not counted, so a head can take one read,
at most 256 KiB, more than the budget.)
"""

from __future__ import annotations

import json
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from engine.api.context import error_body

LINGER_SECONDS = 2.0
"""How long a refused connection is read (and what arrives discarded) before it is closed."""


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head over a limit."""


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head of each request bounded (see the module)."""

    max_bytes = 64 * 1024
    max_headers = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head: int | None = 0
        """Bytes of the current request's head fed to the parser; None once it is complete."""
        self._headers = 0
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the answer is sent: what follows is discarded until the close
        self._unset_keepalive_if_required()
        view = memoryview(data)
        while view and not self._refused and not self.transport.is_closing():
            if self._head is None:
                chunk, view = view, view[:0]
            else:
                room = self.max_bytes - self._head
                if room <= 0:
                    self._refuse(f"request head larger than {self.max_bytes} bytes")
                    return
                chunk, view = view[:room], view[room:]
                self._head += len(chunk)
            self._feed(chunk)

    def _feed(self, chunk: memoryview) -> None:
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, HeadTooLarge):
                self._parse_error()
                return
            self._refuse(str(exc.__context__))
        except httptools.HttpParserError:
            self._parse_error()
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _parse_error(self) -> None:
        """As uvicorn answers a request it cannot parse."""
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        if self._headers > self.max_headers:
            raise HeadTooLarge(f"more than {self.max_headers} headers in one request")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head = 0  # the next byte begins the next request's head
        super().on_message_complete()

    def _refuse(self, message: str) -> None:
        """Answer 431 and stop parsing; close once the client is done or has lingered."""
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined request's head: no 431 into the middle of the response before
            # it; that response ends the connection, and nothing more is read meanwhile
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        body = json.dumps(error_body("headers_too_large", message), separators=(",", ":"))
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[431],
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body.encode(),
                ]
            )
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)  # the client's EOF is sooner


def bounded_protocol(head_bytes: int, headers: int) -> type[BoundedHttpTools]:
    """The protocol class for uvicorn's ``http=``, with these limits on each request head."""

    class Bounded(BoundedHttpTools):
        max_bytes = head_bytes
        max_headers = headers

    return Bounded
