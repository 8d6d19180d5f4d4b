"""`flowrunner run` at a terminal: the live view, and a gate answered at the prompt."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

FLOWRUNNER = Path(sys.executable).parent / "flowrunner"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

FLOW = """\
version: 1
name: gated
steps:
  - {id: draft, kind: agent, prompt: "Draft a note.", fields: [mood]}
  - id: ok
    kind: approval
    needs: [draft]
    message: "Send the {{ steps.draft.fields.mood }} note?"
    form:
      audience: {type: string, enum: [team, public], default: team}
"""


class Terminal:
    """A process on a pseudo-terminal, read as plain text."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True
        )
        os.close(slave)
        self.text = ""

    def read_until(self, pattern: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {pattern!r} in:\n{self.text}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the process closed the terminal
                    chunk = b""
                if not chunk and self.process.poll() is not None:
                    assert re.search(pattern, self.text), self.text
                    return
                self.text += ANSI.sub("", chunk.decode("utf-8", "replace"))

    def type(self, line: str) -> None:
        os.write(self.master, f"{line}\r".encode())


def test_a_gate_is_answered_at_the_terminal(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "gated.yaml").write_text(FLOW)
    (tmp_path / "replies.yaml").write_text('replies:\n  - reply: "A note.\\nmood: calm"\n')
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLOWRUNNER_")},
        "FLOWRUNNER_AGENT_BACKEND": "scripted",
        "FLOWRUNNER_SCRIPTED_REPLIES": "replies.yaml",
        "TERM": "xterm",
        "COLUMNS": "120",
    }
    terminal = Terminal([str(FLOWRUNNER), "run", "gated"], tmp_path, env)
    try:
        terminal.read_until(r"Send the calm note\?")
        terminal.read_until(r"Approve\?")
        terminal.type("y")
        terminal.read_until(r"Comment")
        terminal.type("fine by me")
        terminal.read_until(r"audience")
        terminal.type('"public"')
        terminal.read_until(r"run \w+ completed")
        assert terminal.process.wait(timeout=30) == 0
    finally:
        if terminal.process.poll() is None:
            terminal.process.kill()
        os.close(terminal.master)
    listed = subprocess.run(
        [str(FLOWRUNNER), "runs", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    (run,) = json.loads(listed.stdout)
    shown = subprocess.run(
        [str(FLOWRUNNER), "show", run["id"], "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    gate = {step["id"]: step for step in json.loads(shown.stdout)["steps"]}["ok"]
    assert gate["data"]["approved"] is True
    assert gate["data"]["payload"] == {"audience": "public"}
    assert gate["output"] == "fine by me"
    assert "[scripted]" in terminal.text  # the live view marks scripted output
