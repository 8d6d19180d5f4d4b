"""A run's report, Markdown rendered to HTML that is safe to put in a page.

markdown-it-py in CommonMark mode with raw HTML off: a ``<script>`` or ``<img
onerror=...>`` in the report is shown as text. Its link check refuses ``javascript:``,
``vbscript:``, ``file:`` and ``data:`` (but images') URLs, which are then left as text.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markupsafe import Markup

_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
_MARKDOWN.enable("table")


def render(text: str) -> Markup:
    """``text`` as HTML: every tag it holds escaped, every dangerous link refused."""
    return Markup(_MARKDOWN.render(text))
