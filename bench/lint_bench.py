"""Lint time of generated flows: chains and wide fan-outs of 100, 1,000 and 5,000 steps.

Run: ``python bench/lint_bench.py`` (add ``--repeat N`` for more samples). Every
agent step has a Jinja prompt reading an input and an earlier step, so the
figures include YAML loading, pydantic validation, graph checks and template
parsing: the whole pipeline of ``flowrunner lint``, minus interpreter start-up.
Targets: 5,000 steps in under 1 s; 5,000 steps at most 6x the time of 1,000.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from engine.config import Project
from engine.lint import check_file

HEADER = """# yaml-language-server: $schema=../schema.json
version: 1
name: bench
inputs:
  topic: {type: string, description: What to study}
defaults:
  persona: analyst
steps:
"""


def agent(step: str, needs: list[str], prompt: str) -> str:
    needs_line = f"    needs: [{', '.join(needs)}]\n" if needs else ""
    return (
        f"  - id: {step}\n    kind: agent\n{needs_line}    fields: [verdict]\n"
        f"    prompt: |\n      {prompt}\n      End with a line `verdict: <yes|no>`.\n"
    )


def chain(size: int) -> str:
    steps = [agent("s0", [], "Study {{ inputs.topic }}.")]
    for i in range(1, size):
        prompt = f"Continue on {{{{ inputs.topic }}}} from: {{{{ steps.s{i - 1}.output }}}}"
        steps.append(agent(f"s{i}", [f"s{i - 1}"], prompt))
    return HEADER + "".join(steps)


def fan_out(size: int) -> str:
    steps = [agent("root", [], "Plan {{ inputs.topic }}.")]
    for i in range(1, size - 1):
        prompt = f"Part {i} of {{{{ inputs.topic }}}}: {{{{ steps.root.fields.verdict }}}}"
        steps.append(agent(f"s{i}", ["root"], prompt))
    middle = [f"s{i}" for i in range(1, size - 1)]
    sink = agent("sink", middle, "Merge {{ steps.s1.output }} and {{ steps.s2.output }}.")
    return HEADER + "".join(steps) + sink


def measure(text: str, project: Project, repeat: int) -> float:
    path = project.flows_dir / "bench.yaml"
    path.write_text(text, "utf-8")
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = check_file(path, project)
        samples.append(time.perf_counter() - started)
        assert result.checked is not None, result.diagnostics[:3]
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        project = Project(Path(folder))
        project.flows_dir.mkdir()
        project.personas_dir.mkdir()
        (project.personas_dir / "analyst.md").write_text("You analyse, read-only.\n")
        print(f"{'shape':<8} {'steps':>6} {'seconds':>8} {'ms/step':>8}")
        for shape, generate in (("chain", chain), ("fan-out", fan_out)):
            times = {}
            for size in args.sizes:
                times[size] = measure(generate(size), project, args.repeat)
                per_step = times[size] / size * 1000
                print(f"{shape:<8} {size:>6} {times[size]:>8.3f} {per_step:>8.3f}")
            if 1000 in times and 5000 in times:
                print(f"{shape:<8} 5000/1000 time ratio: {times[5000] / times[1000]:.2f}")


if __name__ == "__main__":
    main()
