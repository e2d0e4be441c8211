"""``sink passwd USER``: print ``USER:HASH`` for a listener's ``auth_users_file`` (SPEC 2.1).

The password is read from the terminal (asked twice, not echoed) or, when stdin is not a
terminal, from its first line; it is never an argument (argument lists are visible to every
user of the machine). Needs no configuration file.
"""

from __future__ import annotations

import getpass
import sys

from sink.cli.common import EXIT_OK, UsageError


def register(sub) -> None:
    p = sub.add_parser("passwd", help="hash a password for a listener's auth_users_file")
    p.add_argument("user")
    p.set_defaults(func=cmd_passwd, needs_config=False)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            raise UsageError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_passwd(_config, args) -> int:
    from sink.sources.auth import MAX_PASSWORD, hash_password
    user = args.user
    if not user or ":" in user or any(c.isspace() or ord(c) < 32 for c in user):
        raise UsageError("USER: no colon, space or control character")
    password = _read_password()
    if not password:
        raise UsageError("empty password")
    if len(password.encode()) > MAX_PASSWORD:
        raise UsageError(f"password longer than {MAX_PASSWORD} bytes")
    print(f"{user}:{hash_password(password)}")
    return EXIT_OK
