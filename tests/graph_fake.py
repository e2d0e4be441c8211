"""A faithful fake of the Microsoft Entra ID token endpoint and of the Graph endpoints the
calendar sync uses, served over HTTPS (a test CA, tests/graph_tls.py) on 127.0.0.1.

Shapes follow Microsoft's documentation: the OpenID configuration msal reads
(``{authority}/v2.0/.well-known/openid-configuration``), the client-credentials token answer and
its ``invalid_client`` / ``AADSTS7000215`` refusal, ``/users?$filter=``, the ``event`` resource,
``calendarView/delta`` (pages with ``@odata.nextLink``, the last with ``@odata.deltaLink``,
deleted events as ``{"id", "@removed": {"reason": "deleted"}}``), ``410`` with
``SyncStateNotFound`` for a delta token the service dropped, ``429`` with ``Retry-After``,
``404 MailboxNotEnabledForRESTAPI`` for a user without an Exchange Online mailbox, and
``transactionId`` deduplicating a retried POST. A recurring series is stored the way the
calendarView exposes it: a seriesMaster (never listed by calendarView) and its instances.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from tests.graph_fake_model import Tenant

__all__ = ["FakeMicrosoft", "Tenant"]


def _error(status: int, code: str, message: str) -> tuple[int, dict, dict]:
    return status, {}, {"error": {"code": code, "message": message,
                                  "innerError": {"date": _now(), "request-id": str(uuid.uuid4())}}}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeMicrosoft:
    """Start with ``FakeMicrosoft(tmp_path)``; ``authority``, ``graph_url``, ``ca_file`` go
    into ``[calendar]``; ``tenant`` holds the mailboxes and is what a test edits."""

    def __init__(self, directory, tenant: Tenant | None = None):
        from tests.tlsutil import make_test_ca
        ca = make_test_ca(directory)
        self.ca_file, cert, key = ca.ca_file, ca.cert_file, ca.key_file
        self.tenant = tenant or Tenant()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):   # quiet
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = fake.dispatch(self.command, self.path,
                                                         dict(self.headers), body)
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if data:
                    self.send_header("Content-Type", "application/json; odata.metadata=minimal")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.origin = f"https://127.0.0.1:{self.port}"
        self.tenant.graph_base = f"{self.origin}/v1.0"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.requests: list[tuple[str, str]] = []       # (method, path) of every request
        self.throttle_next = 0                          # answer this many Graph calls 429
        self.throttle_status = 429
        self.retry_after = "1"
        # A hook a test sets to hold a request mid-pass (e.g. to kill the client there).
        self.hold: callable | None = None

    @property
    def authority(self) -> str:
        return f"{self.origin}/login"

    @property
    def graph_url(self) -> str:
        return f"{self.origin}/v1.0"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def token_requests(self) -> int:
        return sum(1 for m, p in self.requests if p.endswith("/oauth2/v2.0/token"))

    # -------------------------------------------------------------------------------- routing
    def dispatch(self, method: str, path: str, headers: dict, body: bytes):
        self.requests.append((method, path))
        split = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        if split.path.startswith("/login/"):
            return self._entra(method, split.path, body)
        if not split.path.startswith("/v1.0/"):
            return _error(404, "NotFound", "no such endpoint")
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return (self.throttle_status, {"Retry-After": self.retry_after},
                    {"error": {"code": "TooManyRequests" if self.throttle_status == 429
                               else "ServiceUnavailable",
                               "message": "Please retry again later."}})
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        if not self.tenant.valid_token(auth.removeprefix("Bearer ")):
            return _error(401, "InvalidAuthenticationToken", "Access token validation failure.")
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            return _error(400, "BadRequest", "Unable to read JSON request payload.")
        with self.tenant.lock:
            result = self._graph(method, split.path[len("/v1.0"):], query, headers, payload)
        if self.hold is not None:
            self.hold(method, path, result)
        return result

    def _entra(self, method: str, path: str, body: bytes):
        tenant = self.tenant
        base = f"{self.authority}/{tenant.tenant_id}"
        if method == "GET" and path == f"/login/{tenant.tenant_id}/v2.0/.well-known/openid-configuration":
            return 200, {}, {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                          "private_key_jwt",
                                                          "client_secret_basic"],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token",
                                             "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "request_uri_parameter_supported": False,
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid"],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
            }
        if method == "POST" and path == f"/login/{tenant.tenant_id}/oauth2/v2.0/token":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            return tenant.issue_token(form)
        return _error(404, "NotFound", "no such endpoint")

    def _graph(self, method: str, path: str, query: dict, headers: dict, payload):
        tenant = self.tenant
        if method == "GET" and path == "/users":
            return 200, {}, {"@odata.context": f"{tenant.graph_base}/$metadata#users",
                             "value": tenant.find_users(query.get("$filter", ""))}
        match = re.fullmatch(r"/users/([^/]+)/(calendarView/delta|events)(?:/([^/]+))?", path)
        if match is None:
            return _error(400, "BadRequest", f"Resource not found for the segment '{path}'.")
        user_id, what, event_id = (unquote(g) if g else g for g in match.groups())
        user = tenant.users.get(user_id)
        if user is None:
            return _error(404, "ResourceNotFound",
                          f"Resource '{user_id}' does not exist or one of its queried "
                          "reference-property objects are not present.")
        if not user.get("mailbox", True):
            return _error(404, "MailboxNotEnabledForRESTAPI",
                          "The mailbox is either inactive, soft-deleted, or is hosted "
                          "on-premise.")
        if what == "calendarView/delta":
            return tenant.delta(user_id, query)
        if event_id is None and method == "POST":
            return tenant.create(user_id, payload or {})
        if event_id is None:
            return _error(405, "ErrorInvalidRequest", "list events is not faked")
        if method == "GET":
            return tenant.get(user_id, event_id, query.get("$select"))
        if method == "PATCH":
            return tenant.patch(user_id, event_id, payload or {})
        if method == "DELETE":
            return tenant.delete(user_id, event_id)
        return _error(405, "ErrorInvalidRequest", "method not allowed")
