"""Live frames on PostgreSQL: ``serve --no-worker`` streams the composed prompt and the
token deltas of a step that a separate ``flowrunner worker`` runs (NOTIFY on the live
channel), and a stream opened mid-attempt starts with the prompt and the reply so far."""

from __future__ import annotations

from tests.cluster.conftest import ClusterProject
from tests.e2e.live import Held, check_streams, setup
from tests.fakes.chat_server import ChatServer


def test_serve_streams_the_prompt_and_deltas_of_a_separate_worker(
    cluster: ClusterProject,
) -> None:
    reply = Held()
    with ChatServer(reply) as chat:
        try:
            setup(cluster, chat)
            _, base = cluster.serve("--no-worker")
            cluster.worker()
            check_streams(cluster, base, reply, chat)
        finally:
            reply.released.set()


def test_serves_own_worker_sends_each_frame_once(cluster: ClusterProject) -> None:
    """Its worker's frames come directly and through NOTIFY: the second are skipped."""
    reply = Held()
    with ChatServer(reply) as chat:
        try:
            setup(cluster, chat)
            _, base = cluster.serve()
            check_streams(cluster, base, reply, chat)
        finally:
            reply.released.set()
