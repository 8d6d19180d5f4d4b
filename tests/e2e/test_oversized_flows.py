"""A flow file over the size limit (8 MiB) is refused before it is read whole: ``lint`` of a
200 MB file costs what ``lint`` of a small one does, and ``serve`` lists and refuses such a
flow, and a 200 MB ``POST /v1/lint`` body, without growing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from .conftest import FLOWRUNNER, E2EProject
from .test_hostile import peak_rss_mb

SIZE = 200 * 1024 * 1024
LIMIT = 8 * 1024 * 1024

MEASURE = """
import json, resource, subprocess, sys, time
started = time.monotonic()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({
    "seconds": time.monotonic() - started,
    "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "code": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
}))
"""
"""Run a command in a fresh process, which reports its time and peak memory (its only
child's, so no other process of the test session counts)."""


def sparse(path: Path, size: int = SIZE) -> Path:
    """A file of ``size`` zero bytes that takes no disk space."""
    with path.open("wb") as file:
        file.truncate(size)
    return path


def measured_lint(project: E2EProject, flow: str) -> dict[str, object]:
    command = [str(FLOWRUNNER), "--project", str(project.root), "lint", f"flows/{flow}.yaml"]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found: dict[str, object] = json.loads(done.stdout)
    return found


def test_lint_refuses_a_200_mb_flow_at_the_cost_of_a_small_one(project: E2EProject) -> None:
    project.flow("small", "steps:\n  - {id: a, kind: agent, prompt: hi}\n")
    sparse(project.root / "flows" / "big.yaml")
    small = measured_lint(project, "small")
    big = measured_lint(project, "big")
    assert small["code"] == 0, small
    assert big["code"] == 1, big
    grown = float(big["peak_mb"]) - float(small["peak_mb"])  # type: ignore[arg-type]
    slower = float(big["seconds"]) - float(small["seconds"])  # type: ignore[arg-type]
    assert grown < 20, f"lint of 200 MB peaked {grown:.0f} MB above lint of a small file"
    assert slower < 1, f"lint of 200 MB took {slower:.2f}s longer than lint of a small file"
    assert big["stdout"] == (
        f"flows/big.yaml:1:1: FR001 error: file is {SIZE} bytes, larger than the limit of "
        f"{LIMIT} bytes\n1 file checked: 1 error, 0 warnings\n"
    )
    assert big["stderr"] == ""


def zeros(size: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    block = b"\0" * chunk
    for _ in range(size // chunk):
        yield block


def test_serve_refuses_a_200_mb_flow_and_lint_body_without_growing(project: E2EProject) -> None:
    project.flow("small", "steps:\n  - {id: a, kind: agent, prompt: hi}\n")
    process, base = project.serve()
    assert httpx.get(f"{base}/v1/flows", timeout=10).status_code == 200
    baseline = peak_rss_mb(process.pid)
    sparse(project.root / "flows" / "big.yaml")

    started = time.monotonic()
    listed = httpx.get(f"{base}/v1/flows", timeout=30).json()["flows"]
    assert {f["file"]: (f["valid"], f["errors"]) for f in listed} == {
        "big.yaml": (False, 1),
        "small.yaml": (True, 0),
    }
    launched = httpx.post(f"{base}/v1/flows/big/runs", json={}, timeout=30)
    assert launched.status_code == 422, launched.text
    took = time.monotonic() - started

    for headers in ({"Content-Length": str(SIZE)}, {}):  # declared, then chunked
        linted = httpx.post(f"{base}/v1/lint", content=zeros(SIZE), headers=headers, timeout=60)
        assert linted.status_code == 413, linted.text
        assert linted.json()["error"]["code"] == "too_large"
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    grown = peak_rss_mb(process.pid) - baseline
    assert grown < 50, f"serve's peak memory grew by {grown:.0f} MB"
    assert took < 2, f"listing and launching the 200 MB flow took {took:.2f}s"
    (diagnostic,) = launched.json()["error"]["details"]
    assert diagnostic["message"] == f"file is {SIZE} bytes, larger than the limit of {LIMIT} bytes"
