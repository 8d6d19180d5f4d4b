"""Peak memory and time of hostile templates, each in its own `flowrunner run` process.

Every payload is a flow of one agent step whose prompt is the payload (scripted backend).
Each runs in a fresh process, so its peak resident set (ru_maxrss, from wait4) is its own;
the first row is a harmless prompt, the baseline. Usage: python bench/hostile_bench.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOWRUNNER = Path(sys.executable).parent / "flowrunner"

PAYLOADS = {
    "baseline": "Hello {{ inputs.name }}",
    "center": "{{ 'x'|center(1000000000) }}",
    "percent": "{{ '%1000000000d' % 1 }}",
    "ljust": "{{ 'x'.ljust(1000000000) }}",
    "format width": "{{ '{:>1000000000}'.format(1) }}",
    "indent": "{{ 'a\\nb'|indent(1000000000) }}",
    "join": "{{ range(100000)|join('x' * 100000) }}",
    "replace": "{{ ('x' * 100000)|replace('x', 'yy' * 5000) }}",
    "nested lists": "{% set a = ['x' * 999999] %}{% set a = [a, a, a] %}{{ [a, a] }}",
    "macro recursion": "{% macro f(s) %}{{ f(s ~ 'y') }}{% endmacro %}{{ f('x' * 900000) }}",
    "capture loop": (
        "{% set a %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endset %}{{ a }}"
    ),
    "nested loops (time)": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    ),
}


def measure(root: Path, name: str, prompt: str) -> tuple[float, float, str]:
    flow = {
        "version": 1,
        "name": "p",
        "inputs": {"name": {"type": "string", "default": "x"}},
        "steps": [{"id": "a", "kind": "agent", "prompt": prompt}],
    }
    (root / "flows" / "p.yaml").write_text(json.dumps(flow))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRUNNER_")}
    env.update(
        FLOWRUNNER_AGENT_BACKEND="scripted",
        FLOWRUNNER_SCRIPTED_REPLIES=str(root / "replies.yaml"),
        FLOWRUNNER_DATABASE_URL=f"sqlite:///{root / (name.replace(' ', '_') + '.db')}",
    )
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(FLOWRUNNER), "run", "p", "--json"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    out = process.stdout.read() if process.stdout else b""
    _, _, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    try:
        error = json.loads(out)["steps"][0]["error"] or "(rendered)"
    except (ValueError, KeyError, IndexError):
        error = "(no JSON)"
    return usage.ru_maxrss / 1024, seconds, error


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "flows").mkdir()
        (root / "replies.yaml").write_text("replies:\n  - reply: ok\n")
        print(f"{'payload':22} {'peak RSS MB':>11} {'seconds':>8}  step error")
        baseline = None
        for name, prompt in PAYLOADS.items():
            peak, seconds, error = measure(root, name, prompt)
            baseline = baseline or peak
            print(f"{name:22} {peak:11.1f} {seconds:8.2f}  {error[:90]}")
        print(f"(baseline {baseline:.1f} MB: the whole `flowrunner run` process)")


if __name__ == "__main__":
    main()
