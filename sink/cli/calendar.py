"""``sink calendar sync [--user EMAIL] [--json]``: one synchronisation pass (SPEC 7)."""

from __future__ import annotations

from sink.cli.common import EXIT_OK, EXIT_TRANSIENT, UsageError, emit, engine_for
from sink.config import Config

STANDING = {"ok", "not-in-tenant", "no-mailbox", "busy"}    # nothing to retry soon


def register(sub) -> None:
    calendar = sub.add_parser("calendar", help="Office 365 calendar sync").add_subparsers(
        dest="calendar_command", required=True)
    sync = calendar.add_parser("sync", help="one pass: Outlook -> CRM, then CRM -> Outlook")
    sync.add_argument("--user", help="only this user (e-mail or alias)")
    sync.add_argument("--json", action="store_true", help="one JSON object per user")
    sync.set_defaults(func=cmd_calendar_sync)


def cmd_calendar_sync(config: Config, args) -> int:
    from sink.calendar.service import make_syncer
    if config.calendar is None:
        raise UsageError("calendar: no [calendar] section in the configuration")
    engine = engine_for(config)
    syncer = make_syncer(config.calendar, engine)
    try:
        reports = syncer.run(args.user)
    finally:
        syncer.graph.close()
    if args.user and not reports:
        raise UsageError(f"--user {args.user}: no such user in the directory")
    for report in reports:
        if args.json:
            emit(report.as_json())
        else:
            detail = f" ({report.error})" if report.error else ""
            print(f"{report.user}: {report.status}{' full' if report.full_sync else ''} "
                  f"pulled {_counts(report.pulled)} pushed {_counts(report.pushed)} "
                  f"conflicts {report.conflicts}{detail}")
    for report in reports:
        if report.status == "token-refused":     # a configuration problem: exit 2
            raise UsageError(f"calendar: {report.error}")
    return EXIT_OK if all(r.status in STANDING for r in reports) else EXIT_TRANSIENT


def _counts(counts: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in counts.items() if v) or "-"
