"""Whatever a run holds is shown inert: escaped in pages, sanitised in reports, clipped in lists."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.api.conftest import TOKENS, ApiProject, LiveServer, launch, wait_status
from tests.api.console_helpers import assert_safe_page, browser

EVIL = """
SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror=alert(1)>'
LINK = "[x](javascript:alert(1)) <a href=\\"javascript:alert(2)\\">y</a>"
BIG = "A" * 1_000_000


def script(ctx):
    return SCRIPT


def img(ctx):
    return {"html": IMG, "list": [SCRIPT]}


def link(ctx):
    return LINK


def big(ctx):
    return BIG


def broken(ctx):
    raise RuntimeError(SCRIPT)
"""

FLOW = """
inputs:
  who: {type: string, default: "<script>alert('input')</script>"}
report: |
  # Report <b>bold</b>
  {{ steps.link.output }}
  <script>alert('report')</script>
  <img src=x onerror=alert(3)>
steps:
  - {id: script, kind: code, call: "PKG.xss:script"}
  - {id: img, kind: code, call: "PKG.xss:img"}
  - {id: link, kind: code, call: "PKG.xss:link"}
  - {id: big, kind: code, call: "PKG.xss:big"}
"""


def _tags(html: str) -> list[str]:
    return re.findall(r"<(script|img)\b[^>]*>", html, flags=re.IGNORECASE)


def test_outputs_inputs_and_reports_render_inert(
    project: ApiProject, start_server: Callable[..., LiveServer]
) -> None:
    (project.root / project.pkg / "xss.py").write_text(EVIL, "utf-8")
    project.flow("evil", FLOW)
    server = start_server(tokens=TOKENS)
    with server.client() as api, browser(server) as client:
        run_id = launch(api, "evil")
        wait_status(api, run_id, "completed")
        run_page = client.get(f"/runs/{run_id}")
        pages = [run_page] + [
            client.get(f"/runs/{run_id}/steps/{step}") for step in ("script", "img", "link")
        ]
        for response in pages:
            assert response.status_code == 200
            assert_safe_page(response)
            # the only script tag is the console's own, and there is no <img> at all
            assert _tags(response.text) == ["script"], _tags(response.text)
            assert 'href="javascript' not in response.text.lower()
        html = run_page.text
        assert "&lt;script&gt;alert(&#39;input&#39;)&lt;/script&gt;" in html  # the input
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # an output in the list
        report = html[html.index('<article class="report">') :]
        report = report[: report.index("</article>")]
        assert "<h1>Report &lt;b&gt;bold&lt;/b&gt;</h1>" in report
        assert "&lt;script&gt;alert('report')&lt;/script&gt;" in report
        assert "&lt;a href=&quot;javascript:alert(2)&quot;&gt;y&lt;/a&gt;" in report
        assert "[x](javascript:alert(1))" in report  # a refused link stays text
        assert "<a " not in report
        # the 1 MB line: clipped in the run's list, clipped on the step page with a way to all
        assert "A" * 1000 not in html
        step = client.get(f"/runs/{run_id}/steps/big")
        assert step.status_code == 200
        assert "A" * 1000 in step.text and "A" * 200_001 not in step.text
        assert 'href="?full=1">Show all</a>' in step.text
        full = client.get(f"/runs/{run_id}/steps/big?full=1")
        assert "A" * 1_000_000 in full.text


def test_an_error_with_markup_is_escaped(
    project: ApiProject, start_server: Callable[..., LiveServer]
) -> None:
    (project.root / project.pkg / "xss.py").write_text(EVIL, "utf-8")
    project.flow("failing", 'steps:\n  - {id: boom, kind: code, call: "PKG.xss:broken"}\n')
    server = start_server(tokens=TOKENS)
    with server.client() as api, browser(server) as client:
        run_id = launch(api, "failing")
        wait_status(api, run_id, "failed")
        for path in (f"/runs/{run_id}", f"/runs/{run_id}/steps/boom", "/?status=failed"):
            response = client.get(path)
            assert response.status_code == 200
            assert_safe_page(response)
            assert _tags(response.text) == ["script"]
            assert "RuntimeError: &lt;script&gt;alert(1)&lt;/script&gt;" in response.text


def test_a_flow_name_with_markup_is_escaped(
    project: ApiProject, start_server: Callable[..., LiveServer]
) -> None:
    path = project.root / "flows" / "odd.yaml"
    path.write_text(
        'version: 1\nname: odd\ndescription: "<img src=x onerror=alert(1)>"\n'
        "steps:\n  - {id: a, kind: agent, prompt: hi}\n",
        "utf-8",
    )
    server = start_server(tokens=TOKENS)
    with browser(server) as client:
        for page in ("/flows", "/flows/odd"):
            response = client.get(page)
            assert response.status_code == 200
            assert _tags(response.text) == ["script"]
            assert "&lt;img src=x onerror=alert(1)&gt;" in response.text
