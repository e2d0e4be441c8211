"""SMTP AUTH for a listener (SPEC 2.1): ``auth_users_file`` of ``user:hash`` lines made by
``sink passwd``, verified in constant time; failures limited per client address.

The hash is hashlib's scrypt (a memory-hard KDF) with a random salt, written
``scrypt$N$r$p$SALT$HASH`` (base64). A password is never stored, logged or echoed; an unknown
user costs the same scrypt as a known one, so timing does not tell which users exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import time
from collections import deque
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1        # ~16 MiB and some 50 ms per check
_SALT_BYTES, _HASH_BYTES = 16, 32
MAX_FAILURES, FAILURE_WINDOW = 5, 300.0             # per client address
MAX_PASSWORD = 1024


class UsersFileError(Exception):
    """``auth_users_file`` cannot be used (the message names the line, never its content)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _kdf(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024,
                          dklen=_HASH_BYTES)


def hash_password(password: str) -> str:
    salt = os.urandom(_SALT_BYTES)
    digest = _kdf(password.encode("utf-8"), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    kind, n, r, p, salt, digest = text.split("$")
    if kind != "scrypt":
        raise ValueError("not an scrypt hash")
    n, r, p = int(n), int(r), int(p)
    if not (2 <= n <= 2 ** 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range")
    return n, r, p, base64.b64decode(salt, validate=True), base64.b64decode(digest,
                                                                            validate=True)


def verify_password(password: bytes, stored: str) -> bool:
    n, r, p, salt, digest = _parse_hash(stored)
    return hmac.compare_digest(_kdf(password, salt, n, r, p), digest)


def load_users(path: str) -> dict[str, str]:
    users: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsersFileError(f"{path}: cannot read: {getattr(error, 'strerror', None) or error}")
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, stored = line.strip().partition(":")
        try:
            if not sep or not user:
                raise ValueError("no user:hash")
            _parse_hash(stored)
        except ValueError:
            raise UsersFileError(f"{path}:{number}: not a user:hash line made by `sink passwd`"
                                 f" (plain-text passwords are refused)") from None
        users[user] = stored
    return users


class FailureLimiter:
    """At most ``limit`` failed AUTH attempts per client address in ``window`` seconds."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW,
                 clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._failures: dict[str, deque] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str) -> deque:
        now = self.clock()
        failures = self._failures.get(address)
        if failures is None:
            return deque()
        while failures and now - failures[0] > self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
        return failures

    def blocked(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address)) >= self.limit

    def failed(self, address: str) -> None:
        with self._lock:
            if len(self._failures) > 100_000:      # bounded, whatever a botnet tries
                self._failures.clear()
            self._failures.setdefault(address, deque()).append(self.clock())


class Authenticator:
    """aiosmtpd's ``authenticator`` callable for one listener (called from the threads of
    ``sink.sources.smtp_protocol.AUTH_CHECKS``: what it shares is locked or atomic)."""

    # an unknown user costs a real scrypt too (same time as a wrong password)
    _DUMMY = hash_password("sink-dummy-password")

    def __init__(self, users_file: str, limiter: FailureLimiter | None = None):
        self.users = load_users(users_file)
        self.limiter = limiter or FailureLimiter()
        # scrypt costs ~50-100 ms of CPU (in a thread of smtp_protocol.AUTH_CHECKS, beside
        # the event loop): a connector that logs in on every connection pays it once; the key
        # is random per process, so the set reveals nothing
        self._key = os.urandom(32)
        self._verified: set[bytes] = set()

    def check(self, login: bytes, password: bytes) -> bool:
        if len(password) > MAX_PASSWORD or len(login) > 256:
            return False
        token = hmac.new(self._key, login + b"\0" + password, hashlib.sha256).digest()
        if token in self._verified:
            return True
        stored = self.users.get(login.decode("utf-8", "replace"))
        ok = verify_password(password, stored or self._DUMMY) and stored is not None
        if ok:
            if len(self._verified) > 1000:
                self._verified.clear()
            self._verified.add(token)
        return ok

    def __call__(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword
        address = session.peer[0] if session.peer else "?"
        if not isinstance(auth_data, LoginPassword) or mechanism not in ("PLAIN", "LOGIN"):
            return AuthResult(success=False, handled=False)
        if self.check(auth_data.login or b"", auth_data.password or b""):
            return AuthResult(success=True, auth_data=auth_data.login)
        self.limiter.failed(address)
        return AuthResult(success=False, handled=False)
