"""Live frames between the processes of one machine: a unix datagram socket next to the
SQLite file (``<db>.live``), bound by ``serve``; every worker ``sendto``s it without
blocking. A payload nobody reads (no ``serve``, or its buffer is full) is dropped."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("flowrunner.store")

DATAGRAM_BYTES = 60_000
"""The largest payload: under the 64 KiB a datagram may carry, whatever the kernel."""

RECEIVE_BUFFER = 4 * 1024 * 1024
"""Room for bursts while ``serve``'s loop is busy (the kernel may grant less)."""

PATH_BYTES = 100
"""Longer socket paths are reached through the folder's descriptor (the limit is 108)."""

UNHEARD = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.ENOBUFS})
"""Nobody listens, or the listener is behind: the payload is dropped, no error."""


def socket_path(database: Path) -> Path:
    return database.with_name(database.name + ".live")


class Datagrams:
    """The sending and the receiving end of one database's socket."""

    def __init__(self, database: Path) -> None:
        self.path = socket_path(database)
        self._out: socket.socket | None = None
        self._in: socket.socket | None = None
        self._folder: int | None = None

    def _address(self) -> bytes:
        """The socket's path, or one through ``/proc/self/fd`` when it is too long."""
        path = os.fsencode(self.path)
        if len(path) < PATH_BYTES:
            return path
        if self._folder is None:
            self._folder = os.open(self.path.parent, os.O_PATH | os.O_DIRECTORY)
        return os.fsencode(f"/proc/self/fd/{self._folder}/{self.path.name}")

    def send(self, payloads: list[str]) -> None:
        if self._out is None:
            self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._out.setblocking(False)
        target = self._address()
        for payload in payloads:
            try:
                self._out.sendto(payload.encode(), target)
            except OSError as exc:
                if exc.errno in UNHEARD:
                    return  # the next ones would fare no better
                raise

    def listen(self, callback: Callable[[str], None]) -> None:
        """Bind the socket (taking over a stale one) and pass what arrives to ``callback``;
        when another live process holds it already, log that and receive nothing."""
        if self._in is not None:
            return
        path = self._address()
        if self._held(path):
            log.warning("%s is in use by another process: no live frames here", self.path)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            log.warning("cannot bind %s, no live frames of other workers: %s", self.path, exc)
            return
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self._in = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._receive, callback)

    @staticmethod
    def _held(path: bytes) -> bool:
        """Whether a live process has the socket bound (a stale file refuses)."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(path)
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def _receive(self, callback: Callable[[str], None]) -> None:
        assert self._in is not None
        while True:
            try:
                data = self._in.recv(DATAGRAM_BYTES + 1024)
            except (BlockingIOError, InterruptedError):
                return
            try:
                callback(data.decode())
            except Exception:  # one bad payload must not stop the others
                log.exception("a live payload could not be passed on")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._in is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                asyncio.get_running_loop().remove_reader(self._in.fileno())
            self._in.close()
            self._in = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        if self._folder is not None:
            os.close(self._folder)
            self._folder = None
