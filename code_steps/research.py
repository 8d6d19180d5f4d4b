"""Code steps of the ``research`` flow.

``merge`` folds the findings of several research steps into one deduplicated
list of claims and sources; ``spot_check`` (async) asks the ``verifier`` persona
about the strongest merged claims.

A research step answers with JSON shaped like::

    {"claims": [{"text": "...", "sources": ["https://..."], "confidence": 0.8}],
     "sources": [{"url": "https://...", "title": "..."}]}

A step that answered in prose instead contributes the URLs found in its text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from code_steps import Context, as_float, as_int, as_str_list, parse_verdict, settled_data

_URL = re.compile(r"https?://[^\s<>()\[\]\"'`]+")
_TRACKING = re.compile(r"^(utm_[a-z]+|fbclid|gclid|mc_cid|mc_eid)$", re.IGNORECASE)
_EDGES = re.compile(r"^[<\"'`]+|[>\"'`.,;:]+$")  # wrapping quotes and trailing punctuation
_DEFAULT_PORTS = {"http": 80, "https": 443}
_VERDICTS = frozenset({"supported", "unsupported", "unsure"})


def normalize_url(url: str) -> str:
    """A canonical form of ``url`` so that trivially different spellings compare equal.

    Lower-cases scheme and host, drops ``www.``, default ports, fragments,
    tracking parameters and a trailing slash, and sorts the query. Anything that
    is not an http(s) URL (a document path, a DOI) is only trimmed.
    """
    text = _EDGES.sub("", url.strip())
    parts = urlsplit(text)
    scheme = parts.scheme.casefold()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return text
    host = parts.hostname.casefold().removeprefix("www.")
    if parts.port is not None and parts.port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{parts.port}"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, True) if not _TRACKING.match(k))
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, host, path, urlencode(query), ""))


def normalize_claim(text: str) -> str:
    """The comparison key of a claim: case, punctuation and spacing ignored."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


@dataclass
class Claim:
    """A claim merged from one or more steps."""

    text: str
    sources: list[str] = field(default_factory=list)
    confidence: float = 0.0
    found_by: list[str] = field(default_factory=list)

    def absorb(self, sources: Iterable[str], confidence: float, step_id: str) -> None:
        """Fold in another report of the same claim."""
        for url in sources:
            if url not in self.sources:
                self.sources.append(url)
        self.confidence = max(self.confidence, confidence)
        if step_id not in self.found_by:
            self.found_by.append(step_id)

    def rank(self) -> tuple[int, int, float]:
        """Sort key, best first: found by more steps, more sources, more confident."""
        return (-len(self.found_by), -len(self.sources), -self.confidence)


@dataclass
class Pool:
    """Claims and sources gathered so far, each keyed by its normalized form."""

    claims: dict[str, Claim] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    listed: set[str] = field(default_factory=set)
    duplicates: int = 0

    def add_source(self, url: str, title: str = "", listed: bool = True) -> str:
        """Record a source; the first non-empty title wins. Returns the normalized URL.

        ``listed`` sources were named by a step in their own right; the others
        only back a claim and are dropped with it.
        """
        key = normalize_url(url)
        if key and not self.titles.get(key):
            self.titles[key] = title.strip()
        if key and listed:
            self.listed.add(key)
        return key

    def add_claim(self, item: dict[str, Any], step_id: str) -> None:
        """Record one claim object of a step's JSON output."""
        text = str(item.get("text", "")).strip()
        key = normalize_claim(text)
        if not key:
            return
        raw_sources = item.get("sources")
        urls = raw_sources if isinstance(raw_sources, list) else []
        added = (self.add_source(str(url), listed=False) for url in urls)
        sources = [url for url in added if url]
        confidence = item.get("confidence", 0.0)
        if not isinstance(confidence, int | float) or isinstance(confidence, bool):
            confidence = 0.0
        if key in self.claims:
            self.duplicates += 1
        else:
            self.claims[key] = Claim(text)
        self.claims[key].absorb(sources, float(confidence), step_id)

    def add_step(self, step_id: str, data: Any, output: str) -> None:
        """Record everything one step reported."""
        if not isinstance(data, dict):
            for url in _URL.findall(output):
                self.add_source(url)
            return
        for source in data.get("sources") or []:
            if isinstance(source, dict) and source.get("url"):
                self.add_source(str(source["url"]), str(source.get("title") or ""))
            elif isinstance(source, str):
                self.add_source(source)
        for claim in data.get("claims") or []:
            if isinstance(claim, dict):
                self.add_claim(claim, step_id)


def merge(
    ctx: Context,
    sources_from: list[str] | str | None = None,
    max_claims: int | str = 12,
    min_confidence: float | str = 0.0,
) -> dict[str, Any]:
    """Merge the claims and sources of the ``sources_from`` steps (default: all).

    Claims equal up to case, punctuation and spacing are one claim: their
    sources are united, the highest confidence is kept and ``found_by`` lists
    every step that reported it. Claims below ``min_confidence`` are dropped, the
    rest are ranked (found by more steps, more sources, more confident) and cut to
    ``max_claims``. Sources are deduplicated by :func:`normalize_url` and listed
    most cited first (a source only backing dropped claims is dropped too), each
    with ``cited_by``, the number of kept claims citing it;
    each claim's ``refs`` are the 1-based numbers of its sources in that list.
    """
    limit = as_int(max_claims, "max_claims")
    floor = as_float(min_confidence, "min_confidence")
    step_ids = as_str_list(sources_from) if sources_from is not None else list(ctx.steps)
    pool = Pool()
    used = []
    for step_id in step_ids:
        step = ctx.steps.get(step_id)
        if step is None or step.skipped or step.status != "completed":
            continue
        used.append(step_id)
        pool.add_step(step_id, step.data, step.output)
    confident = [claim for claim in pool.claims.values() if claim.confidence >= floor]
    ranked = sorted(confident, key=Claim.rank)
    kept = ranked[:limit]
    cited = {url: sum(url in claim.sources for claim in kept) for url in pool.titles}
    wanted = [url for url in pool.titles if cited[url] or url in pool.listed]
    order = sorted(wanted, key=lambda url: -cited[url])
    number = {url: index for index, url in enumerate(order, start=1)}
    return {
        "claims": [
            {**asdict(claim), "refs": sorted(number[url] for url in claim.sources)}
            for claim in kept
        ],
        "sources": [
            {"url": url, "title": pool.titles[url] or url, "cited_by": cited[url]} for url in order
        ],
        "steps": used,
        "dropped": {
            "duplicates": pool.duplicates,
            "low_confidence": len(pool.claims) - len(confident),
            "over_limit": len(ranked) - len(kept),
        },
    }


def check_prompt(claim: dict[str, Any]) -> str:
    """The prompt asking the ``verifier`` persona whether one claim holds."""
    sources = "\n".join(f"- {url}" for url in claim.get("sources") or []) or "- (none given)"
    return (
        "Judge whether the claim below is supported by the sources it cites, from what "
        "you can read of them. Answer in at most three sentences, then end with one "
        "line: `verdict: supported`, `verdict: unsupported` or `verdict: unsure`.\n\n"
        f"Claim: {claim.get('text', '')}\nSources:\n{sources}\n"
    )


async def spot_check(ctx: Context, sample: int | str = 3, source: str = "merge") -> dict[str, Any]:
    """Ask the ``verifier`` persona about the ``sample`` best claims of step ``source``.

    Dispatches run one after another so that each keeps its sequence number
    across a resume (the engine checkpoints dispatches by step and order).
    Returns ``{checked: [{text, verdict, note}], unsupported: n}``.
    """
    merged = settled_data(ctx, source)
    claims = merged.get("claims", []) if isinstance(merged, dict) else []
    checked = []
    for claim in claims[: as_int(sample, "sample")]:
        reply = await ctx.dispatch("verifier", check_prompt(claim))
        verdict = parse_verdict(reply, _VERDICTS, default="unsure")
        note = next((line.strip() for line in reply.splitlines() if line.strip()), "")
        checked.append({"text": claim.get("text", ""), "verdict": verdict, "note": note})
    unsupported = sum(item["verdict"] == "unsupported" for item in checked)
    return {"checked": checked, "unsupported": unsupported}
