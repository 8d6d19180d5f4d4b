"""A worker's live frames as payloads (engine/runner/live.py) and joined again by serve
(engine/api/live.py), and the bounds of the sender."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from engine.api.live import Receiver
from engine.errors import StoreError
from engine.runner import live
from engine.runner.live import Sender, payloads
from engine.store.sqlite import SqliteStore

TEXT = 'plain, \x00\x1f control, ünïcödé, 🐉 dragons, "quotes" \\ ' * 400


def frame(event: str, text: str, step: str = "s") -> dict[str, Any]:
    return {"run_id": "r", "step_id": step, "event": event, "text": text}


@pytest.mark.parametrize("limit", [200, 7900, 60_000])
def test_payloads_stay_under_the_limit_and_join_back_to_the_frames(limit: int) -> None:
    frames = [
        {**frame("prompt", TEXT), "attempt": 2},
        frame("delta", "a"),
        frame("delta", TEXT, "t"),
        frame("delta", "b"),
    ]
    sent = payloads("w1", frames, limit)
    assert all(len(p.encode()) <= limit for p in sent)
    got: list[dict[str, Any]] = []
    receiver = Receiver(got.append, own="serve-worker")
    for payload in sent:
        receiver.payload(payload)
    assert got == frames


def test_a_receiver_skips_its_own_workers_frames_and_what_is_not_a_frame() -> None:
    got: list[dict[str, Any]] = []
    receiver = Receiver(got.append, own="mine")
    receiver.payload(payloads("mine", [frame("delta", "x")], 7900)[0])
    receiver.payload("not json")
    receiver.payload(json.dumps({"worker": "w", "frames": [{"event": "changed"}, 3]}))
    assert got == []


class Failing(SqliteStore):
    """A store whose live channel fails (say, PostgreSQL is down)."""

    async def send_live(self, payloads: list[str]) -> None:
        raise StoreError("no connection")


async def test_frames_are_batched_and_a_flush_sends_them_at_once(tmp_path: Path) -> None:
    """serve's end of the socket gets one payload per batch; a change is not sent (the
    store tells it itself)."""
    serve, worker = SqliteStore(tmp_path / "db"), SqliteStore(tmp_path / "db")
    got: list[str] = []
    serve.listen_live(got.append)
    sender = Sender(worker, "w1")
    try:
        for piece in "abc":
            sender.send(frame("delta", piece))
        sender.send({"run_id": "r", "step_id": "s", "event": "changed"})
        await asyncio.sleep(0.01)
        assert got == []
        await sender.flush()
        await asyncio.sleep(0.01)
        assert len(got) == 1
        assert [f["text"] for f in json.loads(got[0])["frames"]] == ["a", "b", "c"]
        sender.send(frame("delta", "d"))
        await asyncio.sleep(live.BATCH_SECONDS * 3)
        assert len(got) == 2
    finally:
        await sender.close()
        await serve.close()
        await worker.close()


async def test_nobody_listening_is_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = SqliteStore(tmp_path / "db")
    sender = Sender(worker, "w1")
    sender.send(frame("delta", "x"))
    await sender.close()
    assert not sender.failed and not caplog.records
    await worker.close()


async def test_frames_past_the_pending_bound_are_dropped_and_a_failure_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "PENDING_BYTES", 10)
    store = Failing(tmp_path / "db")
    sender = Sender(store, "w1")
    sender.send(frame("delta", "12345"))
    sender.send(frame("delta", "12345"))
    sender.send(frame("delta", "x"))  # past 10 characters waiting
    assert sender.dropped == 1
    await sender.flush()
    sender.send(frame("delta", "y"))
    await sender.flush()
    warnings = [r.message for r in caplog.records]
    assert warnings == ["live frames are not reaching other processes: no connection"]
    await sender.close()
    await store.close()
