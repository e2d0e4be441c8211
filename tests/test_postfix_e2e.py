"""End to end with a real Postfix configured from deploy/postfix/ and a real ``sink serve``.

Mail is submitted over SMTP to a private Postfix instance (tests/postfix_harness.py); its
``always_bcc`` copy travels over LMTP to the sink, exactly as in production. Every process is
started here and stopped in a fixture finalizer, also when a test fails; all traffic stays on
127.0.0.1 and Postfix discards the mail for everyone but the sink.
"""

from __future__ import annotations

import re
import socket
import threading
import uuid
from typing import Callable

import pytest

from sink.sources import replies as sink_replies
from tests.postfix_harness import (DEPLOY, SNIPPET, PostfixInstance, SinkProcess,
                                   read_main_cf, running_postfix, wait_until)
from tests.support import DIRECTORY, free_port, make_mail

DELIVERY_TIMEOUT = 60


@pytest.fixture(scope="session")
def postfix(request):
    with running_postfix(keep=lambda: request.session.testsfailed) as instance:
        yield instance


@pytest.fixture
def sink(postfix, tmp_path):
    """A prepared (schema, directory) but not yet started sink on the port Postfix delivers to."""
    postfix.purge()     # no leftovers of an earlier test reach this test's sink
    process = SinkProcess(tmp_path, box=postfix.box, lmtp_port=postfix.sink_port,
                          directory=DIRECTORY)
    try:
        process.prepare()
        yield process
    finally:
        process.stop()


def context(postfix: PostfixInstance, sink: SinkProcess) -> Callable[[], str]:
    return lambda: f"{postfix.diagnostics()}\n{sink.diagnostics()}"


def new_mail(subject_prefix: str) -> tuple[bytes, str, str]:
    subject = f"{subject_prefix} {uuid.uuid4().hex[:10]}"
    message_id = f"<{uuid.uuid4().hex}@acme.cz>"
    raw = make_mail(sender="Jan <jan@acme.cz>", to=("Alice <alice@firma.cz>",), subject=subject,
                    body="Dobrý den,\nposílám nabídku na web.\nJan", message_id=message_id)
    return raw, subject, message_id


def subject_line(raw: bytes) -> bytes:
    """The Subject header as submitted (RFC 2047-encoded: the subject is Czech)."""
    line = re.search(rb"^Subject: [^\r\n]+\r\n", raw, re.M)[0]
    assert b"=?utf-8?" in line.lower(), line
    return line


def logged(postfix: PostfixInstance, queue_id: str, recipient: str, status: str,
           diagnostics) -> list[str]:
    """Postfix's log lines for one queued message and recipient with ``status=STATUS``.

    Polls: the daemons log through postlogd (datagrams), so a line can reach the file a moment
    after the queue already shows the delivery's outcome."""
    def lines():
        return [line for line in postfix.delivery_lines(queue_id, recipient)
                if f"status={status}" in line]
    return wait_until(lines, DELIVERY_TIMEOUT,
                      f"Postfix to log {queue_id}: to=<{recipient}> ... status={status}",
                      diagnostics)


def wait_for_rows(sink: SinkProcess, message_id: str, count: int, diagnostics) -> list[dict]:
    return wait_until(lambda: (rows := sink.rows(message_id)) and len(rows) >= count and rows,
                      DELIVERY_TIMEOUT, f"{count} stored message(s) with {message_id}",
                      diagnostics)


def wait_for_empty_queue(postfix: PostfixInstance, diagnostics) -> None:
    wait_until(lambda: not postfix.queue(), DELIVERY_TIMEOUT, "Postfix's queue to drain",
               diagnostics)


@pytest.mark.postfix
def test_always_bcc_copy_is_stored_and_becomes_an_activity(postfix, sink):
    why = context(postfix, sink)
    sink.start()
    raw, subject, message_id = new_mail("Nabídka")

    queue_id = postfix.submit(raw, "jan@acme.cz", ["alice@firma.cz"])

    rows = wait_for_rows(sink, message_id, 1, why)
    wait_for_empty_queue(postfix, why)
    rows = sink.rows(message_id)
    assert len(rows) == 1, f"{rows}\n{why()}"
    row = rows[0]
    assert (row["status"], row["verdict"], row["channel"], row["box"], row["activities"]) == \
        ("processed", "PROCESSED", "lmtp", postfix.box, 1), f"{row}\n{why()}"
    assert row["subject"] == subject and row["sender"] == "jan@acme.cz", row

    # The stored bytes are what Postfix delivered: its Received header for this queue id on top
    # of exactly the submitted message.
    stored = sink.raw(row["id"])
    assert subject_line(raw) in stored
    assert re.search(rb"by " + re.escape(postfix.hostname.encode()) + rb" \(Postfix\) with E?SMTP"
                     rb" id " + queue_id.encode(), stored), stored[:600]
    assert stored.endswith(raw), stored[-600:]

    detail = sink.detail(row["id"])
    assert detail["mail_from"] == "jan@acme.cz"
    assert detail["rcpt_to"] == [postfix.box]
    assert len(detail["activities"]) == 1, detail
    activity = detail["activities"][0]
    assert (activity["responsible"], activity["direction"], activity["contacts"],
            activity["companies"]) == ("alice@firma.cz", "incoming", ["jan@acme.cz"], ["ACME"]), \
        activity
    shown = sink.show(row["id"])
    assert "responsible=alice@firma.cz" in shown and "contacts: jan@acme.cz" in shown, shown

    # Postfix logged the sink's reply for the copy: sent, with the stored id.
    sent = logged(postfix, queue_id, postfix.box, "sent", why)
    assert len(sent) == 1 and f"250 2.0.0 Ok: stored as #{row['id']})" in sent[0], \
        f"{sent}\n{why()}"
    # ... and the employee's own copy never left the machine (discarded by the test instance).
    alice = logged(postfix, queue_id, "alice@firma.cz", "sent", why)
    assert all("relay=none" in line and "never leaves the machine" in line
               for line in alice), alice


@pytest.mark.postfix
def test_copy_waits_in_the_queue_while_the_sink_is_down_and_is_stored_once(postfix, sink):
    why = context(postfix, sink)
    raw, subject, message_id = new_mail("Objednávka")

    queue_id = postfix.submit(raw, "jan@acme.cz", ["alice@firma.cz"])

    def deferred_copy():
        for entry in postfix.queue():
            if entry["queue_id"] == queue_id and entry["queue_name"] == "deferred":
                return entry
        return None
    entry = wait_until(deferred_copy, DELIVERY_TIMEOUT, f"{queue_id} in the deferred queue", why)
    # Only the sink's copy waits; the employee's copy was delivered.
    assert [r["address"] for r in entry["recipients"]] == [postfix.box], entry
    assert "connection refused" in entry["recipients"][0].get("delay_reason", "").lower(), entry
    deferred = logged(postfix, queue_id, postfix.box, "deferred", why)
    assert "Connection refused" in deferred[0], deferred
    assert sink.rows(message_id) == []

    sink.start()
    postfix.flush()

    wait_for_rows(sink, message_id, 1, why)
    wait_for_empty_queue(postfix, why)
    rows = sink.rows(message_id)        # the queue is empty: no further copy can arrive
    assert len(rows) == 1, f"{rows}\n{why()}"
    assert (rows[0]["verdict"], rows[0]["activities"]) == ("PROCESSED", 1), rows
    assert subject_line(raw) in sink.raw(rows[0]["id"])
    sent = logged(postfix, queue_id, postfix.box, "sent", why)
    assert len(sent) == 1 and f"stored as #{rows[0]['id']})" in sent[0], f"{sent}\n{why()}"


@pytest.mark.postfix
def test_second_copy_of_a_message_is_a_duplicate_without_a_second_activity(postfix, sink):
    why = context(postfix, sink)
    sink.start()
    raw, subject, message_id = new_mail("Faktura")

    first_qid = postfix.submit(raw, "jan@acme.cz", ["alice@firma.cz"])
    wait_for_rows(sink, message_id, 1, why)
    second_qid = postfix.submit(raw, "jan@acme.cz", ["alice@firma.cz"])
    rows = wait_for_rows(sink, message_id, 2, why)
    wait_for_empty_queue(postfix, why)

    rows = sink.rows(message_id)
    assert [(r["verdict"], r["activities"]) for r in rows] == \
        [("PROCESSED", 1), ("DUPLICATE", 0)], f"{rows}\n{why()}"
    # Two deliveries with different bytes (each has its own Received header): the Message-ID,
    # not the byte hash, made the second one a duplicate.
    first, second = (sink.raw(r["id"]) for r in rows)
    assert first != second and first.endswith(raw) and second.endswith(raw)
    assert first_qid.encode() in first and second_qid.encode() in second
    assert sum(m["activities"] for m in sink.messages()) == 1
    for queue_id, row in ((first_qid, rows[0]), (second_qid, rows[1])):
        sent = logged(postfix, queue_id, postfix.box, "sent", why)
        assert len(sent) == 1 and f"stored as #{row['id']})" in sent[0], f"{sent}\n{why()}"


@pytest.mark.postfix
def test_copies_arriving_at_the_same_time_are_processed_once(postfix, sink):
    why = context(postfix, sink)
    sink.start()
    raw, subject, message_id = new_mail("Reklamace")
    copies = 4

    for _ in range(copies):
        postfix.submit(raw, "jan@acme.cz", ["alice@firma.cz"])
    wait_for_rows(sink, message_id, copies, why)
    wait_for_empty_queue(postfix, why)

    rows = sink.rows(message_id)
    assert sorted(r["verdict"] for r in rows) == ["DUPLICATE"] * (copies - 1) + ["PROCESSED"], \
        f"{rows}\n{why()}"
    assert sum(r["activities"] for r in rows) == 1, rows


@pytest.mark.postfix
def test_deploy_files_are_what_the_instance_runs(postfix):
    """The snippet's settings are live, without unknown-parameter warnings, and the tables
    resolve as the README says."""
    result = postfix.postconf("-n")
    assert b"warning" not in result.stderr, result.stderr.decode()
    for key, value in postfix.deployed_settings().items():
        live = postfix.postconf("-h", key).stdout.decode().strip()
        assert live == value, (key, live, value)
    assert postfix.postmap_query(postfix.box, "transport") == \
        f"lmtp:inet:127.0.0.1:{postfix.sink_port}"
    assert postfix.postmap_query("@firma.cz", "bcc_maps") == postfix.box
    snippet = read_main_cf(SNIPPET)
    assert snippet["transport_maps"] == "hash:/etc/postfix/transport"


def test_postfix_readme_lists_every_reply_the_sink_gives():
    codes = re.findall(r"``(\d{3} \d\.\d\.\d)``", sink_replies.__doc__)
    assert len(codes) >= 8, codes
    readme = (DEPLOY / "README.md").read_text("utf-8")
    missing = [code for code in dict.fromkeys(codes) if f"`{code}" not in readme]
    assert not missing, f"deploy/postfix/README.md does not explain {missing}"


class Recorder:
    """A relay on ``port`` to the sink on ``to``: what the client sent, one entry per read."""

    def __init__(self, port: int, to: int):
        self.to, self.reads, self.threads = to, [], []
        self.listening = socket.create_server(("127.0.0.1", port))
        self.listening.settimeout(0.2)
        self.stopping = threading.Event()
        self._start(self._accept)

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listening.accept()
            except TimeoutError:
                continue
            sink = socket.create_connection(("127.0.0.1", self.to))
            self._start(self._pump, client, sink, True)
            self._start(self._pump, sink, client, False)

    def _pump(self, source, target, record: bool) -> None:
        with source:
            try:
                while data := source.recv(65536):
                    if record:
                        self.reads.append(data)
                    target.sendall(data)
                target.shutdown(socket.SHUT_WR)
            except OSError:         # the other side is gone (the sink stopped first)
                pass

    def stop(self) -> None:
        self.stopping.set()
        self.threads[0].join(5)     # the accepting thread, before its socket goes
        self.listening.close()


@pytest.mark.postfix
def test_postfix_pipelines_its_lmtp_commands_and_the_copy_is_stored(postfix, tmp_path):
    """The sink offers PIPELINING (RFC 2033 5), so Postfix's LMTP client sends MAIL, RCPT and
    DATA in one write and reads their replies after it: one round trip per message instead of
    three. Seen through a relay in front of the sink: in lock-step no read of the relay could
    hold two commands, as Postfix waits for each reply."""
    postfix.purge()
    sink = SinkProcess(tmp_path, box=postfix.box, lmtp_port=free_port(), directory=DIRECTORY)
    relay = Recorder(postfix.sink_port, sink.lmtp_port)
    try:
        sink.prepare()
        sink.start()
        why = context(postfix, sink)
        raw, _, message_id = new_mail("Pipelining")
        postfix.submit(raw, "jan@acme.cz", ["alice@firma.cz"])
        rows = wait_for_rows(sink, message_id, 1, why)
        wait_for_empty_queue(postfix, why)
        assert len(rows) == 1 and rows[0]["status"] == "processed", f"{rows}\n{why()}"
        groups = [read for read in relay.reads if read.startswith(b"MAIL FROM:")]
        assert groups, relay.reads
        assert all(re.fullmatch(rb"MAIL FROM:<[^>]*>[^\r\n]*\r\nRCPT TO:<%s>[^\r\n]*\r\n"
                                rb"DATA\r\n" % re.escape(postfix.box.encode()), group)
                   for group in groups), groups
    finally:
        sink.stop()
        relay.stop()
