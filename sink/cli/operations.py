"""Operations: ``suspend``, ``resume``, ``status`` (SPEC section 7)."""

from __future__ import annotations

import json
import socket

from sqlalchemy import func, select

from sink.cli.common import EXIT_OK, emit, engine_for
from sink.config import Config


def register(sub) -> None:
    suspend = sub.add_parser(
        "suspend", help="stop taking mail (listeners answer 451 4.3.2) until `sink resume`",
        description="Every instance sharing the database answers 451 4.3.2 at MAIL and RCPT "
                    "within a second (the MTAs keep the mail) and its sources stop "
                    "connecting; with --store mail is still taken and stored as pending, "
                    "and decided on resume. Survives restarts.")
    suspend.add_argument("--store", action="store_true",
                         help="keep taking mail: store it as pending, decide it on resume")
    suspend.add_argument("--reason", help="shown by `sink status`")
    suspend.set_defaults(func=cmd_suspend)
    sub.add_parser("resume", help="decide pending messages in arrival order, then take mail "
                   "again").set_defaults(func=cmd_resume)
    status = sub.add_parser("status", help="suspension, listeners, sources, failed and pending")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=cmd_status)


def cmd_suspend(config: Config, args) -> int:
    from sink.suspension import suspend
    state = suspend(engine_for(config), store=args.store, reason=args.reason)
    print(json.dumps({"suspended": True, "store": state.store, "reason": state.reason,
                      "since": state.since.isoformat() if state.since else None}))
    return EXIT_OK


def cmd_resume(config: Config, args) -> int:
    from sink.cli.progress import progress
    from sink.suspension import pending_count, resume
    engine = engine_for(config)
    with engine.connect() as conn:
        total = pending_count(conn)
    with progress("resume: deciding pending messages", total) as advance:
        done = resume(engine, config.boxes, progress=advance)
    print(json.dumps({"resumed": done.lifted, "decided": done.decided, "failed": done.failed,
                      "skipped": done.skipped}))
    return EXIT_OK


def cmd_status(config: Config, args) -> int:
    report = status_report(config)
    if args.json:
        emit(report)
        return EXIT_OK
    if report["suspended"]:
        mode = "suspended, storing mail as pending" if report["store"] else "suspended"
        print(f"state:     {mode} since {report['since']}"
              + (f" ({report['reason']})" if report["reason"] else ""))
    else:
        print("state:     not suspended (taking mail wherever a listener accepts)")
    for listener in report["listeners"]:
        print(f"listener:  {listener['protocol']} {listener['address']} "
              f"{'accepting' if listener['accepting'] else 'NOT accepting'}")
    for source in report["sources"]:
        print(f"source:    {source['name']} last success {source['last_success'] or 'never'}"
              + (f", last error {source['last_error_at']}: {source['last_error']}"
                 if source["last_error"] else ""))
    print(f"failed:    {report['failed']}" + ("  (sink messages --status failed; "
                                               "sink replay --all-failed)" if report["failed"]
                                               else ""))
    print(f"pending:   {report['pending']}" + ("  (decided by sink resume)"
                                                if report["pending"] else ""))
    return EXIT_OK


def status_report(config: Config) -> dict:
    from sink.db import schema as t
    from sink.db.source_status import sources as source_rows
    from sink.suspension import read_state
    with engine_for(config).connect() as conn:
        state = read_state(conn)
        counts = dict(conn.execute(select(t.messages.c.status, func.count()).where(
            t.messages.c.status.in_(("failed", "pending"))).group_by(t.messages.c.status)).all())
        sources = [dict(name=r["name"], last_success=_iso(r["last_success"]),
                        last_error=r["last_error"], last_error_at=_iso(r["last_error_at"]))
                   for r in source_rows(conn)]
    return {"suspended": state.suspended, "store": state.suspended and state.store,
            "reason": state.reason, "since": _iso(state.since),
            "listeners": [{"protocol": l.protocol, "address": l.address,
                           "accepting": _accepting(l.host, l.port)} for l in config.listeners],
            "sources": sources, "failed": counts.get("failed", 0),
            "pending": counts.get("pending", 0)}


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _accepting(host: str, port: int) -> bool:
    """Whether something on this machine accepts on the listener's address (an instance of
    this configuration running here)."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False
