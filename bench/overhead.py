"""Engine overhead per persisted step: no-op code steps on SQLite or PostgreSQL.

Run: ``python bench/overhead.py`` (``--sizes``, ``--runs`` to change the load).
Chains and fan-outs of 100, 1,000 and 5,000 no-op code steps, then 50
concurrent runs of a 10-step flow; each run goes through the real worker and
store (claims, leases, results, events), in one process.
Targets on SQLite: at most 1 ms per step at 1,000 steps; per-step cost at 5,000
within 1.5x of that at 100.

``--database-url postgresql://...`` runs the same on PostgreSQL (a schema of
its own per measurement, dropped afterwards), then ``--agent-runs`` runs of a
flow whose agent step waits 50 ms, executed by 1, 2 and 4 ``flowrunner
worker`` processes (``--workers``). Targets on PostgreSQL: at most 2 ms per
no-op step on one worker; 4 workers at least 3x faster than 1 on the agent runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from engine.agents import ScriptedBackend
from engine.cli.common import run_async
from engine.config import Project
from engine.lint import check_file
from engine.runner import service
from engine.runner.worker import Worker
from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore

HERE = Path(__file__).resolve().parent


def chain(size: int) -> str:
    steps = ["  - {id: s0, kind: code, call: 'bench_steps:noop'}"]
    steps += [
        f"  - {{id: s{i}, kind: code, call: 'bench_steps:noop', needs: [s{i - 1}]}}"
        for i in range(1, size)
    ]
    return "version: 1\nname: chain\nsteps:\n" + "\n".join(steps) + "\n"


def fan_out(size: int) -> str:
    steps = ["  - {id: root, kind: code, call: 'bench_steps:noop'}"]
    steps += [
        f"  - {{id: s{i}, kind: code, call: 'bench_steps:noop', needs: [root]}}"
        for i in range(1, size - 1)
    ]
    middle = ", ".join(f"s{i}" for i in range(1, size - 1))
    steps.append(f"  - {{id: sink, kind: code, call: 'bench_steps:noop', needs: [{middle}]}}")
    return "version: 1\nname: fan-out\nsteps:\n" + "\n".join(steps) + "\n"


def agent_flow() -> str:
    """A code step, an agent step (the scripted reply waits 50 ms), a code step."""
    return (
        "version: 1\nname: agents\nsteps:\n"
        "  - {id: prepare, kind: code, call: 'bench_steps:noop'}\n"
        "  - {id: ask, kind: agent, persona: bench, prompt: 'go', needs: [prepare]}\n"
        "  - {id: wrap, kind: code, call: 'bench_steps:noop', needs: [ask]}\n"
    )


@contextlib.asynccontextmanager
async def database(folder: Path, url: str | None) -> AsyncIterator[str]:
    """A fresh database for one measurement: a new SQLite file, or a new PostgreSQL schema."""
    if url is None:
        yield f"sqlite:///{folder / f'bench-{time.monotonic_ns()}.db'}"
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(url)
    await conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}search_path={schema}"
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


def open_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        return SqliteStore(Path(url.removeprefix("sqlite:///")))
    return PostgresStore(url, generic_plans=True)  # as `flowrunner worker` opens it


async def measure(folder: Path, text: str, runs: int, url: str | None) -> tuple[float, int]:
    """Seconds to launch ``runs`` runs of the flow and execute them all."""
    async with database(folder, url) as db_url:
        return await _measure(folder, text, runs, db_url)


async def _measure(folder: Path, text: str, runs: int, url: str) -> tuple[float, int]:
    os.environ["FLOWRUNNER_CODE_ROOTS"] = str(HERE)
    # SQLite wakes a worker by polling; PostgreSQL by NOTIFY (the poll is a safety net)
    os.environ["FLOWRUNNER_POLL_SECONDS"] = "0.01" if url.startswith("sqlite") else "0.5"
    project = Project.open(folder)
    path = folder / "flows" / "bench.yaml"
    path.write_text(text)
    result = check_file(path, project)
    assert result.checked is not None, result.diagnostics[:3]
    store = open_store(url)
    await store.open()
    try:
        started = time.perf_counter()
        for _ in range(runs):
            await service.launch(store, project, result.checked, inputs={}, now=time.time())
        worker = Worker(store, project, ScriptedBackend.from_data({"replies": [{"reply": "x"}]}))
        await worker.run(until_idle=True)
        elapsed = time.perf_counter() - started
        statuses = {run.status for run in await store.list_runs(limit=runs)}
        assert statuses == {"completed"}, statuses
        return elapsed, runs * len(result.checked.flow.steps)
    finally:
        await store.close()


def report(label: str, seconds: float, steps: int) -> float:
    per_step = seconds / steps * 1000
    print(f"{label:<28} {steps:>7} {seconds:>9.3f} {per_step:>9.3f} {steps / seconds:>9.0f}")
    return per_step


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument(
        "--peers", metavar="PYTHON", help="a venv's Python with dbos and prefect (bench/peers.py)"
    )
    parser.add_argument("--database-url", help="postgresql://... (default: a SQLite file)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--agent-runs", type=int, default=1000)
    parser.add_argument(
        "--max-agents", type=int, default=8, help="agent steps at once per worker process"
    )
    args = parser.parse_args()
    url = args.database_url
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "flows").mkdir()
        print(f"{'workload':<28} {'steps':>7} {'seconds':>9} {'ms/step':>9} {'steps/s':>9}")
        for shape, generate in (("chain", chain), ("fan-out", fan_out)):
            per_step = {}
            for size in args.sizes:
                seconds, steps = await measure(folder, generate(size), 1, url)
                per_step[size] = report(f"{shape} of {size}", seconds, steps)
            if len(per_step) > 1:
                first, last = min(per_step), max(per_step)
                ratio = per_step[last] / per_step[first]
                print(f"{shape}: per-step cost at {last} is {ratio:.2f}x that at {first}")
        seconds, steps = await measure(folder, chain(10), args.runs, url)
        report(f"{args.runs} concurrent 10-step runs", seconds, steps)
        if url is not None:
            timings = {}
            for count in args.workers:
                seconds, steps = await measure_workers(
                    folder, url, args.agent_runs, count, args.max_agents
                )
                timings[count] = seconds
                label = f"{args.agent_runs} agent runs, {count}x{args.max_agents} agents"
                report(label, seconds, steps)
            if len(timings) > 1:
                first, last = min(timings), max(timings)
                speedup = timings[first] / timings[last]
                print(f"agent runs: {last} workers are {speedup:.2f}x as fast as {first}")
        if args.peers:
            size = 1000 if 1000 in args.sizes else args.sizes[0]
            seconds, steps = await measure(folder, chain(size), 1, url)
            report(f"flowrunner chain of {size}", seconds, steps)
            peers(args.peers, size)


async def measure_workers(
    folder: Path, url: str, runs: int, count: int, max_agents: int
) -> tuple[float, int]:
    """Seconds for ``count`` worker processes to finish ``runs`` runs of the agent flow,
    launched beforehand, from the moment the first worker is ready."""
    (folder / "replies.json").write_text(json.dumps({"replies": [{"reply": "ok", "delay": 0.05}]}))
    (folder / "personas").mkdir(exist_ok=True)
    (folder / "personas" / "bench.md").write_text("You answer briefly.\n")
    async with database(folder, url) as db_url:
        env = {
            **os.environ,
            "FLOWRUNNER_DATABASE_URL": db_url,
            "FLOWRUNNER_CODE_ROOTS": str(HERE),
            "FLOWRUNNER_AGENT_BACKEND": "scripted",
            "FLOWRUNNER_SCRIPTED_REPLIES": str(folder / "replies.json"),
            "FLOWRUNNER_POLL_SECONDS": "0.5",
            "FLOWRUNNER_MAX_AGENTS": str(max_agents),
        }
        os.environ.update(env)
        project = Project.open(folder)
        path = folder / "flows" / "bench.yaml"
        path.write_text(agent_flow())
        result = check_file(path, project)
        assert result.checked is not None, result.diagnostics[:3]
        store = open_store(db_url)
        await store.open()
        for _ in range(runs):  # launched before any worker starts: launching is not timed
            run_id, _ = await service.launch(
                store, project, result.checked, inputs={}, now=time.time()
            )
        held = await asyncpg.connect(db_url)  # the runs wait until every worker is ready
        await held.execute("UPDATE steps SET ready_at = 'infinity' WHERE ready_at = 0")
        flowrunner = Path(sys.executable).parent / "flowrunner"
        command = [str(flowrunner), "--project", str(folder), "worker"]
        logs = [folder / f"worker-{index}.log" for index in range(count)]
        workers = []
        for log in logs:
            with log.open("w") as output:
                workers.append(subprocess.Popen(command, env=env, stderr=output))
        try:
            while not all("started" in log.read_text() for log in logs):
                await asyncio.sleep(0.005)  # a worker's start-up is not timed either
            started = time.perf_counter()
            workers_before = [process_cpu(worker.pid) for worker in workers]
            machine_before = machine_cpu()
            await held.execute("UPDATE steps SET ready_at = 0 WHERE ready_at = 'infinity'")
            await held.execute("SELECT pg_notify('flowrunner_work', $1)", run_id)
            # one cheap query (the partial index of running runs) every 20 ms: a list_runs
            # read runs newest first past every finished one, on the same 2 cores
            running = "SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'running')"
            while await held.fetchval(running):
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            spent = sum(
                process_cpu(worker.pid) - before
                for worker, before in zip(workers, workers_before, strict=True)
            )
            (busy_after, stolen_after), (busy_before, stolen_before) = machine_cpu(), machine_before
            busy, stolen = busy_after - busy_before, stolen_after - stolen_before
            rest = busy - spent
            per_run = f"workers {spent / runs * 1000:.2f} ms, the rest {rest / runs * 1000:.2f} ms"
            print(f"  CPU per run: {per_run} (the rest: PostgreSQL, mostly)")
            cores = os.cpu_count() or 1
            print(
                f"  the machine's cores: {busy / elapsed / cores:.0%} busy, "
                f"{stolen / elapsed / cores:.0%} taken by the hypervisor (steal)"
            )
            failed = await store.list_runs(status="failed", limit=1)
            assert not failed, failed
            return elapsed, runs * 3
        finally:
            await held.close()
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(30)
            await store.close()


def process_cpu(pid: int) -> float:
    """Seconds of CPU a process has used (Linux: /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """Seconds of CPU the whole machine has used, every core, and seconds the hypervisor
    took from it (steal: this machine is a VM whose cores are shared) (Linux: /proc)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait, steal = ticks[3], ticks[4], ticks[7]
    busy = sum(ticks[:8]) - idle - iowait - steal  # guest time is counted in user already
    return busy / os.sysconf("SC_CLK_TCK"), steal / os.sysconf("SC_CLK_TCK")


def peers(python: str, size: int) -> None:
    """The same chain on DBOS and Prefect 3, run by ``python`` (a throwaway venv)."""
    command = [python, str(HERE / "peers.py"), "--steps", str(size)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    for line in done.stdout.splitlines():
        name, steps, seconds, _ = line.split()
        report(f"{name} chain of {steps}", float(seconds), int(steps))
    if done.returncode:  # Prefect logs noise at shutdown even when all went well
        print(done.stderr.strip()[-2000:], file=sys.stderr)


if __name__ == "__main__":
    run_async(main())  # on uvloop, as `flowrunner worker` runs
