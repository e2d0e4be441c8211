"""``sink``: the command line (SPEC section 6). Exit 0 on success, 2 for an unusable argument or
configuration (one line on stderr), 1 when storage is unavailable (try again later)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from sink.config import Config, ConfigError, load_config

EXIT_OK, EXIT_TRANSIENT, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad argument; reported as one line and exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other usage error
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sink", description="Mail-to-CRM intake.")
    p.add_argument("--config", help="TOML configuration file (default: $SINK_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command",
                                                                     required=True)
    db.add_parser("upgrade", help="create or migrate the schema to the newest version")

    directory = sub.add_parser("directory", help="the who-is-who directory").add_subparsers(
        dest="directory_command", required=True)
    imp = directory.add_parser("import", help="upsert users, companies, contacts, ... from JSON")
    imp.add_argument("file")

    for name, help_text in (("check", "evaluate .eml files without writing anything"),
                            ("ingest", "process .eml files and commit them")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--box", help="box address (default: the first box in the config)")
        cmd.add_argument("files", nargs="+", metavar="FILE.eml")

    sub.add_parser("serve", help="run the listeners until SIGTERM")

    msgs = sub.add_parser("messages", help="list stored messages, newest first")
    msgs.add_argument("--json", action="store_true", help="one JSON object per line")
    msgs.add_argument("--status", choices=("processed", "failed", "pending"))
    msgs.add_argument("--verdict")
    msgs.add_argument("--limit", type=int, default=50)

    export = sub.add_parser("export", help="write stored raw messages as DIR/YYYY-MM-DD/<uuid>.eml")
    export.add_argument("directory")
    export.add_argument("--since", type=_date, help="received on or after this day (YYYY-MM-DD)")
    export.add_argument("--until", type=_date, help="received before this day (YYYY-MM-DD)")
    export.add_argument("--status", choices=("processed", "failed", "pending"))

    show = sub.add_parser("show", help="one message with its trace and records")
    show.add_argument("id", type=int)
    show.add_argument("--raw", action="store_true", help="write exactly the stored bytes")

    replay = sub.add_parser("replay", help="run the rules again on failed messages, once each")
    replay.add_argument("ids", type=int, nargs="*", metavar="ID")
    replay.add_argument("--all-failed", action="store_true",
                        help="every message whose status is failed, oldest first")
    return p


# ------------------------------------------------------------------------------------ helpers

def _date(text: str):
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def _engine(config: Config, *, require_schema: bool = True):
    from sink.db.engine import make_engine
    from sink.db.migrate import schema_is_current
    engine = make_engine(config.database_url)
    if require_schema and not schema_is_current(engine):
        raise UsageError("the database schema is not current: run `sink db upgrade` first")
    return engine


def _read_files(paths: list[str]) -> list[tuple[str, bytes]]:
    files = []
    for path in paths:
        try:
            files.append((path, Path(path).read_bytes()))
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return files


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(type(value).__name__)


def _result_json(file: str, box: str, decision=None, **extra) -> dict:
    body = decision.as_json() if decision is not None else {
        "verdict": None, "direction": None, "activities": [], "tasks": [], "contact_flags": [],
        "forbidden": [], "invitations": [], "tickets": [], "trace": []}
    return {"file": file, "box": box, **body, **extra}


# ------------------------------------------------------------------------------------ commands

def cmd_db_upgrade(config: Config, args) -> int:
    from sink.db.migrate import upgrade
    revision = upgrade(_engine(config, require_schema=False))
    print(f"database at revision {revision}")
    return EXIT_OK


def cmd_directory_import(config: Config, args) -> int:
    from sink.db.directory_store import DirectoryImportError, import_directory
    try:
        data = json.loads(Path(args.file).read_text("utf-8"))
    except OSError as exc:
        raise UsageError(f"{args.file}: cannot read: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{args.file}: not valid JSON: {exc}") from None
    engine = _engine(config)
    try:
        with engine.begin() as conn:
            counts = import_directory(conn, data)
    except DirectoryImportError as exc:
        raise UsageError(f"{args.file}: {exc}") from None
    print(json.dumps({"imported": counts}))
    return EXIT_OK


def cmd_check(config: Config, args) -> int:
    from sink.intake import Envelope, Intake
    box = config.box(args.box)
    files = _read_files(args.files)
    intake = Intake(_engine(config))
    for path, raw in files:
        for decision in intake.evaluate_only(raw, box, Envelope("cli", rcpt_tos=(box.address,))):
            _emit(_result_json(path, box.address, decision))
    return EXIT_OK


def cmd_ingest(config: Config, args) -> int:
    from sink.intake import Envelope, Intake
    box = config.box(args.box)
    files = _read_files(args.files)
    intake = Intake(_engine(config))
    for path, raw in files:
        for delivery in intake.deliver(raw, Envelope("cli", rcpt_tos=(box.address,)), [box]):
            for d in delivery.processed_messages():
                _emit_delivery(path, d)
    return EXIT_OK


def _emit_delivery(path: str, d) -> None:
    extra = {"id": d.message_id, "status": d.status}
    if d.already_stored:
        extra["already_stored"] = True
    if d.error:
        extra["error"] = d.error
    out = _result_json(path, d.box, d.decision, **extra)
    out["verdict"] = d.verdict
    _emit(out)


def cmd_replay(config: Config, args) -> int:
    """Replay failed messages: one JSON line each (like ingest), each in its own transaction.
    Every ID is checked first (known, failed, its box configured): a bad one replays nothing.
    A message a concurrent replay processed meanwhile is reported on stderr (exit 2)."""
    from sink.intake import Intake, ReplayError
    if args.all_failed == bool(args.ids):
        raise UsageError("replay: give message IDs or --all-failed (not both)")
    intake = Intake(_engine(config))
    try:
        ids = intake.replay_candidates(None if args.all_failed else args.ids, config.boxes)
    except ReplayError as exc:
        raise UsageError(str(exc)) from None
    refused = 0
    for message_id in ids:
        try:
            delivery = intake.replay(message_id, config.boxes)
        except ReplayError as exc:
            print(f"sink: error: {exc}", file=sys.stderr)
            refused += 1
            continue
        extra = {"id": delivery.message_id, "status": delivery.status, "replayed": True}
        if delivery.error:
            extra["error"] = delivery.error
        out = _result_json(None, delivery.box, delivery.decision, **extra)
        out["verdict"] = delivery.verdict
        _emit(out)
    return EXIT_USAGE if refused else EXIT_OK


def cmd_serve(config: Config, args) -> int:
    from sink.server import run
    if not config.listeners:
        raise UsageError("listeners: configure at least one [[listeners]] to serve")
    config.box(None)
    return run(config, _engine(config))


def cmd_messages(config: Config, args) -> int:
    from sink.db.queries import list_messages
    if args.limit < 1:
        raise UsageError("--limit: expected a positive number")
    with _engine(config).connect() as conn:
        rows = list_messages(conn, status=args.status, verdict=args.verdict, limit=args.limit)
    for row in rows:
        if args.json:
            _emit(row)
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
    with _engine(config).connect() as conn:
        for day, name, raw in export_raw(conn, since=args.since, until=args.until,
                                         status=args.status):
            path = target / day / f"{name}.eml"
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
    with _engine(config).connect() as conn:
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
        links = ", ".join(f"{k} {a[k]}" for k in ("contract", "order", "task") if a[k])
        print(f"  #{a['id']} {a['direction']} responsible={a['responsible']} "
              f"type={a['type_name']} scope={a['scope']} completed={a['completed']} "
              f"due={a['due']}" + (f" [{links}]" if links else "")
              + (f" original={a['original_filename']}" if a["original_filename"] else ""))
        if a["contacts"] or a["companies"]:
            print(f"    contacts: {', '.join(a['contacts']) or '-'}; "
                  f"companies: {', '.join(a['companies']) or '-'}")
    _print_side_effects(d)


def _print_side_effects(d: dict) -> None:
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


COMMANDS = {
    ("db", "upgrade"): cmd_db_upgrade,
    ("directory", "import"): cmd_directory_import,
    ("check", None): cmd_check,
    ("ingest", None): cmd_ingest,
    ("serve", None): cmd_serve,
    ("messages", None): cmd_messages,
    ("show", None): cmd_show,
    ("replay", None): cmd_replay,
    ("export", None): cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    from sink.errors import TransientStorageError, classify
    from sink.log import configure
    try:
        args = build_parser().parse_args(argv)
        config = load_config(args.config)
        configure(config.log.level, config.log.file)
        sub = getattr(args, "db_command", None) or getattr(args, "directory_command", None)
        return COMMANDS[(args.command, sub)](config, args)
    except (UsageError, ConfigError) as exc:
        print(f"sink: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TransientStorageError as exc:
        print(f"sink: storage unavailable, nothing was committed: {exc}", file=sys.stderr)
        return EXIT_TRANSIENT
    except Exception as exc:
        transient = classify(exc)
        if transient is None:
            raise
        print(f"sink: storage unavailable, nothing was committed: {transient}", file=sys.stderr)
        return EXIT_TRANSIENT


if __name__ == "__main__":
    sys.exit(main())
