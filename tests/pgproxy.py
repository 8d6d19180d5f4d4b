"""A TCP proxy on loopback in front of the PostgreSQL server, to break connections on cue.

Bytes are forwarded both ways untouched. The proxy knows the local port of each
of its connections to the server, which is ``client_port`` in
``pg_stat_activity``: the backends of a store behind it can be named exactly,
whatever other tests run on the same server.

Faults, each armed for one shot:

* :meth:`Proxy.drop_commit_ack` - the server's CommandComplete for ``COMMIT`` is
  swallowed and both sockets are closed: the transaction committed, but its
  client never hears so (a lost acknowledgement).
* :meth:`Proxy.hold_commit` - the client's ``COMMIT`` is held back and the client's
  socket closed; the server gets the ``COMMIT`` only when :meth:`Proxy.deliver`
  is called (a commit still in progress on the server when its client gave up).
* :meth:`Proxy.stall` - the open connections go silent both ways, no FIN, no RST
  (a network partition); new connections work.
* ``close_delay`` - when the server closes a connection, the client's socket is
  closed that much later (the bytes the server sent before closing go through at
  once).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

COMMIT_ACK = b"C\x00\x00\x00\x0bCOMMIT\x00"
SELECT_ACK = re.compile(rb"C\x00\x00\x00.SELECT \d+\x00", re.DOTALL)
"""The CommandComplete of a SELECT: the end of a statement (one that commits on its own
outside a transaction block, like the store's settle_steps)."""
"""CommandComplete for COMMIT, as the server sends it."""

COMMIT_QUERY = b"Q\x00\x00\x00\x0cCOMMIT;\x00"
"""A simple Query message of ``COMMIT;``, as asyncpg sends it to end a transaction."""


@dataclass(eq=False)
class Link:
    """One client connection and its connection to the server."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    upstream_port: int
    held: bytes = b""
    stalled: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close_client(self) -> None:
        self.client.close()

    def close(self) -> None:
        self.client.close()
        self.server.close()


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to the server of ``url``."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"the proxy needs a TCP server URL, not {url!r}")
        self._url = parts
        self.target = (parts.hostname, parts.port or 5432)
        self.port = 0
        self.connections = 0
        """Client connections accepted so far."""
        self.fired = 0
        """Faults that went off so far."""
        self.server_closes = 0
        """Connections the server closed so far."""
        self.close_delay = 0.0
        self.links: set[Link] = set()
        self._server: asyncio.Server | None = None
        self._drop_ack = False
        self._drop_select = False
        self._hold_commit = False
        self.holding: asyncio.Event = asyncio.Event()
        self._held: Link | None = None

    @property
    def url(self) -> str:
        """The server URL (query included) with the proxy's host and port."""
        parts = self._url
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def upstream_ports(self) -> list[int]:
        """The local ports of the open connections to the server (``client_port``)."""
        return sorted(link.upstream_port for link in self.links)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        tasks = [task for link in self.links for task in link.tasks]
        for link in list(self.links):
            link.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Faults

    def drop_commit_ack(self) -> None:
        """Swallow the next COMMIT acknowledgement and close both sockets."""
        self._drop_ack = True

    def drop_statement_ack(self) -> None:
        """Swallow the next reply that completes a SELECT statement and close both sockets:
        a statement that commits on its own whose acknowledgement is lost."""
        self._drop_select = True

    def hold_commit(self) -> None:
        """Hold the next COMMIT back and close the client's socket (see :meth:`deliver`)."""
        self._hold_commit = True
        self.holding.clear()

    def stall(self) -> None:
        """Forward nothing more on the connections open now, and close none of them."""
        for link in self.links:
            link.stalled = True
        self.fired += 1

    async def deliver(self) -> None:
        """Send the held COMMIT to the server, let it answer (into the void), and close."""
        link, self._held = self._held, None
        assert link is not None, "no COMMIT is held"
        link.server.write(link.held)
        await link.server.drain()
        await asyncio.sleep(0.2)  # the server commits and answers; nobody listens
        link.close()

    # Forwarding

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        link = Link(writer, up_writer, up_writer.get_extra_info("sockname")[1])
        self.links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer, upstream=True)),
            asyncio.create_task(self._pump(link, up_reader, writer, upstream=False)),
        ]
        try:
            await asyncio.wait(link.tasks)
        finally:
            self.links.discard(link)

    async def _pump(
        self,
        link: Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        try:
            while data := await source.read(65536):
                if upstream and self._hold_commit and COMMIT_QUERY in data:
                    self._hold_commit = False
                    self.fired += 1
                    link.held = data
                    self._held = link
                    link.close_client()  # the server side stays open until deliver()
                    self.holding.set()
                    return
                if not upstream and self._drop_ack and COMMIT_ACK in data:
                    self._drop_ack = False
                    self.fired += 1
                    break
                if not upstream and self._drop_select and SELECT_ACK.search(data):
                    self._drop_select = False
                    self.fired += 1
                    break
                if link.stalled:
                    continue
                sink.write(data)
                await sink.drain()
            else:
                if not upstream:
                    self.server_closes += 1
                    await asyncio.sleep(self.close_delay)
        except OSError:
            pass
        if link is not self._held:
            link.close()
        with contextlib.suppress(OSError):
            await sink.wait_closed()
