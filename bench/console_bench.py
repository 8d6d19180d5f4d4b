"""The web console's speed on a big run: `flowrunner serve` on SQLite, a 1,000-step run.

Run: ``python bench/console_bench.py`` (``--steps N``, ``--runs N``). Starts ``serve``
(API and worker, scripted backend, no tokens) on a free loopback port in a throw-away
project holding a chain of N no-op code steps, launches it and waits for it to end,
then fetches the run's console page ``/runs/{id}`` first (the graph is laid out:
cold) and again (the layout is cached: warm), a step's page, and prints each time
and size. Then it launches ``--runs`` one-step runs and times the runs list's first
and a filtered page. Target: the first page of a 1,000-step run in under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

FLOWRUNNER = Path(sys.executable).parent / "flowrunner"

NOOP = "def noop(ctx):\n    return None\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chain(steps: int) -> str:
    lines = ["version: 1", "name: big", "steps:"]
    for n in range(steps):
        needs = f", needs: [s{n - 1}]" if n else ""
        lines.append(f'  - {{id: s{n}, kind: code, call: "bench_steps_noop:noop"{needs}}}')
    return "\n".join(lines) + "\n"


def timed(client: httpx.Client, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, len(response.content)


def show(label: str, figures: tuple[float, int]) -> None:
    seconds, size = figures
    print(f"{label:<44} {seconds * 1000:8.1f} ms  {size / 1024:8.1f} KiB")


async def launch_many(base: str, count: int) -> None:
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        queue = list(range(count))

        async def one() -> None:
            while queue:
                queue.pop()
                response = await http.post("/v1/flows/one/runs", json={"inputs": {}})
                response.raise_for_status()

        await asyncio.gather(*(one() for _ in range(20)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=10_000, help="one-step runs for the list")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name in ("flows", "personas"):
            (root / name).mkdir()
        (root / "replies.yaml").write_text('replies:\n  - {reply: "ok"}\n', "utf-8")
        (root / "bench_steps_noop.py").write_text(NOOP, "utf-8")
        (root / "flows" / "big.yaml").write_text(chain(args.steps), "utf-8")
        one = 'steps:\n  - {id: a, kind: code, call: "bench_steps_noop:noop"}\n'
        (root / "flows" / "one.yaml").write_text(f"version: 1\nname: one\n{one}", "utf-8")
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLOWRUNNER_")},
            "FLOWRUNNER_AGENT_BACKEND": "scripted",
            "FLOWRUNNER_SCRIPTED_REPLIES": "replies.yaml",
        }
        server = subprocess.Popen(
            [str(FLOWRUNNER), "serve", "--port", str(port)], cwd=root, env=env
        )
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=120) as client:
                for _ in range(200):
                    try:
                        client.get("/healthz")
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                response = client.post("/v1/flows/big/runs", json={"inputs": {}})
                response.raise_for_status()
                run_id = response.json()["id"]
                while client.get(f"/v1/runs/{run_id}").json()["status"] == "running":
                    time.sleep(0.2)
                print(f"a chain of {args.steps} no-op code steps, run {run_id}")
                show("/runs/{id}, first (graph laid out: cold)", timed(client, f"/runs/{run_id}"))
                show("/runs/{id}, again (layout cached: warm)", timed(client, f"/runs/{run_id}"))
                show("/runs/{id}, a third time", timed(client, f"/runs/{run_id}"))
                middle = f"/runs/{run_id}/steps/s{args.steps // 2}"
                show("/runs/{id}/steps/{step} (reads the run's events)", timed(client, middle))
                if args.runs:
                    started = time.perf_counter()
                    asyncio.run(launch_many(base, args.runs))
                    took = time.perf_counter() - started
                    print(f"launched {args.runs} one-step runs in {took:.1f} s")
                    show(f"/ (runs list, {args.runs + 1} runs)", timed(client, "/"))
                    show("/ again", timed(client, "/"))
                    show("/?flow=big (one match among them)", timed(client, "/?flow=big"))
                    show(
                        "/?status=completed&waiting=false",
                        timed(client, "/?status=completed&waiting=false"),
                    )
                    show("/inbox (nothing waiting)", timed(client, "/inbox"))
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
