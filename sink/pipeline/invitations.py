"""SPEC 5 step 8, invitations (seed 000 ch. 14): iCalendar parts become invitations.

``text/calendar`` (and ``application/ics``) parts are read with the ``icalendar`` library.
METHOD REQUEST and CANCEL create, update or cancel one invitation per recipient user, keyed by
UID; METHOD REPLY records the attendee's answer on the organiser's invitation when the organiser
is a user. Versions are ordered by SEQUENCE, then DTSTAMP (RFC 5546), and at a tie a CANCEL
wins: an older version never replaces a newer one, whatever order the mails arrive in (the
executor enforces the same order in its write). Time zones are kept (the ISO time with its
offset and the TZID as written); a recurring event keeps its RRULE. Single occurrences
(RECURRENCE-ID without the master event) are not tracked: cancelling one occurrence must not
cancel the series. Anything unreadable is skipped, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, timezone

import icalendar

from sink.mail.parse import part_text
from sink.pipeline.context import Context
from sink.pipeline.decision import InvitationAction
from sink.pipeline.parts import OwnParts, read_own_parts
from sink.pipeline.result import PASS, Result
from sink.mail.textnorm import fold_address

CALENDAR_TYPES = ("text/calendar", "application/ics")
METHODS = ("REQUEST", "CANCEL", "REPLY")
MAX_CALENDAR = 1024 * 1024
MAX_EVENTS = 200
MAX_UID = 500
MAX_SEQUENCE = 2 ** 31 - 1      # stored in an INTEGER column
MAX_TEXT = 2000
NO_STAMP = "00000000T000000Z"


@dataclass(frozen=True)
class CalendarEvent:
    invitation: InvitationAction                  # with user "" (filled in per user)
    attendees: tuple[tuple[str, str], ...] = ()   # (address, PARTSTAT)


def revision(sequence: int, dtstamp: str | None, method: str) -> str:
    """Sortable version key: SEQUENCE, then DTSTAMP, then CANCEL over REQUEST."""
    return f"{sequence:010d}.{dtstamp or NO_STAMP}.{1 if method == 'CANCEL' else 0}"


# ----------------------------------------------------------------------------- values

def _first(value):
    return value[0] if isinstance(value, list) and value else value


def _clean(text: str) -> str:
    """No NUL characters: PostgreSQL text cannot hold them."""
    return text.replace("\x00", "")


def _text(component, name: str, limit: int = MAX_TEXT) -> str:
    value = _first(component.get(name))
    return "" if value is None else " ".join(_clean(str(value)).split())[:limit]


def _sequence(component) -> int:
    try:
        return min(max(int(_first(component.get("SEQUENCE")) or 0), 0), MAX_SEQUENCE)
    except (TypeError, ValueError):
        return 0


def _stamp(component) -> str | None:
    value = getattr(_first(component.get("DTSTAMP")), "dt", None)
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return (f"{value.year:04d}{value.month:02d}{value.day:02d}T"
            f"{value.hour:02d}{value.minute:02d}{value.second:02d}Z")


def _when(component, name: str) -> tuple[str | None, str | None]:
    """(ISO 8601 text, with the offset when the time is not floating; the TZID as written)."""
    prop = _first(component.get(name))
    value = getattr(prop, "dt", None)
    if not isinstance(value, date):
        return None, None
    tzid = getattr(prop, "params", {}).get("TZID") if isinstance(value, datetime) else None
    if tzid is None and isinstance(value, datetime) and value.tzinfo is not None \
            and value.utcoffset() is not None and not value.utcoffset():
        tzid = "UTC"
    return value.isoformat(), (_clean(str(tzid))[:200] or None if tzid else None)


def _rrule(component) -> str | None:
    value = component.get("RRULE")
    rules = value if isinstance(value, list) else [value] if value is not None else []
    texts = []
    for rule in rules:
        try:
            texts.append(_clean(rule.to_ical().decode("utf-8", "replace")))
        except Exception:
            continue
    return "\n".join(texts) or None


def _address(value) -> str:
    text = _clean(str(value or "")).strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    return fold_address(text)[:320]


def _attendees(component) -> tuple[tuple[str, str], ...]:
    value = component.get("ATTENDEE")
    found = []
    for attendee in value if isinstance(value, list) else [value] if value is not None else []:
        address = _address(attendee)
        params = getattr(attendee, "params", {})
        if address:
            found.append((address, str(params.get("PARTSTAT") or "NEEDS-ACTION").upper()[:40]))
    return tuple(dict(found).items())


def _event(component, method: str) -> CalendarEvent | None:
    uid = _text(component, "UID", MAX_UID + 1)
    if not uid or len(uid) > MAX_UID:
        return None
    sequence, stamp = _sequence(component), _stamp(component)
    start, start_tz = _when(component, "DTSTART")
    end, end_tz = _when(component, "DTEND")
    status = "CANCELLED" if method == "CANCEL" else (
        _text(component, "STATUS", 20).upper() or "CONFIRMED")
    invitation = InvitationAction(
        user="", uid=uid, method=method, status=status, sequence=sequence,
        revision=revision(sequence, stamp, method), dtstamp=stamp,
        summary=_text(component, "SUMMARY"), location=_text(component, "LOCATION"),
        dtstart=start, dtstart_tzid=start_tz, dtend=end, dtend_tzid=end_tz,
        rrule=_rrule(component), organizer=_address(component.get("ORGANIZER")) or None)
    return CalendarEvent(invitation, _attendees(component))


def _calendar_events(text: str, method_param: str) -> list[CalendarEvent]:
    events = []
    for calendar in icalendar.Calendar.from_ical(text, multiple=True):
        method = (_text(calendar, "METHOD", 20) or method_param).upper()
        if method not in METHODS:
            continue
        for component in calendar.walk("VEVENT")[:MAX_EVENTS]:
            if component.get("RECURRENCE-ID") is not None:
                continue
            event = _event(component, method)
            if event is not None:
                events.append(event)
    return events


def calendar_events(msg, parts: OwnParts | None = None) -> tuple[CalendarEvent, ...]:
    """The events of every calendar part, one per (method, UID): the newest revision.
    ``parts``: the message's own parts when already read (:attr:`Context.own_parts`)."""
    newest: dict[tuple[str, str], CalendarEvent] = {}
    parts = parts if parts is not None else read_own_parts(msg)
    for part in parts.of_types(CALENDAR_TYPES):
        try:
            method_param = str(part.get_param("method") or "").strip()
            events = _calendar_events(part_text(part, MAX_CALENDAR), method_param)
        except Exception:  # icalendar rejects malformed text with assorted errors
            continue
        for event in events:
            key = (event.invitation.method, event.invitation.uid)
            if key not in newest or newest[key].invitation.revision < event.invitation.revision:
                newest[key] = event
    return tuple(newest.values())


# ----------------------------------------------------------------------------- the rule

def _for_recipients(ctx: Context, event: CalendarEvent, notes: list[str]):
    if not ctx.recipient_users:
        notes.append(f"{event.invitation.method} {event.invitation.uid}: no recipient is a user")
    for user in ctx.recipient_users:
        stored = ctx.records.invitation(user.id, event.invitation.uid)
        if stored is not None and stored > event.invitation.revision:
            notes.append(f"{user.email}: stored version of {event.invitation.uid} is newer")
            continue
        yield replace(event.invitation, user=user.email)


def _reply(ctx: Context, event: CalendarEvent, notes: list[str]):
    organizer = ctx.user(event.invitation.organizer or "")
    if organizer is None:
        notes.append(f"REPLY for {event.invitation.uid}: the organiser is not a user")
        return
    answers = tuple((attendee, partstat) for attendee, partstat in event.attendees
                    if (ctx.records.response(organizer.id, event.invitation.uid, attendee) or "")
                    <= event.invitation.revision)
    if not answers:
        notes.append(f"REPLY for {event.invitation.uid}: no newer answer")
        return
    yield replace(event.invitation, user=organizer.email, responses=answers)


def invitations(ctx: Context) -> Result:
    if not ctx.own_parts.has_any(CALENDAR_TYPES):
        return PASS          # nearly all mail: decided from the part types read once
    events = calendar_events(ctx.msg.message, ctx.own_parts)
    if not events:
        return PASS
    actions: list[InvitationAction] = []
    notes: list[str] = []
    for event in events:
        handler = _reply if event.invitation.method == "REPLY" else _for_recipients
        actions.extend(handler(ctx, event, notes))
    done = [f"{a.method} {a.uid} for {a.user}" for a in actions]
    detail = "; ".join(done + notes)[:1000]
    return Result("hit" if actions else "pass", detail=detail, invitations=tuple(actions))
