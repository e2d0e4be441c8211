"""Setting up and running: ``db upgrade``, ``directory import``, ``serve``."""

from __future__ import annotations

import json
from pathlib import Path

from sink.cli.common import EXIT_OK, UsageError, engine_for
from sink.config import Config


def register(sub) -> None:
    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command",
                                                                     required=True)
    db.add_parser("upgrade", help="create or migrate the schema to the newest version"
                  ).set_defaults(func=cmd_db_upgrade)
    directory = sub.add_parser("directory", help="the who-is-who directory").add_subparsers(
        dest="directory_command", required=True)
    imp = directory.add_parser("import", help="upsert users, companies, contacts, ... from JSON")
    imp.add_argument("file")
    imp.set_defaults(func=cmd_directory_import)
    sub.add_parser(
        "serve", help="run the listeners until SIGTERM",
        description="Run the configured [[listeners]] (LMTP/SMTP) with their storage workers "
                    "until SIGTERM or Ctrl-C, then finish every message in flight and exit. "
                    "Each message is committed with its records before it is answered 250; "
                    "anything transient is answered 4xx so the MTA retries. Also serves "
                    "[metrics] (/metrics, /healthz) and sends [notify] error mails when "
                    "configured, and obeys `sink suspend` / `sink resume` within a second. "
                    "Run `sink db upgrade` first. The log is JSON lines on standard error "
                    "(or [log] file).").set_defaults(func=cmd_serve)


def cmd_db_upgrade(config: Config, args) -> int:
    from sink.db.migrate import upgrade
    revision = upgrade(engine_for(config, require_schema=False))
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
    engine = engine_for(config)
    try:
        with engine.begin() as conn:
            counts = import_directory(conn, data)
    except DirectoryImportError as exc:
        raise UsageError(f"{args.file}: {exc}") from None
    print(json.dumps({"imported": counts}))
    return EXIT_OK


def cmd_serve(config: Config, args) -> int:
    from sink.app import run
    if not config.listeners:
        raise UsageError("listeners: configure at least one [[listeners]] to serve")
    config.box(None)
    return run(config, engine_for(config))
