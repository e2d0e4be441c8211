"""The application's Graph token: msal's client-credentials flow, cached and renewed by msal.

A refused secret (revoked, expired, wrong) is logged once and then not tried again until the
secret file changes or ``retry_after`` seconds have passed: every user of a pass needs the same
token, so one refusal stops the pass instead of becoming one login per user per pass (a login
storm that Entra ID would answer by locking the application out).
"""

from __future__ import annotations

import hashlib
import threading
import time

import msal
import requests

from sink.config.calendar import CalendarConfig
from sink.log import get_logger

log = get_logger("sink.calendar.token")

SCOPES = ["https://graph.microsoft.com/.default"]


class _Session(requests.Session):
    """requests has no session-wide timeout, and msal sets none on a session it is given:
    without one, a token endpoint that stops answering would hang the pass for ever."""

    timeout = 30.0

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, **kwargs)


class TokenError(Exception):
    """No token. ``refused``: Entra ID said no (fix the secret); else a transient failure."""

    def __init__(self, message: str, *, refused: bool):
        super().__init__(message)
        self.refused = refused


def _describe(result: dict) -> str:
    # error_description carries trace and correlation ids and a timestamp after its first
    # line; the first line (e.g. "AADSTS7000215: Invalid client secret provided. ...") is
    # what an admin needs. It never contains the secret itself.
    first = str(result.get("error_description") or "").splitlines()
    text = first[0] if first else ""
    return f"{result.get('error', 'error')}: {text[:300]}".strip()


class TokenProvider:
    def __init__(self, config: CalendarConfig, *, retry_after: float = 900.0,
                 session: requests.Session | None = None, clock=time.monotonic):
        self.config = config
        self.retry_after = retry_after
        self.clock = clock
        self.session = session or _Session()
        if config.ca_file is not None:
            self.session.verify = str(config.ca_file)
            # requests lets $REQUESTS_CA_BUNDLE override a session's verify: a configured CA
            # must be the one used, so the environment is not consulted.
            self.session.trust_env = False
        self._lock = threading.Lock()
        self._app: msal.ConfidentialClientApplication | None = None
        self._secret_digest: str | None = None
        self._refused: tuple[str, str, float] | None = None   # (digest, message, when)

    def _application(self, secret: str, digest: str) -> msal.ConfidentialClientApplication:
        if self._app is None or digest != self._secret_digest:
            self._app = msal.ConfidentialClientApplication(
                self.config.client_id, client_credential=secret,
                authority=self.config.authority_url, http_client=self.session,
                # The authority is configured, not discovered: no call to Microsoft's
                # instance-discovery endpoint (which also lets the test fake stand in).
                instance_discovery=False)
            self._secret_digest = digest
        return self._app

    def token(self) -> str:
        """An access token for Graph; raises TokenError."""
        with self._lock:
            try:
                secret = self.config.read_secret()
            except Exception as exc:            # ConfigError: unreadable secret file
                if not self._refused or self._refused[1] != str(exc):
                    log.error("calendar.secret_unreadable", reason=str(exc))
                self._refused = ("", str(exc), self.clock())
                raise TokenError(str(exc), refused=True) from None
            digest = hashlib.sha256(secret.encode()).hexdigest()
            if self._refused and self._refused[0] == digest \
                    and self.clock() - self._refused[2] < self.retry_after:
                raise TokenError(self._refused[1], refused=True)
            try:
                result = self._application(secret, digest).acquire_token_for_client(SCOPES)
            except (requests.RequestException, ValueError, RuntimeError) as exc:
                self._app = None            # rediscover the authority next time
                log.warning("calendar.token_unavailable", reason=type(exc).__name__)
                raise TokenError(f"token endpoint unavailable: {type(exc).__name__}",
                                 refused=False) from None
            if "access_token" in result:
                if self._refused:
                    log.info("calendar.token_accepted_again")
                self._refused = None
                return result["access_token"]
            message = f"Entra ID refused the client credentials ({_describe(result)})"
            if not self._refused or self._refused[1] != message:
                log.error("calendar.token_refused", reason=message)
            self._refused = (digest, message, self.clock())
            raise TokenError(message, refused=True)

    def invalidate(self, token: str) -> None:
        """Graph answered 401 to ``token``: drop it from msal's cache so the next call logs in."""
        with self._lock:
            if self._app is None:
                return
            cache = self._app.token_cache
            for item in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                if item.get("secret") == token:
                    cache.remove_at(item)
