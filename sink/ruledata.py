"""Keyword and phrase lists shipped in ``rules/`` (installed as ``sink.rulesdata``).

Lists are data: one entry a line, ``#`` starts a comment. A box may replace any list through its
``keywords`` table in the config; the defaults here are what SPEC section 5 requires.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

LIST_NAMES = (
    "contract_keywords",
    "order_keywords",
    "task_keywords",
    "optout_phrases",
    "new_task_prefixes",
    "troubleshooting_prefixes",
    "inform_subject_prefixes",
    "inform_subject_contains",
    "inform_body_phrases",
    "free_mail_domains",
    "auto_reply_subject_prefixes",
    "auto_reply_headers",
    "auto_reply_ms_headers",
    "automatic_precedence",
)


def parse_list(text: str) -> tuple[str, ...]:
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(line)
    return tuple(entries)


@cache
def default_list(name: str) -> tuple[str, ...]:
    if name not in LIST_NAMES:
        raise KeyError(name)
    text = resources.files("sink.rulesdata").joinpath(f"{name}.txt").read_text("utf-8")
    return parse_list(text)
