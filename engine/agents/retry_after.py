"""The ``Retry-After`` header of a refusal (HTTP 429 or 503): how long the server asks us to wait.

RFC 9110 allows two forms: delay-seconds (``120``) and an HTTP-date
(``Fri, 07 Nov 2025 12:00:00 GMT``, or the obsolete RFC 850 and asctime
forms). A fractional number of seconds is accepted too; anything else is not
understood and the refusal is treated as if it had no header.
"""

from __future__ import annotations

import re
from datetime import UTC
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({429, 503})
"""The statuses whose ``Retry-After`` is honoured: too many requests, unavailable."""

_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?")


def seconds_to_wait(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` (a Unix time) that ``value`` asks to wait; 0 for a date already
    past; None when there is no value or it is neither form."""
    if value is None:
        return None
    text = value.strip()
    if _SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone: HTTP dates are in GMT
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)
