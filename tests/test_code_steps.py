"""Unit tests of the shipped code steps, called directly with a fake ``ctx``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from code_steps import as_bool, as_int, parse_verdict
from code_steps.hello import banner, greeting_text
from code_steps.research import merge, normalize_claim, normalize_url, spot_check
from code_steps.review import parse_findings, publish, verify

DASH = "\u2014"


def step(
    output: str = "",
    data: Any = None,
    status: str = "completed",
    fields: dict[str, str] | None = None,
) -> SimpleNamespace:
    """A settled step as the engine exposes it in ``ctx.steps``."""
    return SimpleNamespace(
        status=status,
        output=output,
        fields=fields or {},
        data=data,
        skipped=status in ("skipped", "excluded"),
    )


def make_ctx(
    steps: dict[str, SimpleNamespace],
    inputs: dict[str, Any] | None = None,
    replies: list[str] | None = None,
) -> Any:
    """A fake ``ctx``; ``ctx.prompts`` records every dispatch as ``(persona, prompt)``."""
    answers = list(replies or [])
    prompts: list[tuple[str, str]] = []

    def dispatch_sync(persona: str, prompt: str) -> str:
        prompts.append((persona, prompt))
        return answers.pop(0)

    async def dispatch(persona: str, prompt: str) -> str:
        return dispatch_sync(persona, prompt)

    return SimpleNamespace(
        inputs=inputs or {},
        band="standard",
        steps=steps,
        params={},
        run_id="r-42",
        flow="code-review",
        dispatch=dispatch,
        dispatch_sync=dispatch_sync,
        prompts=prompts,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with a 5-line ``app/db.py`` and a 2-line ``README.md``."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "db.py").write_text("import sqlite3\n\n\ndef q(x):\n    return x\n")
    (tmp_path / "README.md").write_text("# demo\nhello\n")
    return tmp_path


# --- review: parsing -------------------------------------------------------


def test_parse_findings_reads_dashes_ranges_and_backticks() -> None:
    text = "\n".join(
        [
            "Intro prose is ignored.",
            f"- [HIGH] app/db.py:4 {DASH} SQL built by string formatting",
            "* [low] `README.md:2`: typo",
            "- [medium] app/db.py:3-5 - long function",
            "verdict: concerns",
        ]
    )
    found = parse_findings(text, "security")
    assert [(f.severity, f.path, f.line, f.message) for f in found] == [
        ("high", "app/db.py", 4, "SQL built by string formatting"),
        ("low", "README.md", 2, "typo"),
        ("medium", "app/db.py", 3, "long function"),
    ]
    assert {f.source for f in found} == {"security"}


def test_parse_findings_keeps_uncited_finding_with_empty_location() -> None:
    (finding,) = parse_findings("- [high] the whole module is unsafe", "security")
    assert (finding.path, finding.line, finding.message) == ("", 0, "the whole module is unsafe")


# --- review: verify --------------------------------------------------------


def test_verify_drops_findings_below_min_severity(repo: Path) -> None:
    output = f"- [low] app/db.py:1 {DASH} unused import\n- [high] app/db.py:4 {DASH} injection\n"
    ctx = make_ctx({"security": step(output)}, {"repo": str(repo)})
    result = verify(ctx, min_severity="medium")
    assert result["count"] == 1
    assert [(f["path"], f["line"]) for f in result["findings"]] == [("app/db.py", 4)]
    (rejected,) = result["rejected"]
    assert rejected["message"] == "unused import"
    assert rejected["reason"] == "below minimum severity medium"
    assert result["by_severity"]["high"] == 1


def test_verify_min_severity_info_keeps_everything_cited(repo: Path) -> None:
    output = f"- [info] README.md:1 {DASH} heading\n- [low] app/db.py:1 {DASH} unused import\n"
    result = verify(make_ctx({"r": step(output)}, {"repo": str(repo)}), min_severity="info")
    assert result["count"] == 2
    assert result["rejected"] == []


def test_verify_rejects_unknown_min_severity(repo: Path) -> None:
    with pytest.raises(ValueError, match="unknown severity 'severe'"):
        verify(make_ctx({}, {"repo": str(repo)}), min_severity="severe")


def test_verify_checks_citations_against_the_repository(repo: Path) -> None:
    output = "\n".join(
        [
            f"- [high] app/db.py:5 {DASH} last line exists",
            f"- [high] app/db.py:6 {DASH} past the end of the file",
            f"- [high] app/missing.py:1 {DASH} no such file",
            f"- [high] ../outside.py:1 {DASH} escapes the repository",
            f"- [high] /etc/passwd:1 {DASH} absolute path",
            f"- [high] app:1 {DASH} a directory, not a file",
            "- [high] no citation at all",
        ]
    )
    (repo.parent / "outside.py").write_text("x = 1\n")
    result = verify(make_ctx({"correctness": step(output)}, {"repo": str(repo)}))
    assert [f["line"] for f in result["findings"]] == [5]
    reasons = {r["path"] + ":" + str(r["line"]): r["reason"] for r in result["rejected"]}
    assert reasons == {
        "app/db.py:6": "app/db.py has 5 lines, not 6",
        "app/missing.py:1": "app/missing.py does not exist",
        "../outside.py:1": "../outside.py is outside the repository",
        "/etc/passwd:1": "/etc/passwd is outside the repository",
        "app:1": "app is not a file",
        ":0": "no path:line citation",
    }


def test_verify_reads_json_reviewers_and_merges_duplicates(repo: Path) -> None:
    text_reviewer = step(f"- [medium] app/db.py:4 {DASH} No  input validation\n")
    json_reviewer = step(
        "{}",
        data={
            "findings": [
                {
                    "severity": "medium",
                    "path": "app/db.py",
                    "line": 4,
                    "message": "no input validation",
                },
                {"severity": "critical", "path": "README.md", "line": 2, "message": "leaks a key"},
            ]
        },
    )
    ctx = make_ctx({"correctness": text_reviewer, "tests": json_reviewer}, {"repo": str(repo)})
    result = verify(ctx, sources=["correctness", "tests"])
    assert [(f["severity"], f["source"]) for f in result["findings"]] == [
        ("critical", "tests"),
        ("medium", "correctness"),
    ]
    assert result["duplicates"] == 1
    assert result["rejected"] == []


def test_verify_ignores_skipped_and_unlisted_steps(repo: Path) -> None:
    finding = f"- [high] app/db.py:4 {DASH} injection\n"
    ctx = make_ctx(
        {
            "security": step(finding, status="excluded"),
            "performance": step(finding, status="skipped"),
            "scope": step(finding),
        },
        {"repo": str(repo)},
    )
    assert verify(ctx, sources="security, performance")["count"] == 0
    assert verify(ctx)["count"] == 1


def test_verify_double_check_rejects_refuted_findings(repo: Path) -> None:
    output = f"- [high] app/db.py:4 {DASH} injection\n- [medium] README.md:2 {DASH} typo\n"
    replies = [
        "The value is interpolated.\nverdict: confirmed",
        "It is spelled right.\nverdict: refuted",
    ]
    ctx = make_ctx({"security": step(output)}, {"repo": str(repo)}, replies)
    result = verify(ctx, double_check="True")
    assert [(f["path"], f["verdict"]) for f in result["findings"]] == [("app/db.py", "confirmed")]
    (rejected,) = result["rejected"]
    assert rejected["reason"] == "refuted by verifier: It is spelled right."
    assert result["double_checked"] == 2
    persona, prompt = ctx.prompts[0]
    assert persona == "verifier"
    assert "Location: app/db.py:4" in prompt
    assert "    4 | def q(x):" in prompt


def test_verify_double_check_respects_max_checks_and_the_off_switch(repo: Path) -> None:
    output = f"- [high] app/db.py:4 {DASH} injection\n- [medium] README.md:2 {DASH} typo\n"
    ctx = make_ctx({"security": step(output)}, {"repo": str(repo)}, ["verdict: unsure"])
    result = verify(ctx, double_check=True, max_checks="1")
    assert len(ctx.prompts) == 1
    assert [f["verdict"] for f in result["findings"]] == ["unsure", None]
    off = make_ctx({"security": step(output)}, {"repo": str(repo)})
    assert verify(off, double_check="False")["count"] == 2
    assert off.prompts == []


# --- review: publish -------------------------------------------------------


def _verified(repo: Path) -> dict[str, Any]:
    output = f"- [high] app/db.py:4 {DASH} injection\n- [high] nope.py:1 {DASH} ghost\n"
    return verify(make_ctx({"security": step(output)}, {"repo": str(repo)}))


def test_publish_writes_the_markdown_file(repo: Path, tmp_path: Path) -> None:
    decision = {"approved": True, "by": "lead", "comment": "ship it", "payload": {}}
    ctx = make_ctx({"verify": step(data=_verified(repo)), "sign_off": step(data=decision)})
    out_dir = tmp_path / "reports"
    path = Path(publish(ctx, out_dir=str(out_dir), title="Review: retries"))
    assert path == out_dir / "code-review-r-42.md"
    text = path.read_text()
    assert text.startswith("# Review: retries\n")
    assert f"- **high** `app/db.py:4` {DASH} injection" in text
    assert "nope.py does not exist" in text
    assert "Approved by lead: ship it" in text
    assert [p.name for p in out_dir.iterdir()] == [path.name]


def test_publish_for_the_public_omits_rejected_findings(repo: Path, tmp_path: Path) -> None:
    ctx = make_ctx({"verify": step(data=_verified(repo))})
    text = Path(publish(ctx, audience="public", out_dir=str(tmp_path))).read_text()
    assert "app/db.py:4" in text
    assert "nope.py" not in text


def test_publish_refuses_bad_audience_and_missing_findings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="audience"):
        publish(make_ctx({}), audience="everyone", out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no verified findings"):
        publish(make_ctx({"verify": step(status="skipped")}), out_dir=str(tmp_path))


# --- research --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTPS://www.Example.com/a/?utm_source=x&b=2&a=1#frag", "https://example.com/a?a=1&b=2"),
        ("http://example.com:80/", "http://example.com"),
        ("https://example.com:8443/x", "https://example.com:8443/x"),
        ("<https://example.com/doc>.", "https://example.com/doc"),
        ("docs/design.md", "docs/design.md"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_normalize_claim_ignores_case_punctuation_and_spacing() -> None:
    assert normalize_claim("Retries  need JITTER!") == normalize_claim("retries need jitter")


def test_merge_dedupes_claims_and_sources_across_steps() -> None:
    survey = {
        "claims": [
            {
                "text": "Retries need jitter.",
                "sources": ["https://www.a.org/x/"],
                "confidence": 0.6,
            },
            {"text": "Backoff caps matter", "sources": ["https://b.org"], "confidence": 0.9},
        ],
        "sources": [{"url": "https://a.org/x", "title": "A paper"}],
    }
    deep = {
        "claims": [
            {"text": "retries need jitter", "sources": ["https://c.org"], "confidence": 0.8},
        ],
        "sources": [{"url": "https://A.org/x#intro", "title": "Later title"}, "https://c.org"],
    }
    ctx = make_ctx({"survey": step(data=survey), "deep_dive": step(data=deep)})
    result = merge(ctx, sources_from=["survey", "deep_dive"])
    first, second = result["claims"]
    assert first["text"] == "Retries need jitter."
    assert first["found_by"] == ["survey", "deep_dive"]
    assert first["sources"] == ["https://a.org/x", "https://c.org"]
    assert first["confidence"] == 0.8
    assert second["text"] == "Backoff caps matter"
    urls = [s["url"] for s in result["sources"]]
    assert sorted(urls) == ["https://a.org/x", "https://b.org", "https://c.org"]
    titles = {s["url"]: s["title"] for s in result["sources"]}
    assert titles["https://a.org/x"] == "A paper"
    assert first["refs"] == sorted(urls.index(u) + 1 for u in first["sources"])
    assert result["dropped"] == {"duplicates": 1, "low_confidence": 0, "over_limit": 0}


def test_merge_filters_confidence_caps_claims_and_skips_excluded_steps() -> None:
    claims = [
        {"text": f"claim {n}", "sources": [f"https://s{n}.org"], "confidence": n / 10}
        for n in range(1, 6)
    ]
    ctx = make_ctx(
        {
            "survey": step(data={"claims": claims}),
            "counterpoints": step(status="excluded"),
            "notes": step("See https://notes.org/page, and https://notes.org/page/ again."),
        }
    )
    result = merge(ctx, max_claims="2", min_confidence="0.25")
    assert [c["text"] for c in result["claims"]] == ["claim 5", "claim 4"]
    assert result["steps"] == ["survey", "notes"]
    assert result["dropped"] == {"duplicates": 0, "low_confidence": 2, "over_limit": 1}
    urls = [s["url"] for s in result["sources"]]
    assert urls == ["https://s4.org", "https://s5.org", "https://notes.org/page"]
    assert [s["cited_by"] for s in result["sources"]] == [1, 1, 0]


def test_spot_check_asks_the_verifier_about_the_best_claims() -> None:
    merged = {"claims": [{"text": "a", "sources": ["https://a.org"]}, {"text": "b"}, {"text": "c"}]}
    replies = ["Source says so.\nverdict: supported", "No source.\nverdict: unsupported"]
    ctx = make_ctx({"merge": step(data=merged)}, replies=replies)
    result = asyncio.run(spot_check(ctx, sample="2"))
    assert result["checked"] == [
        {"text": "a", "verdict": "supported", "note": "Source says so."},
        {"text": "b", "verdict": "unsupported", "note": "No source."},
    ]
    assert result["unsupported"] == 1
    assert [persona for persona, _ in ctx.prompts] == ["verifier", "verifier"]
    assert "- https://a.org" in ctx.prompts[0][1]


# --- hello and helpers -----------------------------------------------------


def test_banner_frames_the_greeting_without_field_lines() -> None:
    text = "Hello there, Ada! Lovely to meet you today.\nmood: cheerful\n"
    result = banner(make_ctx({}), text=text, name="Ada", mood="cheerful", width="24")
    lines = result["banner"].splitlines()
    assert lines[0] == "+" + "-" * 22 + "+"
    assert lines[1] == "| Hello there, Ada!    |"
    assert all(len(line) == 24 for line in lines)
    assert "mood" not in result["banner"]
    assert result["words"] == 8
    assert result["mood"] == "cheerful"


def test_banner_falls_back_to_a_default_greeting_and_checks_width() -> None:
    result = banner(make_ctx({}), text="mood: calm", name="world")
    assert "Hello, world!" in result["banner"]
    assert result["mood"] == "unknown"
    with pytest.raises(ValueError, match="width"):
        banner(make_ctx({}), text="hi", width=5)


def test_greeting_text_joins_lines() -> None:
    assert greeting_text("Hi\n  there\nMOOD: loud") == "Hi there"


def test_rendered_values_are_coerced() -> None:
    assert as_bool("True") is True
    assert as_bool("no") is False
    assert as_int(" 7 ", "n") == 7
    with pytest.raises(ValueError, match="maybe"):
        as_bool("maybe")
    with pytest.raises(ValueError, match="n must be an integer"):
        as_int("seven", "n")


def test_parse_verdict_takes_the_last_allowed_verdict() -> None:
    allowed = frozenset({"confirmed", "refuted"})
    reply = "Reply with verdict: confirmed or refuted.\nLooked at it.\nVerdict: **refuted**"
    assert parse_verdict(reply, allowed, "unsure") == "refuted"
    assert parse_verdict("no verdict here", allowed, "unsure") == "unsure"
