"""Hostile templates against a real ``flowrunner serve``: it keeps answering, stays small."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx

from .conftest import E2EProject

FREEZE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"

BLOATS = {  # each took a worker to 1-5 GB before the sandbox bounded it
    "center": "{{ 'x'|center(1000000000) }}",
    "percent": "{{ '%1000000000d' % 1 }}",
    "ljust": "{{ 'x'.ljust(1000000000) }}",
    "format": "{{ '{:>1000000000}'.format(1) }}",
    "indent": "{{ 'a\\nb'|indent(1000000000) }}",
    "join": "{{ range(100000)|join('x' * 100000) }}",
    "macro": "{% macro f(s) %}{{ f(s ~ 'y') }}{% endmacro %}{{ f('x' * 900000) }}",
    "lists": "{% set a = ['x' * 999999] %}{% set a = [a, a, a] %}{{ [a, a] }}",
}

LINT_BOMB = """version: 1
name: bomb
steps:
  - {id: a, kind: agent, prompt: hi, when: "'x'|center(1000000000) == 'x'"}
"""


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) so far, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def agent_flow(project: E2EProject, name: str, prompt: str) -> None:
    project.flow(name, f"steps:\n  - {{id: a, kind: agent, prompt: {json.dumps(prompt)}}}\n")


def launch(base: str, flow: str) -> str:
    response = httpx.post(f"{base}/v1/flows/{flow}/runs", json={}, timeout=10)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_template_that_would_loop_for_hours_cannot_freeze_serve(project: E2EProject) -> None:
    agent_flow(project, "freeze", FREEZE)
    agent_flow(project, "fine", "[[id fine]] hello")
    process, base = project.serve(FLOWRUNNER_RENDER_TIMEOUT="1")
    frozen = launch(base, "freeze")
    fine = launch(base, "fine")
    slowest, started = 0.0, time.monotonic()
    while time.monotonic() - started < 2:  # the render's whole second, and after it
        asked = time.monotonic()
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        slowest = max(slowest, time.monotonic() - asked)
        time.sleep(0.02)
    assert project.wait_terminal(frozen, 10) == "failed"
    assert project.steps(frozen)["a"]["error"] == (
        "step 'a' prompt: template rendering took longer than 1 s"
    )
    assert project.wait_terminal(fine, 10) == "completed"
    assert slowest < 0.5, f"/healthz took {slowest:.3f}s while a template rendered"
    # A render is never left running: SIGTERM ends serve promptly.
    again = launch(base, "freeze")
    project.wait(lambda: project.steps(again)["a"]["status"] == "running", 10, "the render")
    stopping = time.monotonic()
    process.send_signal(signal.SIGTERM)
    project.finish(process, timeout=10)
    assert time.monotonic() - stopping < 5


def test_templates_that_would_allocate_gigabytes_are_refused_before_they_do(
    project: E2EProject,
) -> None:
    for name, prompt in BLOATS.items():
        agent_flow(project, name, prompt)
    agent_flow(project, "fine", "[[id fine]] hello")
    process, base = project.serve()
    assert project.wait_terminal(launch(base, "fine"), 20) == "completed"
    baseline = peak_rss_mb(process.pid)
    runs = {name: launch(base, name) for name in BLOATS}
    linted = httpx.post(f"{base}/v1/lint", content=LINT_BOMB, timeout=30)
    assert linted.status_code == 200, linted.text
    for name, run_id in runs.items():
        assert project.wait_terminal(run_id, 30) == "failed", name
        error = project.steps(run_id)["a"]["error"]
        assert "would build" in error or "in all" in error, (name, error)
    grown = peak_rss_mb(process.pid) - baseline
    assert grown < 100, f"serve's peak memory grew by {grown:.0f} MB"
