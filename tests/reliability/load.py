"""A load generator that behaves like a patient MTA: many parallel LMTP/SMTP sessions, every
reply recorded, and every message that got no reply or a 4xx sent again until it gets a 250."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections import Counter, defaultdict

from sqlalchemy import func, select

from sink.db import schema as t
from tests.support import MailClient, dot_stuff


class LoadClient:
    def __init__(self, port: int, messages: list[bytes], sessions: int, *, lmtp: bool = True,
                 rcpt: str = "crm@firma.cz", patience: float = 30.0, backoff: float = 0.05):
        self.port = port
        self.messages = messages
        self.sessions = sessions
        self.lmtp = lmtp
        self.rcpt = rcpt
        self.patience = patience
        self.backoff = backoff
        self.lock = threading.Lock()
        self.todo = list(range(len(messages)))[::-1]      # pop() takes the lowest first
        self.in_flight: set[int] = set()
        self.acks: dict[int, list[str]] = defaultdict(list)
        self.codes: Counter = Counter()                   # every DATA reply code seen
        self.refusals: list[tuple[int, int, str]] = []    # (index, code, text) of any 5xx
        self.no_reply = 0                                 # DATA sent, connection lost instead
        self.resends = 0                                  # messages sent again
        self.attempts = 0
        self._tried: set[int] = set()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._session, daemon=True, name=f"load-{i}")
                        for i in range(sessions)]

    # ------------------------------------------------------------------------------- control
    def start(self) -> "LoadClient":
        for th in self.threads:
            th.start()
        return self

    def done(self) -> bool:
        with self.lock:
            return len(self.acks) + len({i for i, _, _ in self.refusals}) >= len(self.messages)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.done():
            time.sleep(0.05)
        self.stop.set()
        for th in self.threads:
            th.join(max(1.0, deadline - time.monotonic()))
        return self.done()

    def figures(self) -> dict:
        return {"messages": len(self.messages), "sessions": self.sessions,
                "attempts": self.attempts, "acknowledged": len(self.acks),
                "resends": self.resends, "no_reply": self.no_reply,
                "already_stored_replies": sum("already stored" in text for texts in
                                              self.acks.values() for text in texts),
                "replies": {str(k): v for k, v in sorted(self.codes.items())},
                "refused_5xx": len(self.refusals)}

    # ------------------------------------------------------------------------------- sessions
    def _take(self) -> int | None:
        with self.lock:
            if not self.todo:
                return None
            index = self.todo.pop()
            self.in_flight.add(index)
            if index in self._tried:
                self.resends += 1
            self._tried.add(index)
            self.attempts += 1
            return index

    def _back(self, index: int) -> None:
        with self.lock:
            self.in_flight.discard(index)
            self.todo.append(index)

    def _finish(self, index: int, code: int, text: str) -> None:
        with self.lock:
            self.in_flight.discard(index)
            self.codes[code] += 1
            if code == 250:
                self.acks[index].append(text)
            elif 400 <= code < 500:
                self.todo.insert(0, index)          # deferred: retry later, like an MTA queue
            else:
                self.refusals.append((index, code, text))

    def _connect(self) -> MailClient | None:
        try:
            client = MailClient(self.port, timeout=self.patience)
            if client.greeting[0] != 220:
                client.abort()
                return None
            if client.hello(self.lmtp)[0] != 250:
                client.abort()
                return None
            return client
        except (OSError, ConnectionError, ValueError):
            return None

    def _session(self) -> None:
        client = None
        while not self.stop.is_set():
            if client is None:
                client = self._connect()
                if client is None:
                    time.sleep(self.backoff)
                    continue
            index = self._take()
            if index is None:
                if self.done():
                    break
                time.sleep(self.backoff)
                continue
            try:
                code, text = self._transaction(client, self.messages[index])
            except (OSError, ConnectionError, ValueError):
                # No reply (server killed, connection reset, patience exhausted): the message
                # was not acknowledged, so it is sent again, as an MTA would.
                with self.lock:
                    self.no_reply += 1
                self._back(index)
                try:
                    client.abort()
                except OSError:
                    pass
                client = None
                continue
            self._finish(index, code, text)
            if code != 250:
                time.sleep(self.backoff)
        if client is not None:
            try:
                client.close()
            except OSError:
                pass

    def _transaction(self, client: MailClient, raw: bytes) -> tuple[int, str]:
        for line in ("MAIL FROM:<mta@firma.cz>", f"RCPT TO:<{self.rcpt}>"):
            code, text = client.cmd(line)
            if code != 250:
                client.cmd("RSET")
                return code, text
        code, text = client.cmd("DATA")
        if code != 354:
            return code, text
        payload = dot_stuff(raw)
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        client.sock.sendall(payload + b".\r\n")
        return client.reply()


def stored_by_message_id(engine) -> dict[str, list[dict]]:
    """Every stored message by its Message-ID: rows with sha256, raw bytes, status, verdict and
    how many activities it created."""
    counts = (select(t.activities.c.message_id, func.count().label("n"))
              .group_by(t.activities.c.message_id).subquery())
    m = t.messages.c
    query = (select(m.id, m.message_id, m.sha256, m.status, m.verdict, m.error,
                    t.raw_messages.c.content, func.coalesce(counts.c.n, 0).label("activities"))
             .join(t.raw_messages, t.raw_messages.c.message_id == m.id)
             .outerjoin(counts, counts.c.message_id == m.id))
    found: dict[str, list[dict]] = defaultdict(list)
    with engine.connect() as conn:
        for row in conn.execute(query):
            found[row.message_id].append(dict(row._mapping))
    return found


def audit(engine, messages: list[bytes], message_ids: list[str]) -> dict:
    """Compare what was sent with what is stored: lost, duplicated, damaged, unprocessed."""
    stored = stored_by_message_id(engine)
    lost, duplicated, damaged, unprocessed, records = [], [], [], [], []
    for raw, mid in zip(messages, message_ids):
        rows = stored.get(mid, [])
        if not rows:
            lost.append(mid)
            continue
        if len(rows) > 1:
            duplicated.append(mid)
        row = rows[0]
        if bytes(row["content"]) != raw or row["sha256"] != hashlib.sha256(raw).hexdigest():
            damaged.append(mid)
        if row["status"] != "processed" or row["verdict"] != "PROCESSED":
            unprocessed.append((mid, row["status"], row["verdict"], row["error"]))
        if sum(r["activities"] for r in rows) != 1:
            records.append((mid, [r["activities"] for r in rows]))
    extra = sorted(set(stored) - set(message_ids), key=str)
    return {"lost": lost, "duplicated": duplicated, "damaged": damaged,
            "unprocessed": unprocessed, "records_not_once": records, "unexpected_rows": extra}


def wait_port_free(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return
        time.sleep(0.05)
