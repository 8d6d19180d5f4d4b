"""The same no-op chain on DBOS and Prefect 3, for side-by-side figures with overhead.py.

Neither is a dependency of flowrunner. Install them in a throwaway venv and
run this file with that venv's Python:

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install dbos 'prefect>=3'
    /tmp/peers/bin/python bench/peers.py --steps 1000

or let ``bench/overhead.py --peers /tmp/peers/bin/python`` run it. DBOS
checkpoints each step in SQLite (its default system database); Prefect runs
each task with its default local (SQLite) server, results not persisted.
Prints one line per engine: ``name steps seconds ms/step``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def run_dbos(steps: int) -> float:
    from dbos import DBOS, DBOSConfig  # only in the throwaway venv

    folder = tempfile.mkdtemp()
    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": f"sqlite:///{folder}/dbos.sqlite",
    }
    DBOS(config=config)

    @DBOS.step()
    def noop(index: int) -> int:
        return index

    @DBOS.workflow()
    def chain(count: int) -> int:
        total = 0
        for index in range(count):
            total += noop(index)
        return total

    DBOS.launch()
    started = time.perf_counter()
    chain(steps)
    elapsed = time.perf_counter() - started
    DBOS.destroy()
    return elapsed


def run_prefect(steps: int) -> float:
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp())
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    from prefect import flow, task  # only in the throwaway venv

    @task
    def noop(index: int) -> int:
        return index

    @flow
    def chain(count: int) -> int:
        total = 0
        for index in range(count):
            total += noop(index)
        return total

    started = time.perf_counter()
    chain(steps)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--only", choices=["dbos", "prefect"])
    args = parser.parse_args()
    for name, runner in (("dbos", run_dbos), ("prefect", run_prefect)):
        if args.only not in (None, name):
            continue
        try:
            seconds = runner(args.steps)
        except ImportError as exc:
            print(f"{name} not installed here ({exc}); see this file's docstring", file=sys.stderr)
            continue
        print(f"{name} {args.steps} {seconds:.3f} {seconds / args.steps * 1000:.3f}", flush=True)


if __name__ == "__main__":
    main()
