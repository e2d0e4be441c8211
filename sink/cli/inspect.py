"""Looking at what was stored: ``messages``, ``show``, ``export``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sink.cli.common import EXIT_OK, UsageError, day, emit, engine_for
from sink.config import Config


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
    show.set_defaults(func=cmd_show)


def cmd_messages(config: Config, args) -> int:
    from sink.db.queries import list_messages
    if args.limit < 1:
        raise UsageError("--limit: expected a positive number")
    with engine_for(config).connect() as conn:
        rows = list_messages(conn, status=args.status, verdict=args.verdict, limit=args.limit)
    for row in rows:
        if args.json:
            emit(row)
        else:
            when = row["received_at"].strftime("%Y-%m-%d %H:%M:%S") if row["received_at"] else ""
            print(f"{row['id']:>7}  {when}  {row['channel']:<6} {row['status']:<9} "
                  f"{(row['verdict'] or '-'):<18} {row['activities']:>3}  "
                  f"{(row['sender'] or '-')[:32]:<32}  {(row['subject'] or '')[:60]}")
    return EXIT_OK


def cmd_export(config: Config, args) -> int:
    from sink.db.queries import export_raw
    target = Path(args.directory)
    written = skipped = 0
    with engine_for(config).connect() as conn:
        for received_day, name, raw in export_raw(conn, since=args.since, until=args.until,
                                         status=args.status):
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
    from sink.db.queries import message_detail, raw_bytes
    with engine_for(config).connect() as conn:
        if args.raw:
            raw = raw_bytes(conn, args.id)
            if raw is None:
                raise UsageError(f"message {args.id}: not found")
            sys.stdout.buffer.write(raw)
            sys.stdout.buffer.flush()
            return EXIT_OK
        detail = message_detail(conn, args.id)
    if detail is None:
        raise UsageError(f"message {args.id}: not found")
    _print_detail(detail)
    return EXIT_OK


def _print_detail(d: dict) -> None:
    fields = ("id", "uuid", "received_at", "channel", "box", "mail_from", "rcpt_to", "sender",
              "to_addrs", "cc_addrs", "date_header", "subject", "message_id", "size", "sha256",
              "status", "verdict", "direction", "error", "dkim", "processed_at", "parent_id",
              "carried")
    for key in fields:
        value = d.get(key)
        if isinstance(value, list):
            value = ", ".join(f"#{v}" if isinstance(v, int) else v for v in value)
        print(f"{key + ':':<14}{'' if value is None else value}")
    print("trace:")
    for entry in d.get("trace") or []:
        detail = f"  ({entry['detail']})" if entry.get("detail") else ""
        print(f"  {entry['rule']:<22}{entry['outcome']}{detail}")
    print(f"activities: {len(d['activities'])}")
    for a in d["activities"]:
        links = ", ".join(f"{k} {a[k]}" for k in ("contract", "order", "task", "ticket")
                          if a.get(k))
        print(f"  #{a['id']} {a['direction']} responsible={a['responsible']} "
              f"type={a['type_name']} scope={a['scope']} completed={a['completed']} "
              f"due={a['due']}" + (f" [{links}]" if links else "")
              + (f" original={a['original_filename']}" if a["original_filename"] else ""))
        if a["contacts"] or a["companies"]:
            print(f"    contacts: {', '.join(a['contacts']) or '-'}; "
                  f"companies: {', '.join(a['companies']) or '-'}")
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
    print(f"tasks: {len(tasks)}")
    for k in tasks:
        print(f"  {k['action']} {k['number']} subject={k['subject']!r} status={k['status']} "
              f"contract={k['contract_number'] or '-'} approver={k['approver'] or '-'} "
              f"solvers={', '.join(k['solvers']) or '-'}")
    print(f"contact flags: {len(flags)}")
    for f in flags:
        changes = ", ".join(f"{name}={value}" for name, value in f["changes"].items())
        print(f"  {f['entity']} {f['email']}: {changes}")
    print(f"forbidden: {len(forbidden)}")
    for f in forbidden:
        print(f"  {f['type']} {f['email']}")
    print(f"invitations: {len(invitations)}")
    for i in invitations:
        when = " - ".join(f"{i[k]}" + (f" ({i[k + '_tzid']})" if i[k + "_tzid"] else "")
                          for k in ("dtstart", "dtend") if i[k])
        print(f"  {i['user']} {i['method']} {i['status']} uid={i['uid']} sequence={i['sequence']} "
              f"summary={i['summary']!r} {when}"
              + (f" rrule={i['rrule']}" if i["rrule"] else "")
              + (f" organizer={i['organizer']}" if i["organizer"] else ""))
    for r in responses:
        print(f"  answer on {r['user']}'s uid={r['uid']}: {r['attendee']} {r['partstat']}")

