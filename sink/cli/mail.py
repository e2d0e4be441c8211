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
        decisions = intake.evaluate_only(raw, box, Envelope("cli", rcpt_tos=(box.address,)))
        for decision, attachments in zip(decisions, _attachments_each(raw, len(decisions))):
            emit(result_json(path, box.address, decision, attachments=attachments))
    return EXIT_OK


def _attachments_each(raw: bytes, count: int) -> list[list[dict]]:
    """The attachments of each message ``check`` decided: a carrier's carried messages, else
    the message itself (as Intake.evaluate_only unwraps)."""
    from sink.mail.attachments import list_attachments
    from sink.mail.parse import parse_message
    from sink.mail.unwrap import unwrap
    carried = unwrap(parse_message(raw)) if count else None
    raws = [inner.raw for inner in carried.inner] if carried else [raw]
    found = [[a.as_json() for a in list_attachments(r).attachments] for r in raws[:count]]
    return found + [[] for _ in range(count - len(found))]


def _stored_attachments(engine, message_id: int) -> list[dict]:
    from sink.db.attachments import as_json, attachments_of
    with engine.connect() as conn:
        return as_json(attachments_of(conn, message_id))


def cmd_ingest(config: Config, args) -> int:
    from sink.intake import Envelope, Intake
    box = config.box(args.box)
    files = read_files(args.files)
    intake = Intake(engine_for(config))
    for path, raw in files:
        for delivery in intake.deliver(raw, Envelope("cli", rcpt_tos=(box.address,)), [box]):
            for d in delivery.processed_messages():
                emit_delivery(path, d,
                              attachments=_stored_attachments(intake.engine, d.message_id))
    return EXIT_OK


def cmd_replay(config: Config, args) -> int:
    """Replay failed messages: one JSON line each (like ingest), each in its own transaction.
    Every ID is checked first (known, failed, its box configured): a bad one replays nothing.
    A message a concurrent replay processed meanwhile is reported on stderr (exit 2)."""
    from sink.intake import Intake
    from sink.intake.replay import ReplayError, candidates
    if args.reprocess:
        return _reprocess(config, args)
    if args.since or args.dry_run:
        raise UsageError("replay: --since and --dry-run go with --reprocess")
    if args.all_failed and args.ids:
        raise UsageError("replay: give message IDs or --all-failed, not both")
    if not args.all_failed and not args.ids:
        raise UsageError("replay: which messages? give message IDs (see `sink messages "
                         "--status failed`) or --all-failed")
    intake = Intake(engine_for(config))
    try:
        ids = candidates(intake, None if args.all_failed else args.ids, config.boxes)
    except ReplayError as exc:
        raise UsageError(str(exc)) from None
    from sink.cli.progress import progress
    with progress("replay", len(ids)) as advance:
        refused = _replay_each(intake, ids, config, advance)
    return EXIT_USAGE if refused else EXIT_OK


def _replay_each(intake, ids: list[int], config: Config, advance) -> int:
    from sink.intake.replay import ReplayError, replay
    refused = 0
    for message_id in ids:
        try:
            delivery = replay(intake, message_id, config.boxes)
        except ReplayError as exc:
            print(f"sink: error: {exc}", file=sys.stderr)
            refused += 1
            continue
        finally:
            advance(1)
        extra = {"id": delivery.message_id, "status": delivery.status, "replayed": True,
                 "attachments": _stored_attachments(intake.engine, delivery.message_id)}
        if delivery.error:
            extra["error"] = delivery.error
        out = result_json(None, delivery.box, delivery.decision, **extra)
        out["verdict"] = delivery.verdict
        emit(out)
    return refused


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
