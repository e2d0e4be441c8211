"""``sink``: the command line (SPEC section 6). Exit 0 on success, 2 for an unusable argument or
configuration (one line on stderr), 1 when storage is unavailable (try again later).

Each command group is a module of this package with a ``register(subparsers)`` that adds its
parsers and sets ``func``; :data:`COMMAND_MODULES` is the list, in the order ``--help`` shows.
"""

from __future__ import annotations

import os
import sys

from sink.cli import admin, calendar, inspect, mail, operations, passwd, poll, spam
from sink.cli.common import EXIT_TRANSIENT, EXIT_USAGE, Parser, UsageError
from sink.config import ConfigError, load_config

COMMAND_MODULES = (admin, mail, inspect, spam, operations, poll, calendar, passwd)


def build_parser() -> Parser:
    p = Parser(prog="sink", description="Mail-to-CRM intake: every customer e-mail stored and "
               "logged in the CRM.", epilog="`sink COMMAND --help` describes each command. "
               "Start with `sink --config deploy/sink.example.toml db upgrade`.")
    p.add_argument("--config", help="TOML configuration file (default: $SINK_CONFIG)")
    sub = p.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from sink.errors import TransientStorageError, classify
    from sink.log import configure
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:                # `sink` alone: the list of commands
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if not getattr(args, "needs_config", True):     # `sink passwd`: no config file
            return args.func(None, args)
        config = load_config(args.config)
        configure(config.log.level, config.log.file)
        code = args.func(config, args)
        sys.stdout.flush()          # here, where a reader that went away is caught below
        return code
    except BrokenPipeError:
        # `sink show 1 | head`: the reader has what it wanted. Not "storage unavailable";
        # and nothing more may reach the closed pipe (not even at the interpreter's exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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
