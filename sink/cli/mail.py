"""Mail from the command line: ``check``, ``ingest``, ``replay``."""

from __future__ import annotations

import sys

from sink.cli.common import (EXIT_OK, EXIT_USAGE, UsageError, day, emit_delivery, emit,
                             engine_for, read_files, result_json)
from sink.config import Config


def register(sub) -> None:
    for name, help_text, func in (
            ("check", "evaluate .eml files without writing anything", cmd_check),
            ("ingest", "process .eml files and commit them", cmd_ingest)):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--box", help="box address (default: the first box in the config)")
        cmd.add_argument("files", nargs="+", metavar="FILE.eml")
        cmd.set_defaults(func=func)
    replay = sub.add_parser("replay", help="run the rules again on failed messages, once each")
    replay.add_argument("ids", type=int, nargs="*", metavar="ID")
    replay.add_argument("--all-failed", action="store_true",
                        help="every message whose status is failed, oldest first")
    replay.add_argument("--reprocess", action="store_true",
                        help="today's rules and directory again on processed messages; their "
                             "records replaced")
    replay.add_argument("--since", type=day, help="--reprocess: received on or after this day "
                                                  "(YYYY-MM-DD)")
    replay.add_argument("--dry-run", action="store_true",
                        help="--reprocess: print before/after, write nothing")
    replay.set_defaults(func=cmd_replay)


def cmd_check(config: Config, args) -> int:
    from sink.intake import Envelope, Intake
    box = config.box(args.box)
    files = read_files(args.files)
    intake = Intake(engine_for(config))
    for path, raw in files:
        for decision in intake.evaluate_only(raw, box, Envelope("cli", rcpt_tos=(box.address,))):
            emit(result_json(path, box.address, decision))
    return EXIT_OK


def cmd_ingest(config: Config, args) -> int:
    from sink.intake import Envelope, Intake
    box = config.box(args.box)
    files = read_files(args.files)
    intake = Intake(engine_for(config))
    for path, raw in files:
        for delivery in intake.deliver(raw, Envelope("cli", rcpt_tos=(box.address,)), [box]):
            for d in delivery.processed_messages():
                emit_delivery(path, d)
    return EXIT_OK


def cmd_replay(config: Config, args) -> int:
    """Replay failed messages: one JSON line each (like ingest), each in its own transaction.
    Every ID is checked first (known, failed, its box configured): a bad one replays nothing.
    A message a concurrent replay processed meanwhile is reported on stderr (exit 2)."""
    from sink.intake import Intake
    from sink.intake.replay import ReplayError, candidates, replay
    if args.reprocess:
        return _reprocess(config, args)
    if args.since or args.dry_run:
        raise UsageError("replay: --since and --dry-run go with --reprocess")
    if args.all_failed == bool(args.ids):
        raise UsageError("replay: give message IDs or --all-failed (not both)")
    intake = Intake(engine_for(config))
    try:
        ids = candidates(intake, None if args.all_failed else args.ids, config.boxes)
    except ReplayError as exc:
        raise UsageError(str(exc)) from None
    refused = 0
    for message_id in ids:
        try:
            delivery = replay(intake, message_id, config.boxes)
        except ReplayError as exc:
            print(f"sink: error: {exc}", file=sys.stderr)
            refused += 1
            continue
        extra = {"id": delivery.message_id, "status": delivery.status, "replayed": True}
        if delivery.error:
            extra["error"] = delivery.error
        out = result_json(None, delivery.box, delivery.decision, **extra)
        out["verdict"] = delivery.verdict
        emit(out)
    return EXIT_USAGE if refused else EXIT_OK


def _reprocess(config: Config, args) -> int:
    """``replay --reprocess ID… [--since DAY] [--dry-run]``: one JSON line per message,
    ``{"id", "before", "after"}``, each in its own transaction."""
    from sink.intake import Intake
    from sink.intake.replay import ReplayError
    from sink.intake.reprocess import candidates, reprocess
    if args.all_failed:
        raise UsageError("replay: --reprocess takes processed messages, not --all-failed")
    if not args.ids and args.since is None:
        raise UsageError("replay --reprocess: give message IDs or --since DAY")
    intake = Intake(engine_for(config))
    try:
        ids = candidates(intake, args.ids, args.since, config.boxes)
    except ReplayError as exc:
        raise UsageError(str(exc)) from None
    refused = 0
    for message_id in ids:
        try:
            emit(reprocess(intake, message_id, config.boxes, dry_run=args.dry_run))
        except ReplayError as exc:
            print(f"sink: error: {exc}", file=sys.stderr)
            refused += 1
    return EXIT_USAGE if refused else EXIT_OK
