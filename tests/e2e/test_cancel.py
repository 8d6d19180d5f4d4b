"""Cancel from another process: agent process groups are stopped, and a cancel racing
step completions ends each run in exactly one terminal state."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

from tests.e2e.conftest import FLOWRUNNER, E2EProject, alive, group_members, wait_for

CANCEL_DEADLINE = 1.5
"""Seconds from the cancel's commit by which the agent's process group must be gone: the
worker checks its leases every 0.25 s and SIGTERMs the group (SIGKILL 0.5 s later); it
takes about 0.3 s, the rest is slack for a loaded machine."""


def test_cancel_stops_the_running_agent_and_its_children(project: E2EProject) -> None:
    project.flow(
        "long",
        """
        steps:
          - id: think
            kind: agent
            prompt: "[[id think]] [[sleep 60]] [[grandchild yes]]"
          - {id: after, kind: agent, needs: [think], prompt: "[[id after]]"}
        """,
    )
    run_id = project.launch("long")
    worker = project.worker()
    agent = project.wait(
        lambda: next((e for e in project.agent_entries() if e["event"] == "start"), None),
        30,
        "the agent to start",
    )
    pid, pgid, child = agent["pid"], agent["pgid"], agent["child"]
    assert pgid == pid, "the agent leads its own process group"
    assert alive(pid) and alive(child)
    assert set(group_members(pgid)) == {pid, child}

    project.cli("cancel", run_id)
    wait_for(
        lambda: not group_members(pgid) and not alive(pid) and not alive(child),
        CANCEL_DEADLINE,
        "the agent's process group to be gone",
        interval=0.01,
    )
    gone_at = time.time()
    committed = next(e for e in project.events(run_id) if e["event"] == "run_cancelled")
    assert gone_at - committed["at"] < CANCEL_DEADLINE, gone_at - committed["at"]

    shown = json.loads(project.cli("show", run_id, "--json").stdout)
    assert shown["status"] == "cancelled"
    assert [(step["id"], step["status"]) for step in shown["steps"]] == [
        ("think", "cancelled"),
        ("after", "cancelled"),
    ]
    assert project.run_status(run_id) == "cancelled"
    assert project.step_statuses(run_id) == {"think": "cancelled", "after": "cancelled"}
    names = project.event_names(run_id)
    assert names.count("run_cancelled") == 1
    assert "step_completed" not in names
    assert not project.ended("think") and not project.started("after")

    assert worker.poll() is None, "the worker keeps serving other runs"
    worker.send_signal(signal.SIGTERM)
    assert project.finish(worker, 20) == 0
    assert project.leftover_agents() == []


RACE_STEP = """
import time


def tick(ctx, pause):
    time.sleep(pause)
    return f"{ctx.run_id} ok"
"""

PREWARMED_CANCEL = """
import sys

from engine.cli.main import app

print("ready", flush=True)
sys.stdin.readline()
app(["--project", sys.argv[1], "cancel", sys.argv[2]], prog_name="flowrunner")
"""
"""``flowrunner cancel`` with its imports done ahead: the command runs the moment a line
arrives on stdin, so the test chooses when the cancel lands (a cold start takes about
1 s, longer on a loaded machine, which would land every cancel after the run ended)."""


def _race_flow(project: E2EProject, layers: int, width: int, seed: int) -> int:
    """``layers`` waves of ``width`` quick code steps, each wave needing the previous one."""
    rng = random.Random(seed)
    lines = ["steps:"]
    previous: list[str] = []
    for layer in range(layers):
        current = [f"s{layer}_{i}" for i in range(width)]
        for step in current:
            lines += [
                f"  - id: {step}",
                "    kind: code",
                f"    call: {project.call('tick')}",
                f"    with: {{pause: {rng.uniform(0.0, 0.05):.3f}}}",
            ]
            if previous:
                lines.append(f"    needs: [{', '.join(previous)}]")
        previous = current
    project.flow("race", "\n".join(lines) + "\n")
    return layers * width


def _spawn(project: E2EProject, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        args,
        cwd=project.root,
        env=project.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    project.processes.append(process)  # ended at teardown if the test fails first
    return process


def test_cancel_racing_completions_ends_each_run_once(project: E2EProject) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    project.code(RACE_STEP)
    total = _race_flow(project, layers=10, width=3, seed=seed)
    count = 5
    launches = [
        _spawn(project, str(FLOWRUNNER), "--project", str(project.root), "run", "race", "--detach")
        for _ in range(count)
    ]
    runs = [launch.communicate(timeout=60)[0].strip() for launch in launches]
    assert [launch.returncode for launch in launches] == [0] * count and len(set(runs)) == count
    script = project.write("cancel.py", PREWARMED_CANCEL)
    cancels = {
        run_id: _spawn(project, sys.executable, str(script), str(project.root), run_id)
        for run_id in runs
    }
    for cancel in cancels.values():
        assert cancel.stdout is not None and cancel.stdout.readline() == "ready\n"

    # cancel each run when a random share of its steps has completed, racing the next
    # completions (a late one may land after the run ended: a conflict, also checked)
    shares = [(i + rng.random()) / count for i in range(count)]
    due = dict(zip(rng.sample(runs, count), shares, strict=True))
    worker = project.worker()
    deadline = time.monotonic() + 60
    while due and time.monotonic() < deadline:
        for run_id, share in list(due.items()):
            done = project.query(
                "SELECT count(*) AS n FROM steps WHERE run_id = ? AND status = 'completed'",
                run_id,
            )[0]["n"]
            ended = project.run_status(run_id) != "running"
            if done >= share * total or ended:
                cancel = cancels[run_id]
                assert cancel.stdin is not None
                cancel.stdin.write("go\n")
                cancel.stdin.flush()
                del due[run_id]
        time.sleep(0.01)
    assert not due, f"seed {seed}: runs never progressed\n{project.worker_logs()}"
    outcomes = {}
    for run_id, cancel in cancels.items():
        out, err = cancel.communicate(timeout=60)
        outcomes[run_id] = (cancel.returncode, out + err)
    for run_id in runs:
        project.wait_terminal(run_id, 60)
    worker.send_signal(signal.SIGTERM)
    assert project.finish(worker, 30) == 0

    seen = []
    for run_id in runs:
        context = f"seed {seed}, run {run_id}, cancel {outcomes[run_id]}\n"
        context += project.describe(run_id)
        status = project.run_status(run_id)
        seen.append(status)
        events = project.events(run_id)
        ends = [e for e in events if e["event"] in ("run_completed", "run_cancelled", "run_failed")]
        assert [e["event"] for e in ends] == [f"run_{status}"], context
        statuses = project.step_statuses(run_id)
        code, said = outcomes[run_id]
        if status == "cancelled":
            assert code == 0 and "cancelled" in said, context
            late = [e["event"] for e in events if e["id"] > ends[0]["id"]]
            assert set(late) <= {"stale_result_refused"}, context
            assert set(statuses.values()) <= {"completed", "cancelled"}, context
            completed = [e["step_id"] for e in events if e["event"] == "step_completed"]
            assert sorted(completed) == sorted(s for s, v in statuses.items() if v == "completed")
            cancelled = {e["step_id"] for e in events if e["event"] == "step_cancelled"}
            assert cancelled == {s for s, v in statuses.items() if v == "cancelled"}, context
        else:
            assert status == "completed", context
            assert code == 1 and "not running" in said, context
            assert set(statuses.values()) == {"completed"}, context
            assert "step_cancelled" not in {e["event"] for e in events}, context
    assert "cancelled" in seen, f"seed {seed}: every cancel came too late: {seen}"
