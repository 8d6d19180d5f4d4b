"""SIGTERM: a worker stops claiming, lets running steps finish within its grace period,
and hands back the rest, which another worker then runs."""

from __future__ import annotations

import signal
import time

from tests.cluster.conftest import ClusterProject
from tests.cluster.test_workers import CODE, executions

FLOW = """
steps:
  - id: quick
    kind: code
    call: {call}
    with: {{name: quick, sleep: 1}}
  - id: slow
    kind: code
    call: {call}
    with: {{name: slow, sleep: 4}}
  - id: after
    kind: code
    needs: [quick, slow]
    call: {call}
    with: {{name: after}}
"""


def test_sigterm_finishes_what_fits_in_the_grace_and_hands_back_the_rest(
    cluster: ClusterProject,
) -> None:
    cluster.code(CODE)
    cluster.flow("two", FLOW.format(call=cluster.call("record")))
    cluster.env["CL_EXEC_LOG"] = str(cluster.root / "executions.log")
    (run_id,) = cluster.launch_many("two", 1)
    first = cluster.worker(extra=["--grace", "2"])
    cluster.wait(lambda: len(executions(cluster)) == 2, 30, "both steps to start")

    stopped_at = time.monotonic()
    first.send_signal(signal.SIGTERM)
    assert cluster.finish(first, 15) == 0
    assert time.monotonic() - stopped_at < 4, "the grace period bounds the shutdown"
    steps = cluster.steps(run_id)
    assert steps["quick"]["status"] == "completed", "finished within the grace"
    assert (steps["slow"]["status"], steps["slow"]["attempts"]) == ("pending", 0)
    assert "step_released" in cluster.event_names(run_id, "slow")
    said = (cluster.logs / "worker-1.log").read_text()  # what the operator sees
    assert "stopping: 2 running step(s) get up to 2s to finish" in said
    assert f"handing back 1 step(s) for another worker: {run_id}/slow" in said
    assert said.rstrip().endswith("stopped")

    second = cluster.worker()
    assert cluster.wait_terminal(run_id, 30) == "completed"
    ran = executions(cluster)
    assert ran[(run_id, "quick")] == 1 and ran[(run_id, "slow")] == 2  # handed back, run again
    started = [e for e in cluster.events(run_id) if e["event"] == "step_started"]
    assert [e["payload"]["attempt"] for e in started if e["step_id"] == "slow"] == [1, 1]
    assert second.poll() is None
