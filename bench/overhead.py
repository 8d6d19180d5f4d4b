"""Engine overhead per persisted step: no-op code steps on the SQLite store.

Run: ``python bench/overhead.py`` (``--sizes``, ``--runs`` to change the load).
Chains and fan-outs of 100, 1,000 and 5,000 no-op code steps, then 50
concurrent runs of a 10-step flow; each run goes through the real worker and
store (claims, leases, results, events), in one process.
Targets: at most 1 ms per step at 1,000 steps; per-step cost at 5,000 within
1.5x of that at 100.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.agents import ScriptedBackend
from engine.config import Project
from engine.lint import check_file
from engine.runner import service
from engine.runner.worker import Worker
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


async def measure(folder: Path, text: str, runs: int) -> tuple[float, int]:
    """Seconds to launch ``runs`` runs of the flow and execute them all."""
    os.environ["FLOWRUNNER_CODE_ROOTS"] = str(HERE)
    os.environ["FLOWRUNNER_POLL_SECONDS"] = "0.01"
    project = Project.open(folder)
    path = folder / "flows" / "bench.yaml"
    path.write_text(text)
    result = check_file(path, project)
    assert result.checked is not None, result.diagnostics[:3]
    store = SqliteStore(folder / f"bench-{time.monotonic_ns()}.db")
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "flows").mkdir()
        print(f"{'workload':<28} {'steps':>7} {'seconds':>9} {'ms/step':>9} {'steps/s':>9}")
        for shape, generate in (("chain", chain), ("fan-out", fan_out)):
            per_step = {}
            for size in args.sizes:
                seconds, steps = await measure(folder, generate(size), 1)
                per_step[size] = report(f"{shape} of {size}", seconds, steps)
            if len(per_step) > 1:
                first, last = min(per_step), max(per_step)
                ratio = per_step[last] / per_step[first]
                print(f"{shape}: per-step cost at {last} is {ratio:.2f}x that at {first}")
        seconds, steps = await measure(folder, chain(10), args.runs)
        report(f"{args.runs} concurrent 10-step runs", seconds, steps)
        if args.peers:
            size = 1000 if 1000 in args.sizes else args.sizes[0]
            seconds, steps = await measure(folder, chain(size), 1)
            report(f"flowrunner chain of {size}", seconds, steps)
            peers(args.peers, size)


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
    asyncio.run(main())
