"""``flowrunner serve``: the HTTP API and a worker in one process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import json
import signal
import socket
from collections.abc import Iterator
from typing import Annotated

import typer
import uvicorn

from engine.api.app import create_app, dump_openapi
from engine.api.context import Api
from engine.api.frames import Frames
from engine.api.heads import bounded_protocol
from engine.api.live import Receiver
from engine.api.sessions import Sessions
from engine.cli.common import (
    app,
    exit_past_threads,
    fail,
    log_to_stderr,
    open_project,
    run_async,
)
from engine.config import Project
from engine.errors import FlowrunnerError
from engine.runner.setup import agent_backend, open_store
from engine.runner.worker import Worker


class Server(uvicorn.Server):
    """uvicorn's server, minus re-raising SIGTERM/SIGINT once it has stopped: ``serve``
    still has to stop its worker (running steps get their grace period, the rest are
    handed back) and close the store before it exits."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def quiet_collector() -> None:
    """Keep the cyclic garbage collector out of request latency: what start-up allocated
    (modules, the app, the settings) is frozen out of every collection, and the youngest
    generation is collected every 20,000 allocations instead of 700. Under 20 concurrent
    launches this halved the p99 (about 100 ms to 50 ms; see bench/api_bench.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


API_IDENTITY = "api"
"""The identity of ``FLOWRUNNER_API_TOKEN`` (a tokens file names its own)."""


def api_tokens(project: Project) -> dict[str, str] | None:
    """Bearer tokens and their identities, from the settings; None when there are none."""
    settings = project.settings
    tokens: dict[str, str] = {}
    if settings.api_tokens_file:
        path = project.root / settings.api_tokens_file
        try:
            loaded = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise fail(f"FLOWRUNNER_API_TOKENS_FILE {path}: {exc}") from None
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k for k, v in loaded.items()
        ):
            raise fail(f"FLOWRUNNER_API_TOKENS_FILE {path}: expected an object of token: identity")
        tokens.update(loaded)
    if settings.api_token:
        tokens[settings.api_token] = API_IDENTITY
    return tokens or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        with contextlib.suppress(OSError):
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        return False


@app.command()
def openapi(
    check: Annotated[bool, typer.Option("--check", help="Fail if the file is stale.")] = False,
) -> None:
    """Write docs/openapi.json (the HTTP API's OpenAPI document) or check it is up to date."""
    project = open_project()
    target = project.root / "docs" / "openapi.json"
    store = open_store(project)  # not opened: the document needs no database
    text = dump_openapi(create_app(Api(project, store)))
    if check:
        if not target.is_file() or target.read_text("utf-8") != text:
            raise fail(f"{target} is stale: run 'flowrunner openapi'", 1)
        typer.echo(f"{target} is up to date")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, "utf-8")
    typer.echo(f"wrote {target}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    worker: Annotated[bool, typer.Option(help="Run a worker in this process too.")] = True,
    access_log: Annotated[
        bool, typer.Option(help="Log every request (a tenth of a launch's time).")
    ] = False,
) -> None:
    """Serve the HTTP API (and a worker); takes over unfinished runs at start."""
    project = open_project()
    tokens = api_tokens(project)
    if tokens is None and not is_loopback(host):
        raise fail(f"refusing to listen on {host} without FLOWRUNNER_API_TOKEN (or a tokens file)")

    log_to_stderr()

    async def main() -> None:
        store = open_store(project)
        await store.open()
        frames = Frames()
        runner = None
        if worker:
            runner = Worker(store, project, agent_backend(project))
            runner.subscribers.append(frames.publish)
        # frames of workers in other processes (this one's come directly)
        store.listen_live(Receiver(frames.publish, runner.id if runner else None).payload)
        store.subscribe(frames.changed)  # runs other processes change
        context = Api(project, store, tokens, frames)
        context.sessions = Sessions(
            project.settings.session_secret, project.settings.session_hours * 3600
        )
        if runner is not None:
            context.on_change = runner.wake.set
        api = create_app(context)
        quiet_collector()
        settings = project.settings
        server = Server(
            uvicorn.Config(
                api,
                host=host,
                port=port,
                http=bounded_protocol(settings.max_header_bytes, settings.max_headers),
                log_level="info",
                access_log=access_log,
            )
        )
        work = asyncio.create_task(runner.run()) if runner else None
        try:
            await server.serve()
        finally:
            if runner is not None and work is not None:
                runner.stop()
                await work
            await store.close()

    try:
        run_async(main())
    except FlowrunnerError as exc:
        raise fail(exc.message) from None
    if worker:
        exit_past_threads(0)
