"""The agent command's environment: the basics and what the operator lists, no secret."""

from __future__ import annotations

import json
import shlex
import sys

from .conftest import E2EProject

DUMP = """
import json, os, sys
sys.stdin.read()
print(json.dumps(dict(os.environ)))
"""

BASICS = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TMPDIR")

SECRETS = {
    "FLOWRUNNER_API_TOKEN": "api-token-6f1c",
    "FLOWRUNNER_OPENAI_API_KEY": "sk-model-key-93ab",
    "WORKER_SECRET": "host-secret-2d77",
}


def test_the_agent_gets_the_basics_and_the_listed_variables_and_no_secret(
    project: E2EProject,
) -> None:
    """A worker holding a store URL, API tokens and a secret of its host runs an agent
    that prints its whole environment: only the basics and the listed variable are there."""
    script = project.write("dump_env.py", DUMP)
    project.flow("dump", "steps:\n  - {id: dump, kind: agent, prompt: show me}\n")
    project.env.update(SECRETS)
    project.env.update(
        {
            "FLOWRUNNER_AGENT_COMMAND": shlex.join([sys.executable, str(script)]),
            "FLOWRUNNER_AGENT_ENV": "AGENT_TOKEN, E2E_AGENT_LOG",
            "AGENT_TOKEN": "listed-for-the-agent",
            "LANG": "C.UTF-8",
        }
    )
    result = project.cli("run", "dump", "--json")
    run_id = json.loads(result.stdout)["id"]
    seen = json.loads(project.steps(run_id)["dump"]["output"])
    assert seen["AGENT_TOKEN"] == "listed-for-the-agent"
    assert seen["E2E_AGENT_LOG"] == str(project.agent_log)
    assert seen["LANG"] == "C.UTF-8"
    expected = {name for name in BASICS if name in project.env} | {"AGENT_TOKEN", "E2E_AGENT_LOG"}
    assert set(seen) == expected
    store_url = project.env["FLOWRUNNER_DATABASE_URL"]
    for secret in (*SECRETS.values(), store_url):
        assert not any(secret in value for value in seen.values()), secret
