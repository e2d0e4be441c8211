"""Microsoft 365 mailbox access: a token from Microsoft Entra ID through msal's client
credentials flow, sent to IMAP/POP3 as SASL XOAUTH2.

msal keeps the token in its cache and answers from it until shortly before expiry (then asks
Entra ID again): one token request per hour, not one per poll. A refused secret raises
:class:`TokenRefused` with Entra's error code and the first line of its description - never
the secret, never the token.
"""

from __future__ import annotations

import base64
import threading

import msal

from sink.config.sources import OAuthConfig
from sink.sources.poller import LoginRefused


class TokenRefused(LoginRefused):
    """Entra ID refused to issue a token (wrong or expired secret, unknown app, no consent):
    like a refused login, retried only after a whole interval."""


def xoauth2(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response (before base64)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def xoauth2_b64(user: str, token: str) -> str:
    return base64.b64encode(xoauth2(user, token).encode()).decode("ascii")


class TokenSource:
    """Access tokens for one app registration; thread-safe (sources poll in threads)."""

    def __init__(self, oauth: OAuthConfig, http_client=None):
        self.oauth = oauth
        self.http_client = http_client
        self._app = None
        self._lock = threading.Lock()

    def _application(self):
        if self._app is None:
            official = self.oauth.authority == "https://login.microsoftonline.com"
            self._app = msal.ConfidentialClientApplication(
                self.oauth.client_id,
                client_credential=self.oauth.client_secret.reveal(),
                authority=f"{self.oauth.authority}/{self.oauth.tenant_id}",
                token_cache=msal.TokenCache(),
                http_client=self.http_client,
                # another authority (a national cloud, a test) is taken as configured
                validate_authority=official,
                instance_discovery=official,
            )
        return self._app

    def token(self) -> str:
        """A valid access token (from msal's cache when it is not about to expire)."""
        with self._lock:
            try:
                result = self._application().acquire_token_for_client(
                    scopes=[self.oauth.scope])
            except ValueError as exc:      # msal: the authority's metadata was unusable
                self._app = None
                raise TokenRefused(f"token endpoint unusable: {str(exc)[:200]}") from None
        if "access_token" not in result:
            error = str(result.get("error", "unknown_error"))[:80]
            description = str(result.get("error_description", "")).splitlines()
            first = description[0][:200] if description else ""
            raise TokenRefused(f"token refused by Entra ID: {error}: {first}".rstrip(": "))
        return result["access_token"]
