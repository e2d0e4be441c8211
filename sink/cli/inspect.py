"""Looking at what was stored: ``messages``, ``show``, ``export``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sink.cli.common import EXIT_OK, UsageError, day, emit, engine_for
from sink.config import Config

# SPEC 7: text from a message never reaches a terminal as control characters (a Subject can
# hold a screen clear or an OSC 8 link): C0, DEL, C1, line/paragraph separators and the bidi
# controls are shown as escapes. Made visible before any cut, so a cut opens nothing.
_BIDI = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E,
                                   0x200F, 0x061C))


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text) -> str:
    text = "" if text is None else str(text)
    if text.isprintable():          # the common case: nothing to do (fast path)
        return text
    return "".join(_escape(ch) if _hidden(ch) else ch for ch in text)


def _hidden(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F or ch in _BIDI or ch in "\u2028\u2029"


def _say(line: str = "") -> None:
    print(visible(line))


def register(sub) -> None:
    msgs = sub.add_parser("messages", help="list stored messages, newest first")
    msgs.add_argument("--json", action="store_true", help="one JSON object per line")
    msgs.add_argument("--status", choices=("processed", "failed", "pending"))
    msgs.add_argument("--verdict")
    msgs.add_argument("--limit", type=int, default=50)
    msgs.set_defaults(func=cmd_messages)

    export = sub.add_parser("export", help="write stored raw messages as DIR/YYYY-MM-DD/<uuid>.eml")
    export.add_argument("directory")
    export.add_argument("--since", type=day, help="received on or after this day (YYYY-MM-DD)")
    export.add_argument("--until", type=day, help="received before this day (YYYY-MM-DD)")
    export.add_argument("--status", choices=("processed", "failed", "pending"))
    export.set_defaults(func=cmd_export)

    show = sub.add_parser("show", help="one message with its trace and records")
    show.add_argument("id", type=int)
    show.add_argument("--raw", action="store_true", help="write exactly the stored bytes")
    show.add_argument("--part", metavar="N",
                      help="write exactly the decoded bytes of attachment N (its part number, "
                           "as listed: 2, 2.1, 2/1)")
    show.set_defaults(func=cmd_show)


def cmd_messages(config: Config, args) -> int:
    from sink.db.queries import list_messages
    if args.limit < 1:
        raise UsageError("--limit: expected a positive number")
    with engine_for(config).connect() as conn:
        rows = list_messages(conn, status=args.status, verdict=args.verdict, limit=args.limit)
    if not args.json:
        print(_MESSAGES_ROW.format(id="ID", when="RECEIVED (UTC)", channel="CHANNEL",
                                   status="STATUS", verdict="VERDICT", activities="ACT",
                                   sender="SENDER", subject="SUBJECT"))
    for row in rows:
        if args.json:
            emit(row)
        else:
            when = row["received_at"].strftime("%Y-%m-%d %H:%M:%S") if row["received_at"] else ""
            print(_MESSAGES_ROW.format(
                id=row["id"], when=when, channel=row["channel"], status=row["status"],
                verdict=row["verdict"] or "-", activities=row["activities"],
                sender=visible(row["sender"] or "-")[:32],
                subject=visible(row["subject"] or "")[:60]))
    return EXIT_OK


# one header line names the columns (ACT: activities created from the message)
_MESSAGES_ROW = ("{id:>7}  {when:<19}  {channel:<7} {status:<9} {verdict:<18} {activities:>3}  "
                 "{sender:<32}  {subject}")


def cmd_export(config: Config, args) -> int:
    from sink.db.queries import export_raw
    target = Path(args.directory)
    written = skipped = 0
    from sink.cli.progress import progress
    with engine_for(config).connect() as conn, progress("export", None) as advance:
        for received_day, name, raw in export_raw(conn, since=args.since, until=args.until,
                                         status=args.status):
            advance(1)
            path = target / received_day / f"{name}.eml"
            if path.exists() and path.stat().st_size == len(raw):
                skipped += 1
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".eml.part")
            partial.write_bytes(raw)
            partial.replace(path)          # never a half-written .eml under its final name
            written += 1
    print(json.dumps({"exported": written, "already_there": skipped, "directory": str(target)}))
    return EXIT_OK


def cmd_show(config: Config, args) -> int:
    from sink.db.attachments import attachments_of
    from sink.db.queries import message_detail, raw_bytes
    if args.raw and args.part is not None:
        raise UsageError("show: --raw or --part, not both")
    with engine_for(config).connect() as conn:
        if args.raw or args.part is not None:
            raw = raw_bytes(conn, args.id)
            if raw is None:
                raise UsageError(f"message {args.id}: not found")
            _write_bytes(bytes(raw) if args.raw else _part(bytes(raw), args.id, args.part))
            return EXIT_OK
        detail = message_detail(conn, args.id)
        if detail is not None:
            detail["attachments"] = attachments_of(conn, args.id)
    if detail is None:
        raise UsageError(f"message {args.id}: not found")
    _print_detail(detail)
    return EXIT_OK


def _part(raw: bytes, message_id: int, number: str) -> bytes:
    """The decoded bytes of one part, from the stored raw bytes (no copy is kept elsewhere)."""
    from sink.mail.attachments import part_bytes
    data = part_bytes(raw, number.strip())
    if data is None:
        raise UsageError(f"message {message_id}: no part {visible(number)}")
    return data


def _write_bytes(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _print_attachments(d: dict) -> None:
    records = d.get("attachments") or []
    print(f"attachments: {len(records)}")
    for a in records:
        extra = [f"cid={visible(a['content_id'])}" if a["content_id"] else "",
                 "inline" if a["inline"] else "",
                 f"subject='{visible(a['nested_subject'])}'" if a["nested_subject"] else "",
                 f"({visible(a['defect'])})" if a["defect"] else ""]
        print(f"  {a['part']:<8} '{visible(a['name'])}' {visible(a['content_type'])} "
              f"{a['size']} bytes sha256={a['sha256'][:16]}… "
              + " ".join(e for e in extra if e))


def _print_detail(d: dict) -> None:
    fields = ("id", "uuid", "received_at", "channel", "box", "mail_from", "rcpt_to", "sender",
              "to_addrs", "cc_addrs", "date_header", "subject", "message_id", "size", "sha256",
              "status", "verdict", "direction", "error", "dkim", "processed_at", "parent_id",
              "carried")
    for key in fields:
        value = d.get(key)
        if isinstance(value, list):
            value = ", ".join(f"#{v}" if isinstance(v, int) else v for v in value)
        _say(f"{key + ':':<14}{'' if value is None else value}")
    _say("trace:")
    for entry in d.get("trace") or []:
        detail = f"  ({entry['detail']})" if entry.get("detail") else ""
        _say(f"  {entry['rule']:<22}{entry['outcome']}{detail}")
    _say(f"activities: {len(d['activities'])}")
    for a in d["activities"]:
        links = ", ".join(f"{k} {a[k]}" for k in ("contract", "order", "task", "ticket")
                          if a.get(k))
        _say(f"  #{a['id']} {a['direction']} responsible={a['responsible']} "
              f"type={a['type_name']} scope={a['scope']} completed={a['completed']} "
              f"due={a['due']}" + (f" [{links}]" if links else "")
              + (f" original={a['original_filename']}" if a["original_filename"] else ""))
        if a["contacts"] or a["companies"]:
            _say(f"    contacts: {', '.join(a['contacts']) or '-'}; "
                  f"companies: {', '.join(a['companies']) or '-'}")
    _print_attachments(d)
    _print_side_effects(d)


def _print_side_effects(d: dict) -> None:
    tickets = d.get("tickets") or []
    print(f"tickets: {len(tickets)}")
    for k in tickets:
        print(f"  {k['action']} #{k['number']} title={k['title']!r} status={k['status']} "
              f"contact={k['contact'] or '-'} company={k['company'] or '-'} rule={k['rule']}")
    tasks, flags = d.get("tasks") or [], d.get("contact_flags") or []
    forbidden, invitations = d.get("forbidden") or [], d.get("invitations") or []
    responses = d.get("responses") or []
    _say(f"tasks: {len(tasks)}")
    for k in tasks:
        _say(f"  {k['action']} {k['number']} subject={k['subject']!r} status={k['status']} "
              f"contract={k['contract_number'] or '-'} approver={k['approver'] or '-'} "
              f"solvers={', '.join(k['solvers']) or '-'}")
    _say(f"contact flags: {len(flags)}")
    for f in flags:
        changes = ", ".join(f"{name}={value}" for name, value in f["changes"].items())
        _say(f"  {f['entity']} {f['email']}: {changes}")
    _say(f"forbidden: {len(forbidden)}")
    for f in forbidden:
        _say(f"  {f['type']} {f['email']}")
    _say(f"invitations: {len(invitations)}")
    for i in invitations:
        when = " - ".join(f"{i[k]}" + (f" ({i[k + '_tzid']})" if i[k + "_tzid"] else "")
                          for k in ("dtstart", "dtend") if i[k])
        _say(f"  {i['user']} {i['method']} {i['status']} uid={i['uid']} sequence={i['sequence']} "
              f"summary={i['summary']!r} {when}"
              + (f" rrule={i['rrule']}" if i["rrule"] else "")
              + (f" organizer={i['organizer']}" if i["organizer"] else ""))
    for r in responses:
        _say(f"  answer on {r['user']}'s uid={r['uid']}: {r['attendee']} {r['partstat']}")
    bounces = d.get("bounces") or []
    _say(f"bounces: {len(bounces)}")
    for b in bounces:
        _say(f"  {b['kind']} {b['email']} status={b['status'] or '-'}"
             + (f" diagnostic={b['diagnostic'][:200]!r}" if b["diagnostic"] else ""))
