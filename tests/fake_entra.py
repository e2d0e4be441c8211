"""A fake Microsoft Entra ID for one tenant, over HTTPS with a test CA, speaking what msal's
client-credentials flow really calls and answers as Entra does:

- ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (msal's tenant discovery);
- ``POST /{tenant}/oauth2/v2.0/token`` with ``grant_type=client_credentials``, ``client_id``,
  ``client_secret`` and ``scope``: ``{"token_type": "Bearer", "expires_in": ..., "access_token"}``
  or, for a wrong or expired secret, 401 ``{"error": "invalid_client", "error_description":
  "AADSTS7000215: ..."}`` (AADSTS7000222 for an expired one);
- ``POST /introspect`` (``token=...``, RFC 7662): what Dovecot's oauth2 passdb asks -
  ``{"active": true, "username": ...}`` for a token it issued and that has not expired.
  (Exchange Online validates its tokens itself; this endpoint stands in for that check.)
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from tests.tlsutil import TestCA

SCOPE = "https://outlook.office365.com/.default"


class FakeEntra:
    def __init__(self, tls: TestCA, tenant: str, client_id: str, secret: str, user: str):
        self.tenant, self.client_id, self.secret, self.user = tenant, client_id, secret, user
        self.expires_in = 3599
        self.secret_expired = False
        self.token_requests = 0
        self.refused = 0
        self.introspections = 0
        self.tokens: dict[str, float] = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------------- answers
    def metadata(self) -> dict:
        base = f"{self.url}/{self.tenant}"
        return {"token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{self.url}/{self.tenant}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                          "private_key_jwt"],
                "response_types_supported": ["code", "id_token", "token"]}

    def token(self, form: dict) -> tuple[int, dict]:
        with self.lock:
            self.token_requests += 1
        if form.get("grant_type") != "client_credentials":
            return 400, _error("unsupported_grant_type", "AADSTS70003: grant type")
        if form.get("client_id") != self.client_id:
            return 400, _error("unauthorized_client", "AADSTS700016: Application with "
                               f"identifier '{form.get('client_id')}' was not found")
        if form.get("client_secret") != self.secret or self.secret_expired:
            with self.lock:
                self.refused += 1
            if self.secret_expired:
                return 401, _error("invalid_client", "AADSTS7000222: The provided client "
                                   "secret keys for app are expired.")
            return 401, _error("invalid_client", "AADSTS7000215: Invalid client secret "
                               "provided. Ensure the secret being sent in the request is the "
                               "client secret value, not the client secret ID.")
        if SCOPE not in form.get("scope", "").split():
            return 400, _error("invalid_scope", "AADSTS1002012: The provided value for scope "
                               "is not valid.")
        token = "eyJ0eXAiOiJKV1Qi." + secrets.token_urlsafe(48)
        with self.lock:
            self.tokens[token] = time.time() + self.expires_in
        return 200, {"token_type": "Bearer", "expires_in": self.expires_in,
                     "ext_expires_in": self.expires_in, "access_token": token}

    def introspect(self, form: dict) -> tuple[int, dict]:
        with self.lock:
            self.introspections += 1
            expiry = self.tokens.get(form.get("token", ""))
        if expiry is None or expiry < time.time():
            return 200, {"active": False}
        return 200, {"active": True, "username": self.user, "client_id": self.client_id,
                     "scope": SCOPE, "exp": int(expiry)}


def _error(code: str, description: str) -> dict:
    return {"error": code, "error_description": f"{description}\r\nTrace ID: "
            f"{secrets.token_hex(8)}\r\nTimestamp: {time.strftime('%Y-%m-%d %H:%M:%SZ')}",
            "error_codes": [int(description[6:13]) if description[6:13].isdigit() else 0]}


def _handler(fake: FakeEntra):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _form(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            parsed = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
            return {k: v[0] for k, v in parsed.items()}

        def do_GET(self):
            if self.path.split("?")[0] == f"/{fake.tenant}/v2.0/.well-known/openid-configuration":
                self._send(200, fake.metadata())
            else:
                self._send(404, _error("invalid_tenant", "AADSTS90002: Tenant not found."))

        def do_POST(self):
            path = self.path.split("?")[0]
            if path == f"/{fake.tenant}/oauth2/v2.0/token":
                self._send(*fake.token(self._form()))
            elif path == "/introspect":
                self._send(*fake.introspect(self._form()))
            else:
                self._send(404, {"error": "not_found"})

    return Handler
