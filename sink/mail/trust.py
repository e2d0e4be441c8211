"""When a carrier may be unwrapped (SPEC 2.3): a pure decision, per box.

A journal report, a wrapper or a PEC envelope makes records in other people's names: the inner
From of a carried message never met the MTA's anti-spoofing checks. So a carrier is unwrapped
only when the box has reason to believe who sent it; otherwise it is processed as the ordinary
message it also is, and the trace says why:

- journal report: its envelope sender (MAIL FROM) or its From is one of ``journal_senders``;
- wrapper: its From is a directory user AND the message is authenticated (DKIM for the From
  domain, or a trusted Authentication-Results header: :mod:`sink.mail.dkim`);
- PEC: the box says ``pec = true``.
"""

from __future__ import annotations

import dataclasses

from sink.mail.dkim import NONE, PASS, from_authentication_results
from sink.mail.textnorm import domain_of, fold_address
from sink.mail.unwrap import JOURNAL, PEC, WRAPPER


def trusted(kind: str, parsed, box, directory, authenticated: bool,
            mail_from: str | None = None) -> tuple[bool, str]:
    """(unwrap?, why) for a carrier of ``kind`` received for ``box``."""
    sender = parsed.sender
    if kind == JOURNAL:
        envelope = fold_address(mail_from) if mail_from else None
        allowed = set(box.journal_senders)
        if not allowed:
            return False, "journal report not trusted: the box has no journal_senders"
        if (envelope and envelope in allowed) or (sender and sender in allowed):
            return True, f"journal report from {envelope if envelope in allowed else sender}"
        return False, "journal report not trusted: neither its envelope sender nor its From " \
                      "is in journal_senders"
    if kind == WRAPPER:
        if not sender or directory.user(sender) is None:
            return False, "wrapper not trusted: its sender is not a directory user"
        if not authenticated:
            return False, f"wrapper not trusted: {sender} is not authenticated (no DKIM pass " \
                          f"for its domain, no trusted Authentication-Results)"
        return True, f"wrapper from authenticated user {sender}"
    if kind == PEC:
        if box.pec:
            return True, "PEC envelope (pec = true)"
        return False, "PEC envelope not trusted: the box does not set pec = true"
    return False, f"unknown carrier kind {kind!r}"


def for_box(parsed, carried, dkim_result: str, box, directory, mail_from: str | None = None):
    """The message as ``box`` sees it: ``(parsed, carried or None, trace note or None)``.

    ``parsed`` gets the box's DKIM result (a trusted Authentication-Results header wins over
    dkimpy's own ``dkim_result``) and ``authenticated``; ``carried`` is kept only when
    :func:`trusted` says so, else the note says why it was not unwrapped.

    A carried message is judged by its own trusted Authentication-Results (no DNS for what a
    carrier holds), and only inside a carrier that is authenticated itself. Our MTA removes
    incoming copies of its own authserv-id from the headers of what it receives - not from a
    message attached to it: inside a carrier nobody vouches for (a journal report is trusted
    by its sender's address alone, SPEC 2.3), such a header is whatever its author wrote, and
    the carried message counts as unauthenticated (``authenticated_side_effects``)."""
    parsed = authenticate(parsed, box, dkim_result)
    if carried is None:
        return parsed, None, None
    ok, why = trusted(carried.kind, parsed, box, directory, parsed.authenticated, mail_from)
    if not ok:
        return parsed, None, {"rule": "unwrap", "outcome": "skip", "detail": why}
    if parsed.authenticated:
        inner = tuple(dataclasses.replace(i, parsed=authenticate(i.parsed, box, NONE))
                      for i in carried.inner)
    else:
        inner = tuple(dataclasses.replace(i, parsed=dataclasses.replace(
            i.parsed, dkim=NONE, authenticated=False)) for i in carried.inner)
        why += "; the carrier is not authenticated, so neither is what it carries"
    return parsed, dataclasses.replace(carried, inner=inner), \
        {"rule": "unwrap", "outcome": "hit", "detail": why}


def authenticate(parsed, box, dkim_result: str):
    """``parsed`` with ``dkim`` and ``authenticated`` set for ``box``."""
    message = parsed.message
    stated = None
    if message is not None and box.trusted_authserv_ids:
        try:
            headers = message.get_all("Authentication-Results") or []
        except Exception:           # a header the email package cannot even list
            headers = []
        stated = from_authentication_results(headers, box.trusted_authserv_ids,
                                             domain_of(parsed.sender or ""))
    result = stated or dkim_result or NONE
    return dataclasses.replace(parsed, dkim=result, authenticated=result == PASS)
