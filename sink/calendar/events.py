"""Graph's event resource <-> a ``calendar_activities`` row, both defensive.

A Graph event is hostile input: every field is checked for its type and cut to the column's
size; anything unusable becomes "absent", never an exception. :func:`digest` is the fingerprint
of what the two sides synchronise, computed the same way from either side, so "changed since we
last agreed" is a comparison of two strings.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from sink.mail.textnorm import fold_address

TYPES = {"singleInstance", "occurrence", "exception", "seriesMaster"}
ATTENDEE_TYPES = {"required", "optional", "resource"}
MAX_ATTENDEES = 500
MAX_RECURRENCE = 8192                 # bytes of JSON: a pattern and a range are far smaller
MAX_CANCELLED = 1000                  # occurrences of one series read as cancelled
_OCCURRENCE_ID = re.compile(r"OID\.(.{1,500})\.(\d{4}-\d{2}-\d{2})")
SYNCED = ("subject", "location", "start", "end", "all_day", "attendees", "recurrence",
          "cancelled")


def _text(value, limit: int) -> str:
    # NUL is the one character PostgreSQL text cannot hold: dropped, not a failed pass.
    return value.replace("\x00", "")[:limit] if isinstance(value, str) else ""


def _get(obj, *path):
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def utc(value: datetime | None) -> datetime | None:
    """Aware UTC to the second (SQLite hands back naive datetimes: they are UTC here)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).replace(microsecond=0)


def parse_offset_time(value) -> datetime | None:
    """An ISO 8601 DateTimeOffset such as ``2026-12-07T09:00:00Z``."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return utc(parsed)
    except (OverflowError, ValueError):
        return None


def parse_graph_time(value) -> datetime | None:
    """Graph's dateTimeTimeZone (``{"dateTime": "2026-12-07T09:00:00.0000000",
    "timeZone": "UTC"}``); we ask for UTC, an IANA or Windows zone is honoured, anything else
    is UTC."""
    text, zone = _get(value, "dateTime"), _get(value, "timeZone")
    if not isinstance(text, str) or len(text) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(text.split(".")[0])
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone_of(zone))
    try:
        return utc(parsed)
    except (OverflowError, ValueError):     # 9999-12-31 in a zone west of UTC
        return None


def _address(value) -> str | None:
    address = _get(value, "emailAddress", "address")
    if not isinstance(address, str) or "@" not in address or len(address) > 320:
        return None
    return fold_address(address.replace("\x00", "")) or None


def _attendees(value) -> list[dict]:
    out, seen = [], set()
    for item in value[:MAX_ATTENDEES] if isinstance(value, list) else []:
        address = _address(item)
        if address is None or address in seen:
            continue
        seen.add(address)
        kind = _get(item, "type")
        out.append({"email": address, "name": _text(_get(item, "emailAddress", "name"), 200),
                    "type": kind if isinstance(kind, str) and kind in ATTENDEE_TYPES
                    else "required"})
    return out


def _recurrence(value) -> dict | None:
    if not isinstance(value, dict):
        return None
    try:
        dumped = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return None
    return json.loads(dumped) if len(dumped) <= MAX_RECURRENCE else None


def from_graph(event: dict) -> dict:
    """The row fields of one Graph event."""
    kind = event.get("type")
    master = event.get("seriesMasterId")
    return {
        "graph_id": _text(event.get("id"), 500) or None,
        "change_key": _text(event.get("changeKey"), 200) or None,
        "graph_modified_at": parse_offset_time(event.get("lastModifiedDateTime")),
        "ical_uid": _text(event.get("iCalUId"), 500) or None,
        "event_type": kind if isinstance(kind, str) and kind in TYPES else "singleInstance",
        "series_master_id": _text(master, 500) or None,
        "original_start": parse_offset_time(event.get("originalStart")),
        "recurrence": _recurrence(event.get("recurrence")) if kind == "seriesMaster" else None,
        "cancelled": event.get("isCancelled") is True,
        "subject": _text(event.get("subject"), 2000),
        "location": _text(_get(event, "location", "displayName"), 1000),
        "start": parse_graph_time(event.get("start")),
        "end": parse_graph_time(event.get("end")),
        "all_day": event.get("isAllDay") is True,
        "organizer": _address(event.get("organizer")),
        "attendees": _attendees(event.get("attendees")),
    }


def _graph_time(value: datetime | None) -> dict | None:
    value = utc(value)
    return None if value is None else {"dateTime": value.strftime("%Y-%m-%dT%H:%M:%S"),
                                       "timeZone": "UTC"}


def to_graph(row) -> dict:
    """The event body for a POST or PATCH of this row (the fields the CRM side owns)."""
    m = row._mapping if hasattr(row, "_mapping") else row
    body = {
        "subject": m["subject"] or "",
        "start": _graph_time(m["start"]),
        "end": _graph_time(m["end"] or m["start"]),
        "isAllDay": bool(m["all_day"]),
        "location": {"displayName": m["location"] or ""},
        "attendees": [{"emailAddress": {"address": a["email"], "name": a.get("name", "")},
                       "type": a.get("type", "required")}
                      for a in (m["attendees"] or []) if isinstance(a, dict) and a.get("email")],
    }
    if m["event_type"] == "seriesMaster" and m["recurrence"]:
        body["recurrence"] = m["recurrence"]
    return body


def digest(fields) -> str:
    """Fingerprint of the synchronised fields of a row or of :func:`from_graph`'s result."""
    m = fields._mapping if hasattr(fields, "_mapping") else fields
    canonical = {}
    for key in SYNCED:
        value = m[key]
        if isinstance(value, datetime):
            value = utc(value).isoformat()
        elif key == "attendees":
            value = sorted((a.get("email", ""), a.get("type", "required"))
                           for a in (value or []) if isinstance(a, dict))
        elif key in ("all_day", "cancelled"):
            value = bool(value)
        elif key in ("subject", "location"):
            value = value or ""
        canonical[key] = value
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()


def zone_of(name) -> ZoneInfo | timezone:
    """A Graph time zone name (Windows' "Central Europe Standard Time", or IANA's) as a
    zone; UTC when it is neither."""
    if isinstance(name, str) and 0 < len(name) < 100 and name != "UTC":
        for candidate in (name, WINDOWS_TO_OLSON.get(name)):
            if candidate:
                try:
                    return ZoneInfo(candidate)
                except (ZoneInfoNotFoundError, ValueError):
                    pass
    return timezone.utc


def cancelled_occurrences(master: dict, fields: dict) -> list[dict]:
    """The row fields of the occurrences a series master lists as cancelled
    (``cancelledOccurrences``: ``OID.{master id}.{date}``, the date in the recurrence's time
    zone). Graph says nothing else of them; they start, on their date, at the master's time
    of day in that zone, last as long as it, and carry its subject, place and people."""
    listed = master.get("cancelledOccurrences")
    start, end = fields["start"], fields["end"]
    if not isinstance(listed, list) or start is None or fields["graph_id"] is None:
        return []
    zone = zone_of(_get(master, "recurrence", "range", "recurrenceTimeZone")
                   or master.get("originalStartTimeZone"))
    local = start.astimezone(zone)
    length = (end - start) if end is not None and end >= start else timedelta(0)
    out, seen = [], set()
    for item in listed[:MAX_CANCELLED]:
        found = _OCCURRENCE_ID.fullmatch(item) if isinstance(item, str) else None
        if found is None or found.group(1) != fields["graph_id"]:
            continue
        try:
            day = date.fromisoformat(found.group(2))
            at = utc(datetime.combine(day, local.timetz().replace(tzinfo=None), tzinfo=zone))
        except (OverflowError, ValueError):
            continue
        if at in seen:
            continue
        seen.add(at)
        out.append({**fields, "graph_id": None, "change_key": None, "event_type": "occurrence",
                    "series_master_id": fields["graph_id"], "original_start": at,
                    "recurrence": None, "cancelled": True, "start": at, "end": at + length})
    return out

