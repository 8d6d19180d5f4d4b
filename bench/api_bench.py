"""Launch throughput and latency of `flowrunner serve` on SQLite, and SSE delivery latency.

Run: ``python bench/api_bench.py`` (``--launches N``). Starts ``serve`` (API and
worker) on a free loopback port in a throw-away copy of the hello flow with the
scripted backend, then: N launches by 1 client, then by 20 concurrent
clients (launches per second, p50 and p99 latency); then the time from a
state change (a run's launch) to its first event reaching an SSE client.
Target: p99 launch under 25 ms at 20 concurrent clients.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
FLOWRUNNER = Path(sys.executable).parent / "flowrunner"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def launches(base: str, count: int, clients: int) -> list[float]:
    """Latencies of ``count`` launches by ``clients`` concurrent clients, each with its own
    connection, opened (and used once) before the timed launches start. The clients use
    aiohttp: httpx costs about 2.4 ms of CPU per request here, more than the server's
    launch, on the same 2 cores; aiohttp about 0.5 ms."""
    latencies: list[float] = []
    queue = list(range(count))
    ready = asyncio.Barrier(clients)

    async def client() -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(base, connector=connector) as http:
            async with http.get("/healthz") as response:
                response.raise_for_status()
            await ready.wait()
            while queue:
                queue.pop()
                started = time.perf_counter()
                async with http.post("/v1/flows/hello/runs", json={"inputs": {}}) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` so far; 0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(label: str, latencies: list[float], seconds: float, cpu: float) -> None:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    rate = len(ordered) / seconds
    per_launch = cpu / len(ordered) * 1000
    print(
        f"{label:<24} {rate:>9.0f}/s   p50 {p50:>7.2f} ms   p99 {p99:>7.2f} ms"
        f"   server CPU {per_launch:.2f} ms/launch"
    )


async def sse_latency(base: str, samples: int) -> list[float]:
    found = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for _ in range(samples):
            started = time.perf_counter()
            run = (await http.post("/v1/flows/hello/runs", json={"inputs": {}})).json()["id"]
            headers = {"Accept": "text/event-stream"}
            async with http.stream("GET", f"/v1/runs/{run}/events", headers=headers) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("event: step_started"):
                        found.append(time.perf_counter() - started)
                        break
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--launches", type=int, default=500)
    parser.add_argument(
        "--no-worker",
        dest="serve",
        action="store_const",
        const=["--no-worker"],
        default=[],
        help="serve without its worker: launches only",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        project = Path(name)
        for folder in ("flows", "personas", "code_steps", "replies"):
            shutil.copytree(ROOT / folder, project / folder)
        port = free_port()
        env = {
            **os.environ,
            "FLOWRUNNER_AGENT_BACKEND": "scripted",
            "FLOWRUNNER_SCRIPTED_REPLIES": "replies/hello.yaml",
        }
        server = subprocess.Popen(
            [str(FLOWRUNNER), "serve", "--port", str(port), *args.serve],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base) as http:
                for _ in range(100):
                    try:
                        await http.get("/healthz")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
            for clients in (1, 20):
                started, cpu = time.perf_counter(), cpu_seconds(server.pid)
                latencies = await launches(base, args.launches, clients)
                elapsed = time.perf_counter() - started
                used = cpu_seconds(server.pid) - cpu
                summary(f"launch, {clients} client(s)", latencies, elapsed, used)
            if args.serve:
                return  # no worker: no events to deliver
            delivered = await sse_latency(base, 20)
            print(
                f"SSE: launch to first step event  p50 {statistics.median(delivered) * 1000:.1f} ms"
                f"   max {max(delivered) * 1000:.1f} ms"
            )
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
