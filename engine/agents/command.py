"""The ``command`` backend: an agent CLI run as a subprocess, the prompt on its stdin.

The argument vector comes from configuration only (``FLOWRUNNER_AGENT_COMMAND``,
shell words), so its read-only flags are fixed by the operator; nothing from a
request becomes an argument or an environment variable. The command does not
inherit the worker's environment: it gets a few basics and the variables the
operator lists (see :mod:`engine.agents.environment`). The prompt is written
to stdin and stdin is closed; stdout, decoded as UTF-8, is the reply and is
streamed as it arrives; a non-zero exit is an :class:`AgentError` carrying the
tail of stderr.

The command runs in a new session, so it and everything it starts form one
process group. When the call ends (cancelled, failed, or finished with
leftovers still running) the group gets SIGTERM, then SIGKILL after a short
grace, so nothing outlives the call by more than a second. POSIX only.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import shlex
import signal
from collections.abc import Awaitable, Mapping, Sequence

from engine.agents.base import AgentError, AgentReply, AgentRequest, ConfigError, OnDelta
from engine.agents.environment import agent_environment, passed_names

_READ_SIZE = 64 * 1024
_TERM_GRACE = 0.5
"""How long a process group has to exit after SIGTERM before SIGKILL."""
_LEFTOVER_GRACE = 1.0
"""How long leftover children may keep the command's output open after it exits."""
_POLL = 0.02
_STDERR_KEEP = 16 * 1024
_TAIL_LINES = 20
_TAIL_CHARS = 2000


class CommandBackend:
    """Runs ``argv`` once per call with the prompt on stdin; stdout is the reply."""

    name: str = "command"

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        """``env`` is the command's whole environment; None: the basics of the worker's."""
        if isinstance(argv, str):
            raise ConfigError("the agent command must be a list of words, not one string")
        self.argv = tuple(argv)
        if not self.argv or not self.argv[0]:
            raise ConfigError("the agent command is empty")
        self.env = dict(env) if env is not None else agent_environment(os.environ)

    @classmethod
    def from_setting(cls, text: str, passed: str = "") -> CommandBackend:
        """The backend for ``FLOWRUNNER_AGENT_COMMAND``, split into words like a shell would;
        the command gets the basics and the variables ``passed`` (``FLOWRUNNER_AGENT_ENV``)
        names from the worker's environment, nothing else."""
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise ConfigError(f"FLOWRUNNER_AGENT_COMMAND is not valid shell words: {exc}") from None
        if not argv:
            raise ConfigError("FLOWRUNNER_AGENT_COMMAND is empty")
        return cls(argv, agent_environment(os.environ, passed_names(passed)))

    async def complete(self, request: AgentRequest, on_delta: OnDelta | None = None) -> AgentReply:
        """Run the command with the prompt on stdin and return its stdout."""
        process = await self._start()
        try:
            text, stderr = await _exchange(
                process, request.prompt.encode(errors="replace"), on_delta
            )
        except BaseException:  # cancelled or failed: the whole group goes, then we re-raise
            await _uninterruptible(_stop(process))
            raise
        code = process.returncode
        if code != 0:
            raise AgentError(self._failure(code, stderr))
        return AgentReply(text=text, backend=self.name)

    async def aclose(self) -> None:
        """Nothing to release: every call's processes end with the call."""

    async def _start(self) -> asyncio.subprocess.Process:
        launch = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                start_new_session=True,
            )
        )
        try:
            return await asyncio.shield(launch)
        except asyncio.CancelledError:  # the process may start anyway: stop it before leaving
            await _uninterruptible(_abandon(launch))
            raise
        except FileNotFoundError:
            raise AgentError(f"agent command not found: {self.argv[0]}") from None
        except PermissionError:
            raise AgentError(f"agent command is not executable: {self.argv[0]}") from None
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise AgentError(f"agent command {self.argv[0]} could not start: {reason}") from None

    def _failure(self, code: int | None, stderr: str) -> str:
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        head = f"agent command {self.argv[0]} {how}"
        tail = _tail(stderr)
        return f"{head}; stderr:\n{tail}" if tail else f"{head} (stderr was empty)"


async def _exchange(
    process: asyncio.subprocess.Process, data: bytes, on_delta: OnDelta | None
) -> tuple[str, str]:
    """Feed stdin, read stdout and stderr until the command and its leftovers are done."""
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    if stdin is None or stdout is None or stderr is None:  # pragma: no cover - always piped
        raise RuntimeError("the agent command's pipes are missing")
    output = asyncio.create_task(_read_output(stdout, on_delta))
    errors = asyncio.create_task(_read_tail(stderr))
    tasks = (
        asyncio.create_task(_feed(stdin, data)),
        output,
        errors,
        asyncio.create_task(_reap(process, (output, errors))),
    )
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return output.result(), errors.result()


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command stopped reading; its exit code tells how that went
    finally:
        stdin.close()


async def _read_output(stdout: asyncio.StreamReader, on_delta: OnDelta | None) -> str:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parts: list[str] = []
    final = False
    while not final:
        chunk = await stdout.read(_READ_SIZE)
        final = not chunk
        piece = decoder.decode(chunk, final=final)
        if piece:
            parts.append(piece)
            if on_delta is not None:
                on_delta(piece)
    return "".join(parts)


async def _read_tail(stderr: asyncio.StreamReader) -> str:
    kept = bytearray()
    while chunk := await stderr.read(_READ_SIZE):
        kept += chunk
        del kept[:-_STDERR_KEEP]
    return kept.decode(errors="replace")


async def _reap(process: asyncio.subprocess.Process, readers: Sequence[asyncio.Task[str]]) -> None:
    """Once the command exits, end whatever it left running in its group.

    Leftovers that still hold stdout or stderr get a short grace to finish
    writing; ending the group then closes the pipes so the readers see EOF.
    """
    await _exited(process)
    await asyncio.wait(readers, timeout=_LEFTOVER_GRACE)
    await _end_group(process.pid)


async def _exited(process: asyncio.subprocess.Process) -> None:
    """Wait for the command itself to exit (it is reaped by asyncio's child watcher).

    Python 3.11's ``Process.wait()`` also waits for every pipe to close, which
    a leftover child holding stdout can delay for ever, so the exit is polled.
    """
    while process.returncode is None:
        await asyncio.sleep(_POLL)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """End the command's whole group and reap the command."""
    await _end_group(process.pid)
    await _exited(process)


async def _abandon(launch: asyncio.Future[asyncio.subprocess.Process]) -> None:
    try:
        process = await launch
    except OSError:
        return
    await _stop(process)


async def _end_group(pgid: int) -> None:
    """SIGTERM the process group, then SIGKILL it if anything is left after the grace."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _TERM_GRACE
    while loop.time() < deadline:
        await asyncio.sleep(_POLL)
        if not _signal_group(pgid, 0):
            return
    _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when no member is left to receive it."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def _uninterruptible(cleanup: Awaitable[None]) -> None:
    """Finish ``cleanup`` even if cancelled meanwhile; a cancellation is re-raised after it."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


def _tail(stderr: str) -> str:
    """The last lines of ``stderr``, at most ``_TAIL_LINES`` lines and ``_TAIL_CHARS`` chars."""
    lines = stderr.rstrip().splitlines()[-_TAIL_LINES:]
    while lines and sum(len(line) + 1 for line in lines) > _TAIL_CHARS + 1:
        if len(lines) == 1:
            return "..." + lines[0][-(_TAIL_CHARS - 3) :]
        lines.pop(0)
    return "\n".join(lines)
