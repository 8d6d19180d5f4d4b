"""Live frames on SQLite: ``serve --no-worker`` streams the composed prompt and the token
deltas of a step that a separate ``flowrunner worker`` process runs (through the socket
next to the database file), and a stream opened mid-attempt starts with the prompt and
the reply so far. With serve's own worker, no frame comes twice."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import E2EProject
from tests.e2e.live import FIRST, REST, Follower, Held, check_streams, setup
from tests.fakes.chat_server import ChatServer


@pytest.fixture
def held() -> Iterator[tuple[Held, ChatServer]]:
    reply = Held()
    with ChatServer(reply) as chat:
        try:
            yield reply, chat
        finally:
            reply.released.set()


def test_serve_streams_the_prompt_and_deltas_of_a_separate_worker(
    project: E2EProject, held: tuple[Held, ChatServer]
) -> None:
    reply, chat = held
    setup(project, chat)
    _, base = project.serve("--no-worker")
    project.worker()
    check_streams(project, base, reply, chat)


def test_serves_own_worker_sends_each_frame_once(
    project: E2EProject, held: tuple[Held, ChatServer]
) -> None:
    reply, chat = held
    setup(project, chat)
    _, base = project.serve()
    check_streams(project, base, reply, chat)


def test_a_worker_without_serve_runs_its_steps(
    project: E2EProject, held: tuple[Held, ChatServer]
) -> None:
    """Nobody listens on the socket: the frames are dropped, the step is not slowed."""
    reply, chat = held
    reply.released.set()
    setup(project, chat)
    run_id = project.launch("story", "topic=dragons")
    project.finish(project.worker(until_idle=True))
    assert project.run_status(run_id) == "completed"
    assert project.steps(run_id)["talk"]["output"] == FIRST + REST
    assert "Traceback" not in project.worker_logs()


def test_a_stale_socket_file_is_taken_over(
    project: E2EProject, held: tuple[Held, ChatServer]
) -> None:
    reply, chat = held
    setup(project, chat)
    project.db_path.parent.mkdir(parents=True, exist_ok=True)
    stale = project.db_path.with_name(project.db_path.name + ".live")
    folder = os.open(stale.parent, os.O_PATH)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
            gone.bind(f"/proc/self/fd/{folder}/{stale.name}")  # a serve that was killed
    finally:
        os.close(folder)
    assert stale.exists()
    _, base = project.serve("--no-worker")
    project.worker()
    run_id = project.launch("story", "topic=dragons")
    follower = Follower(base, run_id)
    project.wait(lambda: follower.has("delta", FIRST), 30, "a delta through the old path")
    reply.released.set()
    follower.wait_end()
