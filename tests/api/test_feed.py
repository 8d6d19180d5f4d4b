"""``GET /v1/events``: one feed of every run's changes (a run as listed, with the steps
waiting for a decision), resumable with ``Last-Event-ID`` within a process, a ``reset``
frame when what was missed is not known; a change by another process is seen too."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from .conftest import FLOWRUNNER, ApiProject, LiveServer, launch, wait_step
from .test_sse import SSE, Frame, read_frames


@contextmanager
def feed(
    server: LiveServer, last: str | None = None
) -> Iterator[Callable[[Callable[[Frame], bool], float], list[Frame]]]:
    """Follow the feed in a thread; yields ``until(predicate, seconds)``: the frames read
    until one matches (AssertionError past ``seconds``)."""
    frames: queue.Queue[Frame] = queue.Queue()
    headers = {**SSE, **({"Last-Event-ID": last} if last else {})}
    client = server.client("tok-alice")

    streams: list[httpx.Response] = []

    def read() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            client.stream("GET", "/v1/events", headers=headers) as response,
        ):
            streams.append(response)
            for frame in read_frames(response):
                frames.put(frame)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def until(predicate: Callable[[Frame], bool], seconds: float) -> list[Frame]:
        seen, deadline = [], time.monotonic() + seconds
        while True:
            try:
                frame = frames.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no such frame within {seconds}s; saw {seen}") from None
            seen.append(frame)
            if predicate(frame):
                return seen

    try:
        yield until
    finally:
        for response in streams:  # the server sees the client go, and ends the feed
            response.close()
        reader.join(1)
        client.close()


def run_frame(run_id: str, **wanted: Any) -> Callable[[Frame], bool]:
    def matches(frame: Frame) -> bool:
        if frame.event != "run":
            return False
        data = frame.json
        return bool(data["id"] == run_id and all(data[k] == v for k, v in wanted.items()))

    return matches


def test_the_feed_follows_a_run_to_its_gate_and_its_end(server: LiveServer) -> None:
    with server.client("tok-alice") as client, feed(server) as until:
        run_id = launch(client, "gate")
        # frames say how a run is when they are sent: changes close together are one frame
        waiting = until(run_frame(run_id, waiting=["review"]), 10)[-1].json
        assert waiting["flow"] == "gate" and waiting["finished_at"] is None
        decided = client.post(
            f"/v1/runs/{run_id}/steps/review/approve", json={"payload": {"audience": "team"}}
        )
        assert decided.status_code == 200, decided.text
        ended = until(run_frame(run_id, status="completed"), 10)[-1]
        assert ended.json["waiting"] == [] and ended.id and ended.id.count(":") == 1


def test_a_client_that_reconnects_gets_what_it_missed_or_a_reset(server: LiveServer) -> None:
    with server.client("tok-alice") as client:
        with feed(server) as until:
            first = launch(client, "gate")
            last = until(run_frame(first, waiting=["review"]), 10)[-1].id
        missed = launch(client, "gate")  # while nobody follows the feed
        wait_step(client, missed, "review", "waiting")
        with feed(server, last) as until:
            assert until(run_frame(missed, waiting=["review"]), 10)
        with feed(server, "another-boot:3") as until:
            (frame,) = until(lambda f: True, 10)
            assert frame.event == "reset" and frame.id and json.loads(frame.data) == {}


def test_a_change_made_by_another_process_is_seen(project: ApiProject, server: LiveServer) -> None:
    """A cancel by `flowrunner cancel` in another process on the same SQLite file: no
    notification reaches this one, the feed's look at the newest runs finds it."""
    with server.client("tok-alice") as client, feed(server) as until:
        run_id = launch(client, "gate")
        until(run_frame(run_id, waiting=["review"]), 10)
        database = project.root / ".flowrunner" / "api.db"
        done = subprocess.run(
            [str(FLOWRUNNER), "--project", str(project.root), "cancel", run_id],
            env={**os.environ, "FLOWRUNNER_DATABASE_URL": f"sqlite:///{database}"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        until(run_frame(run_id, status="cancelled"), 10)


def test_the_feed_is_only_sent_to_a_client_that_accepts_a_stream(server: LiveServer) -> None:
    """The feed never ends: a plain GET (a script, a generated request) gets a 406 at once."""
    with server.client("tok-alice") as client:
        response = client.get("/v1/events")
    assert response.status_code == 406, response.text
    assert response.json()["error"]["code"] == "not_acceptable"
