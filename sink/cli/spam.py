"""``sink spam add|remove|list|mark``: the stored spam list (SPEC 6)."""

from __future__ import annotations

from sink.cli.common import EXIT_OK, UsageError, emit, engine_for
from sink.config import Config
from sink.config.checks import ConfigError, addresses


def register(sub) -> None:
    spam = sub.add_parser("spam", help="the stored spam list of a box")
    actions = spam.add_subparsers(dest="spam_command", required=True)
    for name, help_text in (("add", "put addresses on the list"),
                            ("remove", "take addresses off the list")):
        cmd = actions.add_parser(name, help=help_text)
        cmd.add_argument("addresses", nargs="+", metavar="ADDRESS")
        cmd.add_argument("--box", help="box address (default: the first box in the config)")
        cmd.set_defaults(func=cmd_change)
    show = actions.add_parser("list", help="the listed addresses, one JSON object a line")
    show.add_argument("--box", help="only this box")
    show.set_defaults(func=cmd_list)
    mark = actions.add_parser("mark", help="a message's sender onto the list; its ticket and "
                                           "activities deleted")
    mark.add_argument("message_id", type=int, metavar="MESSAGE_ID")
    mark.set_defaults(func=cmd_mark)


def _addresses(values) -> tuple[str, ...]:
    try:
        return addresses("ADDRESS", list(values))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def cmd_change(config: Config, args) -> int:
    from sink.db import spam
    box = config.box(args.box).address
    wanted = _addresses(args.addresses)
    with engine_for(config).begin() as conn:
        if args.spam_command == "add":
            changed = spam.add(conn, box, wanted)
            emit({"box": box, "added": changed,
                  "already_listed": [a for a in wanted if a not in changed]})
        else:
            changed = spam.remove(conn, box, wanted)
            emit({"box": box, "removed": changed,
                  "not_listed": [a for a in wanted if a not in changed]})
    return EXIT_OK


def cmd_list(config: Config, args) -> int:
    from sink.db import spam
    box = config.box(args.box).address if args.box else None
    with engine_for(config).connect() as conn:
        for row in spam.listed(conn, box):
            emit(row)
    return EXIT_OK


def cmd_mark(config: Config, args) -> int:
    from sink.db import spam
    try:
        with engine_for(config).begin() as conn:
            emit(spam.mark(conn, args.message_id))
    except spam.SpamError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK
