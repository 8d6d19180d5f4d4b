"""Agent backends: real HTTP against a scripted server, real subprocesses, canned replies."""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.agents import (
    AgentError,
    AgentRequest,
    CommandBackend,
    ConfigError,
    OpenAIBackend,
    ReplayBackend,
    ScriptedBackend,
    make_backend,
)
from tests.fakes.chat_server import ChatServer, serving


def request(prompt: str = "hello", step_id: str = "plan", sequence: int = 0) -> AgentRequest:
    return AgentRequest(prompt=prompt, model="m1", step_id=step_id, sequence=sequence)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


# --- openai -----------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ChatServer]:
    yield from serving(lambda prompt: "alpha beta gamma")


async def test_openai_streams_deltas_in_order_and_joins_them(server: ChatServer) -> None:
    backend = OpenAIBackend(server.url, api_key=None)
    deltas: list[str] = []
    try:
        reply = await backend.complete(request(), deltas.append)
    finally:
        await backend.aclose()
    assert deltas == ["alpha ", "beta ", "gamma"]
    assert (reply.text, reply.backend, reply.scripted) == ("alpha beta gamma", "openai", False)


async def test_openai_sends_the_whole_prompt_as_one_user_message(server: ChatServer) -> None:
    prompt = "You are a reviewer.\n\n---\n\nReview this: {{ not a template }}\n"
    backend = OpenAIBackend(server.url + "/", api_key=None)
    try:
        await backend.complete(request(prompt))
    finally:
        await backend.aclose()
    assert server.requests == [
        {"model": "m1", "messages": [{"role": "user", "content": prompt}], "stream": True}
    ]
    assert "Authorization" not in server.headers[0]


async def test_openai_sends_the_key_as_bearer(server: ChatServer) -> None:
    server.api_key = "sk-test"
    backend = OpenAIBackend(server.url, api_key="sk-test")
    try:
        reply = await backend.complete(request())
    finally:
        await backend.aclose()
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    assert reply.text == "alpha beta gamma"


async def test_openai_http_error_names_the_status_and_the_body(server: ChatServer) -> None:
    server.fail_status = 500
    backend = OpenAIBackend(server.url, api_key=None)
    try:
        with pytest.raises(AgentError) as caught:
            await backend.complete(request())
    finally:
        await backend.aclose()
    message = str(caught.value)
    assert "HTTP 500" in message and "scripted failure" in message
    assert "\n" not in message


async def test_openai_wrong_key_is_an_http_error(server: ChatServer) -> None:
    server.api_key = "right"
    backend = OpenAIBackend(server.url, api_key="wrong")
    try:
        with pytest.raises(AgentError, match="HTTP 401: invalid api key"):
            await backend.complete(request())
    finally:
        await backend.aclose()


async def test_openai_unreachable_server_names_the_url() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    backend = OpenAIBackend(url, api_key=None)
    try:
        with pytest.raises(AgentError) as caught:
            await backend.complete(request())
    finally:
        await backend.aclose()
    assert str(caught.value) == (
        f"cannot reach the model at {url}/chat/completions: connection refused"
    )


async def test_openai_understands_a_server_that_ignores_stream(server: ChatServer) -> None:
    server.ignore_stream = True
    backend = OpenAIBackend(server.url, api_key=None)
    deltas: list[str] = []
    try:
        reply = await backend.complete(request(), deltas.append)
    finally:
        await backend.aclose()
    assert reply.text == "alpha beta gamma"
    assert deltas == ["alpha beta gamma"]


async def test_openai_cancel_mid_stream_returns_promptly_and_closes_the_stream(
    server: ChatServer,
) -> None:
    server.reply = lambda prompt: "word " * 50
    server.chunk_delay = 0.1
    backend = OpenAIBackend(server.url, api_key=None)
    first = asyncio.Event()
    task = asyncio.create_task(backend.complete(request(), lambda delta: first.set()))
    try:
        await asyncio.wait_for(first.wait(), 5)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 0.5
    finally:
        await backend.aclose()
    deadline = time.monotonic() + 3
    while server.disconnects == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert server.disconnects == 1


async def test_openai_timeout_by_the_caller_leaves_the_backend_usable(server: ChatServer) -> None:
    server.chunk_delay = 0.5
    backend = OpenAIBackend(server.url, api_key=None)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(backend.complete(request()), 0.2)
        server.chunk_delay = 0
        assert (await backend.complete(request())).text == "alpha beta gamma"
    finally:
        await backend.aclose()


# --- command ----------------------------------------------------------------------------------

REPORT = """
    import json, os, sys
    data = sys.stdin.buffer.read()
    text = data.decode()
    leaked = any(text and text in value for value in os.environ.values())
    json.dump({"argv": sys.argv[1:], "stdin": text, "env": leaked}, sys.stdout)
"""


@pytest.mark.parametrize(
    "prompt",
    ["plain prompt\n", "--help", "$(rm -rf /); echo hi `id` | cat > x", "é ✓ 日本\r\n\x00tab\t"],
    ids=["plain", "dashes", "shell", "unicode"],
)
async def test_command_gets_the_prompt_on_stdin_and_nowhere_else(prompt: str) -> None:
    backend = CommandBackend(python(REPORT))
    reply = await backend.complete(request(prompt))
    assert json.loads(reply.text) == {"argv": [], "stdin": prompt, "env": False}
    assert (reply.backend, reply.scripted) == ("command", False)


async def test_command_handles_a_large_prompt_while_echoing_it() -> None:
    prompt = "0123456789abcdef" * 131072  # 2 MiB: stdin and stdout must flow at once
    echo = python("import sys; sys.stdout.write(sys.stdin.read())")
    reply = await CommandBackend(echo).complete(request(prompt))
    assert reply.text == prompt


async def test_command_streams_stdout_as_deltas() -> None:
    script = """
        import sys, time
        sys.stdin.read()
        for part in ["one ", "two ", "three"]:
            sys.stdout.write(part); sys.stdout.flush(); time.sleep(0.05)
    """
    deltas: list[str] = []
    reply = await CommandBackend(python(script)).complete(request(), deltas.append)
    assert reply.text == "one two three"
    assert "".join(deltas) == reply.text
    assert len(deltas) >= 2


async def test_command_decodes_a_character_split_across_writes() -> None:
    script = """
        import sys, time
        out = sys.stdout.buffer
        out.write(b"caf\\xc3"); out.flush(); time.sleep(0.05)
        out.write(b"\\xa9 \\xff"); out.flush()
    """
    deltas: list[str] = []
    reply = await CommandBackend(python(script)).complete(request(), deltas.append)
    assert reply.text == "café \ufffd"
    assert "".join(deltas) == reply.text


async def test_command_failure_carries_the_exit_code_and_the_stderr_tail() -> None:
    script = """
        import sys
        for n in range(30):
            print(f"line {n}", file=sys.stderr)
        sys.exit(3)
    """
    with pytest.raises(AgentError) as caught:
        await CommandBackend(python(script)).complete(request())
    first, *tail = str(caught.value).splitlines()
    assert first == f"agent command {sys.executable} exited with code 3; stderr:"
    assert tail == [f"line {n}" for n in range(10, 30)]


async def test_command_stderr_tail_is_bounded_in_characters() -> None:
    script = "import sys; sys.stderr.write('x' * 10000); sys.exit(1)"
    with pytest.raises(AgentError) as caught:
        await CommandBackend(python(script)).complete(request())
    tail = str(caught.value).split("\n", 1)[1]
    assert len(tail) == 2000 and tail.startswith("...x")


async def test_command_missing_executable() -> None:
    backend = CommandBackend(["/nonexistent/agent-cli", "--read-only"])
    with pytest.raises(AgentError, match=r"^agent command not found: /nonexistent/agent-cli$"):
        await backend.complete(request())


SPAWNER = """
    import os, signal, subprocess, sys, time
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time\\n"
         "if '--ignore-term' in sys.argv: signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
         "time.sleep(30)", *sys.argv[1:]],
    )
    print(os.getpid(), child.pid, flush=True)
    time.sleep(30)
"""


async def start_spawner(backend: CommandBackend) -> tuple[asyncio.Task[object], list[int]]:
    lines: list[str] = []
    ready = asyncio.Event()

    def on_delta(delta: str) -> None:
        lines.append(delta)
        if "\n" in "".join(lines):
            ready.set()

    task: asyncio.Task[object] = asyncio.create_task(backend.complete(request(), on_delta))
    await asyncio.wait_for(ready.wait(), 10)
    pids = [int(word) for word in "".join(lines).split()]
    assert all(alive(pid) for pid in pids)
    return task, pids


@pytest.mark.parametrize("flags", [[], ["--ignore-term"]], ids=["term", "kill"])
async def test_command_cancel_ends_the_child_and_grandchild_within_a_second(
    flags: list[str],
) -> None:
    task, pids = await start_spawner(CommandBackend([*python(SPAWNER), *flags]))
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    assert await gone_within(pids, 1.0 - (time.monotonic() - started))


async def test_command_timeout_by_the_caller_ends_the_group() -> None:
    backend = CommandBackend(python(SPAWNER))
    pids: list[int] = []

    def on_delta(delta: str) -> None:
        pids.extend(int(word) for word in delta.split())

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(backend.complete(request(), on_delta), 1.0)
    assert len(pids) == 2
    assert time.monotonic() - started < 2.0
    assert await gone_within(pids, 0.1)


async def test_command_leftovers_end_when_the_command_exits() -> None:
    script = """
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        print(child.pid, flush=True)
    """
    started = time.monotonic()
    reply = await CommandBackend(python(script)).complete(request())
    assert time.monotonic() - started < 3.0
    assert await gone_within([int(reply.text)], 0.1)


async def test_command_inherits_only_the_basics_and_the_listed_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWRUNNER_DATABASE_URL", "postgresql://u:pw-5e1@db/x")
    monkeypatch.setenv("CLOUD_SECRET", "cloud-3a9")
    monkeypatch.setenv("AGENT_KEY", "for-the-agent")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    dump = python("import json, os; print(json.dumps(dict(os.environ)))")
    plain = json.loads((await CommandBackend(dump).complete(request())).text)
    listed = CommandBackend.from_setting(shlex.join(dump), "AGENT_KEY,,  MISSING_ONE")
    seen = json.loads((await listed.complete(request())).text)
    assert plain["PATH"] == seen["PATH"] == "/usr/bin:/bin"
    assert "AGENT_KEY" not in plain and seen["AGENT_KEY"] == "for-the-agent"
    assert set(seen) - set(plain) == {"AGENT_KEY"}
    for found in (plain, seen):
        assert not {"FLOWRUNNER_DATABASE_URL", "CLOUD_SECRET", "MISSING_ONE"} & set(found)


def test_command_from_setting_splits_shell_words() -> None:
    backend = CommandBackend.from_setting("agent --mode 'read only' --flag=\"a b\"")
    assert backend.argv == ("agent", "--mode", "read only", "--flag=a b")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "FLOWRUNNER_AGENT_COMMAND is empty"),
        ("agent 'unclosed", "FLOWRUNNER_AGENT_COMMAND is not valid shell words: No closing"),
    ],
)
def test_command_from_setting_refuses_bad_words(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        CommandBackend.from_setting(setting)


# --- scripted ---------------------------------------------------------------------------------

RULES = {
    "replies": [
        {"match": r"review.*plan", "reply": "LGTM"},
        {"match": "plan", "reply": "1. do it"},
        {"reply": "fallback"},
    ]
}


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("please review\nthe plan", "LGTM"),  # DOTALL: '.' spans lines
        ("write a plan", "1. do it"),
        ("anything else", "fallback"),
    ],
)
async def test_scripted_first_matching_rule_wins(prompt: str, expected: str) -> None:
    deltas: list[str] = []
    reply = await ScriptedBackend.from_data(RULES).complete(request(prompt), deltas.append)
    assert (reply.text, reply.backend, reply.scripted) == (expected, "scripted", True)
    assert "".join(deltas) == expected


async def test_scripted_replies_are_literal_and_streamed_in_pieces() -> None:
    text = "Step {step_id} says {{ hi }} " * 4
    backend = ScriptedBackend.from_data({"replies": [{"reply": text}]})
    deltas: list[str] = []
    reply = await backend.complete(request(), deltas.append)
    assert reply.text == text
    assert len(deltas) > 1 and "".join(deltas) == text


async def test_a_scripted_delay_holds_the_reply_back() -> None:
    backend = ScriptedBackend.from_data(
        {"replies": [{"match": "slow", "reply": "late", "delay": 0.2}, {"reply": "soon"}]}
    )
    started = time.perf_counter()
    assert (await backend.complete(request("soon please"))).text == "soon"
    quick = time.perf_counter() - started
    started = time.perf_counter()
    assert (await backend.complete(request("slow please"))).text == "late"
    assert time.perf_counter() - started >= 0.2 > quick


async def test_scripted_no_match_names_the_step() -> None:
    backend = ScriptedBackend.from_data({"replies": [{"match": "^never$", "reply": "x"}]})
    with pytest.raises(AgentError, match=r"^no scripted reply matches step plan$"):
        await backend.complete(request("hello"))
    with pytest.raises(AgentError, match=r"^no scripted reply matches step fan \(call 2\)$"):
        await backend.complete(request("hello", "fan", 2))


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
async def test_scripted_reads_yaml_and_json_files(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"replies{suffix}"
    path.write_text(json.dumps(RULES))
    reply = await ScriptedBackend.from_file(path).complete(request("a plan"))
    assert reply.text == "1. do it"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("bad.yaml", "replies:\n  - match: '['\n    reply: x\n",
         "replies.0.match: not a valid regular expression: unterminated character set"),
        ("bad.yaml", "replies:\n  - match: a\n", "replies.0.reply: Field required"),
        ("bad.yaml", "replies:\n  - reply: x\n    mood: happy\n",
         "replies.0.mood: Extra inputs are not permitted"),
        ("bad.yaml", "replies: []\n", "replies: List should have at least 1 item"),
        ("bad.yaml", "- just a list\n", "the document: Input should be a valid dictionary"),
        ("bad.yaml", "replies: [\n", "bad.yaml:2:1: not valid YAML"),
        ("bad.json", '{"replies": [}', "bad.json:1:14: not valid JSON"),
    ],
)  # fmt: skip
def test_scripted_bad_file_is_a_clear_config_error(
    tmp_path: Path, name: str, content: str, problem: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        ScriptedBackend.from_file(path)
    assert str(caught.value).startswith(str(path)[: -len(name)])
    assert problem in str(caught.value)


def test_scripted_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"^cannot read scripted replies .*nope\.yaml: No such"):
        ScriptedBackend.from_file(path)


# --- replay -----------------------------------------------------------------------------------


async def test_replay_answers_each_call_from_the_recording() -> None:
    backend = ReplayBackend({("plan", 0): ("the plan", False), ("plan", 1): ("x", True)}, "r-1")
    deltas: list[str] = []
    own = await backend.complete(request("any prompt"), deltas.append)
    dispatched = await backend.complete(request("other", sequence=1))
    assert (own.text, own.backend, own.scripted) == ("the plan", "replay", False)
    assert (dispatched.text, dispatched.scripted) == ("x", True)
    assert "".join(deltas) == "the plan"


async def test_replay_missing_call_names_the_run_step_and_call() -> None:
    backend = ReplayBackend({("plan", 0): ("the plan", False)}, "r-1")
    with pytest.raises(
        AgentError, match=r"^run r-1 has no recorded call for step plan \(call 1\)$"
    ):
        await backend.complete(request(sequence=1))


# --- make_backend -----------------------------------------------------------------------------


async def test_make_backend_builds_each_backend(tmp_path: Path) -> None:
    replies = tmp_path / "replies.yaml"
    replies.write_text("replies:\n  - reply: ok\n")
    openai = make_backend("openai", base_url="http://127.0.0.1:1/v1", api_key=None)
    assert isinstance(openai, OpenAIBackend)
    await openai.aclose()
    command = make_backend("command", command="agent --read-only")
    assert isinstance(command, CommandBackend) and command.argv == ("agent", "--read-only")
    scripted = make_backend("scripted", scripted_file=replies)
    assert (await scripted.complete(request())).text == "ok"


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("claude", {}, "unknown agent backend 'claude': FLOWRUNNER_AGENT_BACKEND is one of"),
        ("command", {}, "FLOWRUNNER_AGENT_COMMAND is not set"),
        ("command", {"command": "  "}, "FLOWRUNNER_AGENT_COMMAND is not set"),
        (
            "command",
            {"command": "agent", "agent_env": "HOME, flowrunner_database_url"},
            "^FLOWRUNNER_AGENT_ENV cannot pass flowrunner_database_url: the worker's own",
        ),
        (
            "command",
            {"command": "agent", "agent_env": "GOOD 2BAD"},
            r"^FLOWRUNNER_AGENT_ENV: '2BAD' is not a variable name \(letters, digits and '_',",
        ),
        ("openai", {}, "FLOWRUNNER_OPENAI_BASE_URL is not set"),
        ("openai", {"base_url": "localhost:11434"}, "must be an http:// or https:// URL"),
        ("scripted", {}, "the scripted backend needs a replies file"),
    ],
)
def test_make_backend_refuses_missing_or_unknown_settings(
    name: str, settings: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_backend(name, **settings)  # type: ignore[arg-type]
