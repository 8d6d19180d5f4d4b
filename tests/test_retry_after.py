"""``Retry-After`` on a 429 or 503 from the model: honoured within a call, within caps.

Against the scripted chat-completions server on loopback (real HTTP), timing
when the requests arrive; the parser alone for the forms a header can take;
and once through ``flowrunner run``, where the setting reaches the backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from engine.agents import AgentRequest, OpenAIBackend, RetryLater
from engine.agents.retry_after import seconds_to_wait
from tests.fakes.chat_server import ChatServer, serving

FLOWRUNNER = Path(sys.executable).parent / "flowrunner"
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("Tue, 14 Nov 2023 22:13:30 GMT", 10.0),  # NOW + 10 s, IMF-fixdate
        ("Tuesday, 14-Nov-23 22:13:30 GMT", 10.0),  # RFC 850
        ("Tue Nov 14 22:13:30 2023", 10.0),  # asctime
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),  # in the past: now
        (None, None),
        ("", None),
        ("-5", None),
        ("soon", None),
        ("1e9", None),
        ("inf", None),
        ("99999999999", None),
        ("Tue, 99 Nov 2023 22:13:30 GMT", None),
    ],
)
def test_seconds_to_wait_reads_both_forms_and_nothing_else(
    value: str | None, expected: float | None
) -> None:
    assert seconds_to_wait(value, NOW) == expected


def request() -> AgentRequest:
    return AgentRequest(prompt="hello", model="m1", step_id="plan")


@pytest.fixture
def server() -> Iterator[ChatServer]:
    yield from serving(lambda prompt: "alpha beta")


async def call(server: ChatServer, max_retry_after: float = 60) -> str:
    backend = OpenAIBackend(server.url, None, max_retry_after=max_retry_after)
    try:
        return (await backend.complete(request())).text
    finally:
        await backend.aclose()


async def test_delay_seconds_are_waited_before_the_next_request(server: ChatServer) -> None:
    server.refusals = [(429, {"Retry-After": "1"}), (503, {"Retry-After": "1"})]
    assert await call(server) == "alpha beta"
    first, second, third = server.arrivals
    assert second - first >= 1.0
    assert third - second >= 1.0


async def test_an_http_date_is_waited_for(server: ChatServer) -> None:
    when = int(time.time()) + 2  # whole seconds: the date has no finer resolution
    date = format_datetime(datetime.fromtimestamp(when, UTC), usegmt=True)
    server.refusals = [(503, {"Retry-After": date})]
    assert await call(server) == "alpha beta"
    assert len(server.arrivals) == 2
    assert server.arrivals[1] >= when


async def test_a_wait_longer_than_the_cap_fails_the_attempt_at_once(server: ChatServer) -> None:
    server.refusals = [(429, {"Retry-After": "120"})]
    started = time.monotonic()
    with pytest.raises(RetryLater) as caught:
        await call(server, max_retry_after=60)
    assert time.monotonic() - started < 1
    assert caught.value.retry_after == 120
    assert str(caught.value) == (
        f"the model at {server.url}/chat/completions answered HTTP 429, retry after 120s: "
        "scripted refusal (not retried: a call waits 60s at most, "
        "FLOWRUNNER_OPENAI_MAX_RETRY_AFTER)"
    )
    assert len(server.requests) == 1


async def test_the_cap_bounds_the_waits_of_one_call_together(server: ChatServer) -> None:
    server.refusals = [(429, {"Retry-After": "1"})] * 3
    started = time.monotonic()
    with pytest.raises(RetryLater, match=r"not retried: a call waits 1.5s at most"):
        await call(server, max_retry_after=1.5)
    assert 1 <= time.monotonic() - started < 1.5
    assert len(server.requests) == 2


async def test_a_server_that_always_refuses_is_asked_four_times(server: ChatServer) -> None:
    server.refusals = [(429, {"Retry-After": "0"})] * 10
    with pytest.raises(RetryLater, match=r"retry after 0s: scripted refusal \(4 tries\)$"):
        await call(server)
    assert len(server.requests) == 4


@pytest.mark.parametrize(
    ("status", "headers"),
    [(429, {}), (429, {"Retry-After": "whenever"}), (500, {"Retry-After": "1"})],
    ids=["no-header", "unreadable", "not-429-or-503"],
)
async def test_without_a_usable_retry_after_the_attempt_fails_at_once(
    server: ChatServer, status: int, headers: dict[str, str]
) -> None:
    server.refusals = [(status, headers)]
    with pytest.raises(Exception, match=f"answered HTTP {status}: scripted refusal$") as caught:
        await call(server)
    assert not isinstance(caught.value, RetryLater)
    assert len(server.requests) == 1


def run_hello(
    server: ChatServer, root: Path, step: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    """``flowrunner run hello --json`` in ``root``, its one agent step ``step`` (YAML flow
    mapping fields after ``id``), the openai backend on ``server``, and ``settings``."""
    (root / "flows").mkdir(exist_ok=True)
    (root / "flows" / "hello.yaml").write_text(
        f"version: 1\nname: hello\nsteps:\n  - {{id: greet, kind: agent, {step}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRUNNER_")}
    env.update(FLOWRUNNER_AGENT_BACKEND="openai", FLOWRUNNER_OPENAI_BASE_URL=server.url)
    env.update({f"FLOWRUNNER_{name.upper()}": value for name, value in settings.items()})
    return subprocess.run(
        [str(FLOWRUNNER), "run", "hello", "--json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_run_waits_out_a_rate_limit_in_one_attempt(server: ChatServer, tmp_path: Path) -> None:
    """Through the console script: a step without retries completes after a 429, its one
    attempt waiting what the server asked; FLOWRUNNER_OPENAI_MAX_RETRY_AFTER reaches it."""
    server.refusals = [(429, {"Retry-After": "1"})]
    done = run_hello(server, tmp_path, "prompt: hi")
    assert done.returncode == 0, done.stderr
    [step] = json.loads(done.stdout)["steps"]
    assert (step["status"], step["attempts"], step["output"]) == ("completed", 1, "alpha beta")
    assert server.arrivals[1] - server.arrivals[0] >= 1.0
    server.refusals = [(429, {"Retry-After": "1"})]
    done = run_hello(server, tmp_path, "prompt: hi", openai_max_retry_after="0")
    assert done.returncode == 1
    [step] = json.loads(done.stdout)["steps"]
    assert "not retried: a call waits 0s at most" in step["error"]


def test_a_step_retry_waits_at_least_what_the_model_asked(
    server: ChatServer, tmp_path: Path
) -> None:
    """Past the call's own cap the attempt fails, and the step's retry is not asked for
    before the server's Retry-After, however short the step's retry_delay."""
    server.refusals = [(503, {"Retry-After": "2.5"})]
    done = run_hello(
        server,
        tmp_path,
        "prompt: hi, retries: 1, retry_delay: 1s",
        openai_max_retry_after="0",
        poll_seconds="0.05",
    )
    assert done.returncode == 0, done.stderr
    [step] = json.loads(done.stdout)["steps"]
    assert (step["status"], step["attempts"]) == ("completed", 2)
    assert server.arrivals[1] - server.arrivals[0] >= 2.5
