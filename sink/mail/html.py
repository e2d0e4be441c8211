"""Visible text of HTML bodies, in bounded time.

lexbor (selectolax) is quadratic in nesting depth, so HTML reaches the tree parser only when
it is small and shallow enough; otherwise its text is taken by a linear tag stripper and the
rules get no HTML tree."""

from __future__ import annotations

import re
from html import unescape as _html_unescape

from selectolax.lexbor import LexborHTMLParser as HTMLParser

MAX_HTML_TREE = 256 * 1024        # characters of HTML given to the tree parser
MAX_HTML_DEPTH = 1000             # open elements at once; deeper HTML is stripped, not parsed
_HTML_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)")
_HTML_VOID = frozenset("area base br col embed hr img input keygen link meta param source "
                       "track wbr".split())
# comments, raw-text elements and tags, each matched in one linear pass (no backtracking)
_HTML_STRIP = re.compile(r"<!--.*?(?:-->|\Z)|<(script|style|head)\b[^>]*>.*?(?:</\1\s*>|\Z)"
                         r"|<[^<>]*>", re.IGNORECASE | re.DOTALL)


def html_depth(html: str) -> int:
    """The most elements open at once (void elements do not nest), counted in one pass."""
    depth = deepest = 0
    for match in _HTML_TAG.finditer(html):
        if match.group(1):
            depth = max(0, depth - 1)
        elif match.group(2).lower() not in _HTML_VOID:
            depth += 1
            if depth > deepest:
                deepest = depth
    return deepest


def tree_safe_html(html: str) -> bool:
    """Whether the tree parser takes ``html`` in bounded time (small and shallow enough)."""
    return len(html) <= MAX_HTML_TREE and html_depth(html) <= MAX_HTML_DEPTH


def strip_tags(html: str) -> str:
    """Visible text of HTML without building a tree: linear in its length, for HTML too big or
    too deep for the tree parser. Comments, scripts, styles and the head are dropped."""
    text = _HTML_STRIP.sub(" ", html)
    try:
        text = _html_unescape(text)
    except Exception:
        pass
    return text


def html_to_text(html: str) -> str:
    """Visible text of an HTML body (selectolax/lexbor), scripts and styles dropped; HTML too
    big or too deep for a tree in bounded time is stripped of its tags instead."""
    if not tree_safe_html(html):
        return strip_tags(html)
    try:
        tree = HTMLParser(html)
        tree.strip_tags(["script", "style", "head"])
        root = tree.body or tree.root
        return root.text(separator=" ") if root is not None else ""
    except Exception:
        return ""
