"""The Microsoft Graph endpoints the calendar sync uses, over httpx.

Every answer is hostile until parsed: bodies are capped, JSON must be an object, paging links
must stay on the configured Graph origin (a link elsewhere would be sent our bearer token).
Throttling (429, 503, 504) is waited out as ``Retry-After`` says, up to a bound; a delta token
Graph no longer knows (410) is :class:`SyncStateGone`, which the sync answers with a full
resync.
"""

from __future__ import annotations

import json
import ssl
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Iterator
from urllib.parse import quote, urlsplit

import httpx

from sink.calendar.token import TokenProvider
from sink.log import get_logger

log = get_logger("sink.calendar.graph")

MAX_BODY = 16 * 1024 * 1024           # bytes of one response we are willing to hold
MAX_PAGES = 5000                      # pages of one delta round
RETRYABLE = {429, 503, 504}
EVENT_FIELDS = ("id,changeKey,iCalUId,type,seriesMasterId,originalStart,recurrence,subject,"
                "location,start,end,isAllDay,isCancelled,organizer,attendees,"
                "lastModifiedDateTime,transactionId")


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str = ""):
        super().__init__(f"Graph answered {status} {code}: {message[:200]}".rstrip(": "))
        self.status, self.code = status, code


class SyncStateGone(GraphError):
    """410: the delta token expired; start over with a full synchronisation."""


class Throttled(GraphError):
    """Still throttled after the retries we allow in one pass."""


class MailboxUnavailable(GraphError):
    """The user exists but has no Exchange Online mailbox (or it is disabled)."""


MAILBOX_CODES = {"MailboxNotEnabledForRESTAPI", "MailboxNotSupportedForRESTAPI",
                 "ErrorMailboxNotEnabled"}


def _retry_after(response: httpx.Response, attempt: int, cap: float) -> float:
    """Seconds to wait: Retry-After as seconds or an HTTP date, else exponential back-off."""
    value = response.headers.get("Retry-After", "")[:100]
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError, IndexError, OverflowError):
            seconds = min(2.0 ** attempt, 30.0)
    if seconds != seconds:                      # NaN
        seconds = cap
    return max(0.0, min(seconds, cap))


class GraphClient:
    def __init__(self, base_url: str, tokens: TokenProvider, *, ca_file=None,
                 sleep=time.sleep, max_retries: int = 6, max_wait: float = 120.0,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None):
        self.base = base_url.rstrip("/")
        split = urlsplit(self.base)
        self.origin = (split.scheme, split.netloc.lower())
        self.tokens = tokens
        self.sleep = sleep
        self.max_retries, self.max_wait = max_retries, max_wait
        self.http = httpx.Client(timeout=timeout, transport=transport,
                                 verify=ssl.create_default_context(cafile=str(ca_file))
                                 if ca_file else True,
                                 follow_redirects=False, trust_env=False)
        self.throttled = 0                  # 429/503 answers waited out, for the pass report

    def close(self) -> None:
        self.http.close()

    # ----------------------------------------------------------------------------- transport
    def _check_origin(self, url: str) -> None:
        split = urlsplit(url)
        if (split.scheme, split.netloc.lower()) != self.origin:
            raise GraphError(0, "ForeignLink", "a link outside the configured Graph origin")

    def request(self, method: str, url: str, *, body: dict | None = None,
                headers: dict | None = None) -> dict | None:
        """The JSON object Graph answered (None for 204); raises GraphError."""
        url = url if url.startswith("https://") else self.base + url
        self._check_origin(url)
        renewed = False
        for attempt in range(self.max_retries + 1):
            token = self.tokens.token()
            sent = {"Authorization": f"Bearer {token}", "Accept": "application/json",
                    **(headers or {})}
            status, hdrs, data = self._send(method, url, sent, body)
            if status == 401 and not renewed:
                self.tokens.invalidate(token)    # revoked or expired early: log in once more
                renewed = True
                continue
            if status in RETRYABLE and attempt < self.max_retries:
                wait = _retry_after(hdrs, attempt, self.max_wait)
                self.throttled += 1
                log.info("calendar.throttled", status=status, wait=wait)
                self.sleep(wait)
                continue
            return self._answer(status, data)
        raise AssertionError("unreachable")

    def _send(self, method, url, headers, body):
        try:
            with self.http.stream(method, url, headers=headers,
                                  content=None if body is None else json.dumps(body),
                                  ) as response:
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise GraphError(response.status_code, "ResponseTooLarge",
                                         f"more than {MAX_BODY} bytes")
                    chunks.append(chunk)
                return response.status_code, response, b"".join(chunks)
        except httpx.HTTPError as exc:
            raise GraphError(0, "Unreachable", type(exc).__name__) from None

    @staticmethod
    def _answer(status: int, data: bytes) -> dict | None:
        parsed = None
        if data:
            try:
                parsed = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                parsed = None
        if 200 <= status < 300:
            if status == 204 or not data:
                return None
            if not isinstance(parsed, dict):
                raise GraphError(status, "BadResponse", "expected a JSON object")
            return parsed
        error = parsed.get("error") if isinstance(parsed, dict) else None
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or "")[:100]
        message = str(error.get("message") or "")[:300]
        if status == 410:
            raise SyncStateGone(status, code or "SyncStateNotFound", message)
        if status in RETRYABLE:
            raise Throttled(status, code or "TooManyRequests", message)
        if code in MAILBOX_CODES:
            raise MailboxUnavailable(status, code, message)
        raise GraphError(status, code or "Error", message)

    # ----------------------------------------------------------------------------- endpoints
    def find_user(self, addresses: list[str]) -> dict | None:
        """The tenant's user whose mail or an SMTP proxy address is one of ``addresses``."""
        for address in addresses:
            a = address.replace("'", "''")
            query = (f"mail eq '{a}' or proxyAddresses/any(p:p eq 'smtp:{a}')")
            answer = self.request("GET", "/users?$select=id,mail,userPrincipalName"
                                  f"&$filter={quote(query, safe='')}")
            found = [u for u in (answer or {}).get("value", []) if isinstance(u, dict)
                     and isinstance(u.get("id"), str)]
            if found:
                return found[0]
        return None

    def delta_start(self, user_id: str, start: str, end: str) -> str:
        return (f"{self.base}/users/{quote(user_id, safe='')}/calendarView/delta"
                f"?startDateTime={quote(start)}&endDateTime={quote(end)}")

    def delta_pages(self, url: str) -> Iterator[tuple[list[dict], str | None]]:
        """The pages of one delta round: (events, deltaLink or None until the last page)."""
        headers = {"Prefer": 'outlook.timezone="UTC", odata.maxpagesize=100'}
        for _ in range(MAX_PAGES):
            page = self.request("GET", url, headers=headers) or {}
            events = [e for e in page.get("value", []) if isinstance(e, dict)
                      and isinstance(e.get("id"), str)] \
                if isinstance(page.get("value"), list) else []
            next_link, delta_link = page.get("@odata.nextLink"), page.get("@odata.deltaLink")
            if isinstance(delta_link, str):
                self._check_origin(delta_link)
                yield events, delta_link
                return
            if not isinstance(next_link, str):
                raise GraphError(200, "BadResponse", "a delta page without a next or delta link")
            yield events, None
            url = next_link
        raise GraphError(200, "TooManyPages", f"more than {MAX_PAGES} delta pages")

    def _event_url(self, user_id: str, event_id: str | None = None) -> str:
        url = f"/users/{quote(user_id, safe='')}/events"
        return url if event_id is None else f"{url}/{quote(event_id, safe='')}"

    def get_series_master(self, user_id: str, event_id: str) -> dict | None:
        """A series master with the dates of its cancelled occurrences (Graph returns
        ``cancelledOccurrences`` only when selected, only on a GET of a master), or None."""
        try:
            return self.request("GET", self._event_url(user_id, event_id)
                                + f"?$select={EVENT_FIELDS},cancelledOccurrences",
                                headers={"Prefer": 'outlook.timezone="UTC"'})
        except GraphError as exc:
            if exc.status == 404 and not isinstance(exc, MailboxUnavailable):
                return None
            raise

    def create_event(self, user_id: str, body: dict) -> dict:
        return self.request("POST", self._event_url(user_id), body=body,
                            headers={"Content-Type": "application/json",
                                     "Prefer": 'outlook.timezone="UTC"'}) or {}

    def update_event(self, user_id: str, event_id: str, body: dict) -> dict | None:
        """The updated event, or None when it no longer exists in Outlook."""
        try:
            return self.request("PATCH", self._event_url(user_id, event_id), body=body,
                                headers={"Content-Type": "application/json",
                                         "Prefer": 'outlook.timezone="UTC"'}) or {}
        except GraphError as exc:
            if exc.status == 404 and not isinstance(exc, MailboxUnavailable):
                return None
            raise

    def delete_event(self, user_id: str, event_id: str) -> None:
        try:
            self.request("DELETE", self._event_url(user_id, event_id))
        except GraphError as exc:
            if exc.status != 404 or isinstance(exc, MailboxUnavailable):  # gone: as wanted
                raise
