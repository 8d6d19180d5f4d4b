"""Workers ride out a PostgreSQL restart and a lost LISTEN connection."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cluster.conftest import ClusterProject
from tests.cluster.test_workers import check_logs, executions, make_project
from tests.e2e.conftest import wait_for


def restart_postgresql() -> None:
    version = sorted(path.name for path in Path("/etc/postgresql").iterdir())[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=120,
        capture_output=True,
    )


def completed(cluster: ClusterProject, run_ids: list[str]) -> int:
    return sum(status == "completed" for status in cluster.statuses(run_ids).values())


def test_workers_ride_out_a_postgresql_restart(cluster: ClusterProject) -> None:
    make_project(cluster, sleep=0.1)
    cluster.replies("replies:\n  - reply: 'ok'\n    delay: 0.5\n")
    cluster.env["FLOWRUNNER_MAX_AGENTS"] = "2"
    run_ids = cluster.launch_many("mixed", 60)
    workers = [cluster.worker() for _ in range(2)]
    cluster.wait(lambda: completed(cluster, run_ids) >= 5, 60, "some runs to complete")
    assert completed(cluster, run_ids) < 40, "the restart must land while runs execute"
    restart_postgresql()
    cluster.wait(lambda: cluster.all_ended(run_ids), 120, "every run to end after the restart")

    failed = cluster.query("SELECT id, error FROM runs WHERE status <> 'completed'")
    assert not failed, [dict(row) for row in failed][:3]
    assert all(worker.poll() is None for worker in workers), cluster.worker_logs()
    events = cluster.all_events()
    check_logs(events, run_ids)
    retried = "PostgreSQL" in cluster.worker_logs()
    assert retried, "the workers saw the restart (and retried)"
    lost = {
        (e["run_id"], e["step_id"])
        for log in events.values()
        for e in log
        if e["event"] == "lease_expired"
    }
    for key, count in executions(cluster).items():
        assert count <= 1 + (key in lost), key


def test_a_terminated_listen_connection_is_replaced(cluster: ClusterProject) -> None:
    make_project(cluster, sleep=0)
    cluster.env["FLOWRUNNER_POLL_SECONDS"] = "1"
    workers = [cluster.worker() for _ in range(2)]

    def listeners() -> set[int]:
        rows = cluster.query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ? AND query LIKE 'LISTEN%'",
            cluster.application,
        )
        return {row["pid"] for row in rows}

    before = wait_for(lambda: len(listeners()) == 2 and listeners(), 30, "both workers to LISTEN")
    first = cluster.launch_many("mixed", 10)
    cluster.wait(lambda: cluster.all_ended(first), 60, "the first runs to end")
    assert set(cluster.terminate_backends("query LIKE 'LISTEN%'")) == before
    wait_for(lambda: not listeners() & before, 10, "the terminated backends to be gone")
    second = cluster.launch_many("mixed", 10)
    cluster.wait(lambda: cluster.all_ended(second), 60, "runs launched after the termination")
    after = wait_for(lambda: len(listeners()) == 2 and listeners(), 30, "both to LISTEN again")

    assert not after & before, "new LISTEN connections"
    assert set(cluster.statuses(first + second).values()) == {"completed"}
    assert all(worker.poll() is None for worker in workers)
    check_logs(cluster.all_events(), first + second)
