"""Several worker processes on one PostgreSQL: every step once, every run to its end.

The flow mixes code steps (they append one line per execution to a log the test
reads), an agent step (the scripted backend), a step whose `when` is false, a
gate that times out into an approval, and a join. Without faults each step runs
exactly once. Under chaos (``kill -9`` of a random worker every half second,
restarted each time) a step runs again only when its worker was killed under
it, and nothing that completed runs again.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from typing import Any

from tests.cluster.conftest import ClusterProject

CODE = """
import json
import os
import time


def record(ctx, name, sleep=0):
    line = json.dumps({"run": ctx.run_id, "step": name, "pid": os.getpid()})
    fd = os.open(os.environ["CL_EXEC_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)
    time.sleep(sleep)
    return name
"""

FLOW = """
steps:
  - id: prepare
    kind: code
    call: {call}
    with: {{name: prepare, sleep: {sleep}}}
  - id: left
    kind: code
    needs: [prepare]
    call: {call}
    with: {{name: left, sleep: {sleep}}}
  - id: right
    kind: agent
    persona: helper
    needs: [prepare]
    prompt: "Answer {{{{ steps.prepare.output }}}}"
  - id: never
    kind: code
    needs: [left]
    when: "false"
    call: {call}
    with: {{name: never}}
  - id: gate
    kind: approval
    needs: [left]
    message: "Go on?"
    timeout: 1s
    on_timeout: approve
  - id: join
    kind: code
    needs: [right, never, gate]
    call: {call}
    with: {{name: join, sleep: {sleep}}}
"""

CODE_STEPS = ("prepare", "left", "join")


def make_project(cluster: ClusterProject, sleep: float) -> None:
    cluster.code(CODE)
    cluster.write("personas/helper.md", "You help.\n")
    cluster.flow("mixed", FLOW.format(call=cluster.call("record"), sleep=sleep))
    cluster.env["CL_EXEC_LOG"] = str(cluster.root / "executions.log")


def executions(cluster: ClusterProject) -> Counter[tuple[str, str]]:
    path = cluster.root / "executions.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter((entry["run"], entry["step"]) for entry in map(json.loads, lines))


def check_logs(events: dict[str, list[dict[str, Any]]], run_ids: list[str]) -> None:
    """Each run's log is gapless and ordered, and no step runs after it completed."""
    assert set(events) >= set(run_ids)
    for run_id in run_ids:
        log = events[run_id]
        assert [e["id"] for e in log] == list(range(1, len(log) + 1)), run_id
        names = [(e["step_id"], e["event"], e["payload"]) for e in log]
        assert log[0]["event"] == "run_started" and log[-1]["event"] == "run_completed", names
        done: set[str] = set()
        for event in log:
            step = event["step_id"]
            if event["event"] == "step_started":
                assert step not in done, f"{run_id}/{step} started again after completing"
            if event["event"] in ("step_completed", "step_skipped"):
                assert step not in done, f"{run_id}/{step} settled twice"
                done.add(step)
        assert done == {"prepare", "left", "right", "never", "gate", "join"}, run_id


def test_three_workers_run_300_runs_each_step_once(cluster: ClusterProject) -> None:
    make_project(cluster, sleep=0)
    workers = [cluster.worker() for _ in range(3)]
    cluster.wait(lambda: cluster.worker_logs().count(" started (pid ") == 3, 60, "3 workers")
    run_ids = cluster.launch_many("mixed", 300)
    cluster.wait(lambda: cluster.all_ended(run_ids), 120, "300 runs to end")

    assert set(cluster.statuses(run_ids).values()) == {"completed"}
    ran = executions(cluster)
    assert set(ran.values()) == {1}, [key for key, n in ran.items() if n > 1][:5]
    assert len(ran) == 300 * len(CODE_STEPS)
    calls = cluster.query("SELECT run_id, step_id, attempt FROM agent_calls")
    assert sorted((c["run_id"], c["attempt"]) for c in calls) == [(r, 1) for r in sorted(run_ids)]
    events = cluster.all_events()
    check_logs(events, run_ids)
    every = [e for log in events.values() for e in log]
    assert not [e for e in every if e["event"] in ("stale_result_refused", "lease_expired")]
    owners = {e["payload"]["worker"] for e in every if e["event"] == "step_started"}
    assert len(owners) == 3, "every worker took a share"
    assert all(worker.poll() is None for worker in workers)


def test_kill_9_a_random_worker_every_half_second(cluster: ClusterProject) -> None:
    make_project(cluster, sleep=0.2)
    cluster.replies("replies:\n  - reply: 'ok'\n    delay: 0.3\n")
    cluster.env["FLOWRUNNER_MAX_AGENTS"] = "4"
    cluster.env["FLOWRUNNER_MAX_CODE"] = "4"
    # The default FLOWRUNNER_MAX_CRASHES (3): the kills are the test's, not the steps', and
    # a step caught with company counts no crash (it then runs alone), so none may fail.
    run_ids = cluster.launch_many("mixed", 300)
    workers = [cluster.worker() for _ in range(3)]
    chance = random.Random(5)
    killed = 0
    while killed < 20:
        time.sleep(0.5)
        index = chance.randrange(len(workers))
        cluster.kill9(workers[index])
        workers[index] = cluster.worker()
        killed += 1
    assert not cluster.all_ended(run_ids), "the kills must land while runs execute"
    cluster.wait(lambda: cluster.all_ended(run_ids), 240, "300 runs to end after the kills")

    failed = cluster.query("SELECT id, error FROM runs WHERE status <> 'completed'")
    assert not failed, [dict(row) for row in failed]
    events = cluster.all_events()
    check_logs(events, run_ids)
    taken_over = Counter(
        (run_id, e["step_id"])
        for run_id, log in events.items()
        for e in log
        if e["event"] == "lease_expired"
    )
    assert taken_over, "some steps were interrupted by the kills"
    for (run_id, step), count in executions(cluster).items():
        assert count <= 1 + taken_over[(run_id, step)], (run_id, step, count)
    assert sum(taken_over.values()) <= 20 * (4 + 4), "at most a worker's capacity per kill"
