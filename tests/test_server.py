"""The listeners over real sockets: reply semantics of SPEC 2.1, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import exc as sa_exc, func, select

from sink.db import schema as t
from sink.db.engine import make_engine
from sink.intake import Intake
from sink.pipeline import evaluate
from tests.conftest import with_listener_limits
from tests.support import MailClient, make_mail, wait_for


def count(engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar()


def stored_raw(engine, message_id: str) -> list[bytes]:
    with engine.connect() as conn:
        return list(conn.execute(
            select(t.raw_messages.c.content).join(t.messages,
                                                  t.messages.c.id == t.raw_messages.c.message_id)
            .where(t.messages.c.message_id == message_id)).scalars())


def test_lmtp_replies_once_per_accepted_recipient_in_order(engine, start_server):
    server = start_server()
    client = MailClient(server.lmtp_port)
    assert client.hello()[0] == 250
    raw = make_mail(message_id="<per-rcpt@test>")
    replies = client.send(raw, rcpts=("crm@firma.cz", "stranger@firma.cz", "CRM@firma.cz"))
    client.close()
    codes = [c for c, _ in replies]
    assert codes[:3] == [250, 550, 250]
    assert replies[1][1].startswith("5.1.1")
    assert codes[3:] == [250, 250]          # two accepted RCPTs: two replies after DATA
    assert len(replies) == 5
    assert count(engine, t.messages, t.messages.c.message_id == "<per-rcpt@test>") == 1
    assert count(engine, t.activities) == 1


def test_smtp_replies_once(engine, start_server):
    server = start_server()
    client = MailClient(server.smtp_port)
    assert client.hello(lmtp=False)[0] == 250
    replies = client.send(make_mail(), rcpts=("crm@firma.cz", "crm@firma.cz"), lmtp=False)
    assert [c for c, _ in replies] == [250, 250, 250]
    # the session goes on after DATA: a second transaction on the same connection
    assert client.send(make_mail(), lmtp=False)[-1][0] == 250
    client.close()
    assert count(engine, t.messages) == 2


def test_foreign_recipient_refused_at_rcpt(engine, start_server):
    server = start_server()
    client = MailClient(server.lmtp_port)
    client.hello()
    replies = client.send(make_mail(), rcpts=("alice@firma.cz",))
    client.close()
    assert replies[0][0] == 550 and replies[0][1].startswith("5.1.1")
    assert count(engine, t.messages) == 0


def test_resend_of_identical_bytes_is_stored_once(engine, start_server):
    server = start_server()
    client = MailClient(server.lmtp_port)
    client.hello()
    raw = make_mail()
    first = client.send(raw)[-1]
    second = client.send(raw)[-1]
    client.close()
    assert first[0] == second[0] == 250
    assert "already stored" in second[1]
    assert count(engine, t.messages) == 1 and count(engine, t.activities) == 1


def test_same_message_via_another_copy_is_duplicate(engine, start_server):
    server = start_server()
    client = MailClient(server.lmtp_port)
    client.hello()
    raw = make_mail(message_id="<copy@test>")
    assert client.send(raw)[-1][0] == 250
    # a forwarded copy: other bytes (a Received header in front), same message
    assert client.send(b"Received: from x by y; Mon, 2 Nov 2026 10:00:01 +0000\r\n" + raw)[-1][0] \
        == 250
    client.close()
    with engine.connect() as conn:
        verdicts = sorted(conn.execute(select(t.messages.c.verdict)).scalars())
    assert verdicts == ["DUPLICATE", "PROCESSED"]
    assert count(engine, t.activities) == 1


def test_database_unreachable_answers_451(config, start_server):
    dead = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    server = start_server(Intake(dead))
    client = MailClient(server.lmtp_port)
    client.hello()
    code, text = client.send(make_mail())[-1]
    client.close()
    assert code == 451 and text.startswith("4.3.0")


def test_failure_mid_transaction_answers_451_and_leaves_nothing(engine, start_server):
    from sink.executor import apply

    def apply_then_lose_database(conn, message_id, decision, directory):
        apply(conn, message_id, decision, directory)   # activities written ...
        raise sa_exc.OperationalError("INSERT", {}, Exception("server closed the connection"))
    server = start_server(Intake(engine, executor=apply_then_lose_database))
    client = MailClient(server.lmtp_port)
    client.hello()
    code, text = client.send(make_mail())[-1]
    client.close()
    assert code == 451 and text.startswith("4.3.0")
    # ... and rolled back with the message: nothing half-written
    assert count(engine, t.messages) == 0
    assert count(engine, t.raw_messages) == 0
    assert count(engine, t.activities) == 0


def test_out_of_space_answers_452(engine, start_server):
    import sqlite3

    def full(*args, **kwargs):
        raise sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError(
            "database or disk is full"))
    server = start_server(Intake(engine, executor=full))
    client = MailClient(server.lmtp_port)
    client.hello()
    code, text = client.send(make_mail())[-1]
    client.close()
    assert code == 452 and text.startswith("4.3.1")
    assert count(engine, t.messages) == 0


def test_rule_that_raises_is_stored_failed_and_answered_250(engine, start_server):
    def rules(msg, box, directory, seen, records=None):
        if "poison" in msg.subject:
            raise ZeroDivisionError("a rule divided by zero")
        return evaluate(msg, box, directory, seen, records)
    server = start_server(Intake(engine, rules=rules))
    client = MailClient(server.lmtp_port)
    client.hello()
    poison = client.send(make_mail(subject="poison pill"))[-1]
    after = client.send(make_mail(subject="an ordinary mail"))[-1]
    client.close()
    assert poison[0] == 250 and "rules failed" in poison[1]
    assert after[0] == 250
    with engine.connect() as conn:
        rows = conn.execute(select(t.messages.c.subject, t.messages.c.status,
                                   t.messages.c.error).order_by(t.messages.c.id)).all()
    assert rows[0].status == "failed" and "ZeroDivisionError" in rows[0].error
    assert rows[1].status == "processed"
    assert count(engine, t.raw_messages) == 2        # the poison message's bytes are kept
    assert count(engine, t.activities) == 1


def test_oversize_message_gets_552_and_session_continues(engine, config, start_server):
    server = start_server(cfg=with_listener_limits(config, max_message_size=10_000))
    client = MailClient(server.lmtp_port)
    client.hello()
    big = make_mail(body="x" * 70 + ("\n" + "y" * 70) * 200)
    code, text = client.send(big)[-1]
    assert code == 552 and text.startswith("5.3.4")
    assert client.send(make_mail())[-1][0] == 250
    client.close()
    assert count(engine, t.messages) == 1


def test_one_line_longer_than_the_size_limit_is_552_not_500(engine, config, start_server):
    server = start_server(cfg=with_listener_limits(config, max_message_size=10_000))
    client = MailClient(server.lmtp_port)
    client.hello()
    code, _ = client.send(b"Subject: long\r\n\r\n" + b"z" * 30_000 + b"\r\n")[-1]
    client.close()
    assert code == 552


def test_smtputf8_message_is_stored_byte_exact(engine, start_server):
    server = start_server()
    client = MailClient(server.lmtp_port)
    _, ehlo = client.hello()
    assert "SMTPUTF8" in ehlo.split("\n")
    raw = ("From: Jiří Novák <jiří@příklad.cz>\r\nTo: alice@firma.cz\r\n"
           "Subject: Objednávka:OBJ-77 žluťoučký kůň\r\nMessage-ID: <utf8@test>\r\n"
           "Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n\r\nDobrý den,\r\n.tečka\r\n").encode()
    replies = client.send(raw, mail_from="jiří@příklad.cz", smtputf8=True)
    client.close()
    assert replies[-1][0] == 250
    assert stored_raw(engine, "<utf8@test>") == [raw]
    with engine.connect() as conn:
        row = conn.execute(select(t.messages)).one()
    assert row.sender == "jiří@příklad.cz" and row.subject.endswith("žluťoučký kůň")


def test_long_lines_are_stored_byte_exact(engine, start_server):
    server = start_server()
    client = MailClient(server.lmtp_port)
    client.hello()
    raw = make_mail(message_id="<long@test>").replace(
        b"\r\n\r\n", b"\r\n\r\n" + b"L" * 5000 + b"\r\n", 1)
    assert client.send(raw)[-1][0] == 250
    client.close()
    assert stored_raw(engine, "<long@test>") == [raw]


def test_client_outside_allowed_networks_is_refused(engine, config, start_server):
    server = start_server(cfg=with_listener_limits(config, allowed_networks=("10.0.0.0/8",)))
    client = MailClient(server.lmtp_port)
    assert client.greeting[0] == 554
    with pytest.raises((ConnectionError, OSError)):
        client.cmd("LHLO x")


def test_too_many_recipients_gets_452(engine, config, start_server):
    cfg = with_listener_limits(config, max_recipients=2)
    server = start_server(cfg=cfg)
    client = MailClient(server.lmtp_port)
    client.hello()
    replies = client.send(make_mail(), rcpts=("crm@firma.cz",) * 3)
    client.close()
    assert [c for c, _ in replies] == [250, 250, 452, 250, 250]


def test_connection_limit_answers_421(engine, config, start_server):
    server = start_server(cfg=with_listener_limits(config, max_connections=1))
    first = MailClient(server.lmtp_port)
    second = MailClient(server.lmtp_port)
    assert first.greeting[0] == 220
    assert second.greeting[0] == 421
    first.close()


def test_unknown_box_config_and_multiple_boxes(engine, db_url, start_server):
    from tests.conftest import config_for
    cfg = config_for(db_url, listeners=[{"protocol": "lmtp", "address": "127.0.0.1:0"}])
    second = dataclasses.replace(cfg.boxes[0], address="crm2@firma.cz")
    cfg = dataclasses.replace(cfg, boxes=cfg.boxes + (second,))
    server = start_server(cfg=cfg)
    client = MailClient(server.lmtp_port)
    client.hello()
    replies = client.send(make_mail(), rcpts=("crm@firma.cz", "crm2@firma.cz"))
    client.close()
    assert [c for c, _ in replies] == [250, 250, 250, 250]
    with engine.connect() as conn:
        boxes = sorted(conn.execute(select(t.messages.c.box)).scalars())
    assert boxes == ["crm2@firma.cz", "crm@firma.cz"]


def test_client_gone_right_after_the_final_dot_still_commits(engine, start_server):
    server = start_server()
    client = MailClient(server.lmtp_port)
    client.hello()
    client.cmd("MAIL FROM:<mta@firma.cz>")
    client.cmd("RCPT TO:<crm@firma.cz>")
    client.cmd("DATA")
    raw = make_mail(message_id="<gone@test>")
    client.sock.sendall(raw + b".\r\n")
    client.sock.close()
    assert wait_for(lambda: count(engine, t.messages, t.messages.c.status == "processed") == 1)
    assert stored_raw(engine, "<gone@test>") == [raw]
    assert count(engine, t.activities) == 1


def test_handler_slower_than_the_session_timeout_finishes_its_commit(engine, config,
                                                                     start_server):
    import time

    def slow_rules(msg, box, directory, seen, records=None):
        time.sleep(1.5)
        return evaluate(msg, box, directory, seen, records)
    server = start_server(Intake(engine, rules=slow_rules),
                          cfg=with_listener_limits(config, timeout=0.5))
    client = MailClient(server.lmtp_port)
    client.hello()
    raw = make_mail(message_id="<slow@test>")
    try:
        client.send(raw)
    except (ConnectionError, OSError):
        pass                            # the session timed out: the MTA will resend
    assert wait_for(lambda: count(engine, t.messages, t.messages.c.status == "processed") == 1)
    # the MTA's resend is recognised, not stored again
    again = MailClient(server.lmtp_port)
    again.hello()
    assert "already stored" in again.send(raw)[-1][1]
    again.close()
    assert count(engine, t.messages) == 1 and count(engine, t.activities) == 1


def test_an_error_of_our_own_is_451_never_500(engine, start_server, monkeypatch):
    from sink.sources.smtp_handler import Handler

    async def broken_rcpt(self, *args):
        raise RuntimeError("bug in the sink")
    monkeypatch.setattr(Handler, "handle_RCPT", broken_rcpt)
    server = start_server()
    client = MailClient(server.lmtp_port)
    client.hello()
    client.cmd("MAIL FROM:<mta@firma.cz>")
    code, text = client.cmd("RCPT TO:<crm@firma.cz>")
    client.close()
    assert code == 451 and text.startswith("4.3.0")


def test_one_log_event_per_message_without_body(engine, tmp_path):
    import json
    from sink.intake import Envelope
    from sink.config import parse_config
    from sink.log import configure
    log_file = tmp_path / "sink.jsonl"
    configure("info", str(log_file))
    try:
        box = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
        raw = make_mail(body="SECRET-BODY-TEXT", subject="Contract:2023-015")
        [delivery] = Intake(engine).deliver(raw, Envelope("lmtp", "m@x.cz", ("crm@firma.cz",)),
                                            [box])
    finally:
        configure("warning")
    events = [json.loads(l) for l in log_file.read_text().splitlines()]
    [event] = [e for e in events if e["event"] == "message.processed"]
    assert event["id"] == delivery.message_id and event["box"] == "crm@firma.cz"
    assert (event["channel"], event["sender"], event["verdict"]) == ("lmtp", "jan@acme.cz",
                                                                    "PROCESSED")
    assert event["activities"] == 1 and event["size"] == len(raw)
    assert event["duration_ms"] > 0 and "timestamp" in event
    assert "SECRET-BODY-TEXT" not in log_file.read_text()


def test_starttls_with_configured_certificate(engine, config, start_server, tmp_path):
    import shutil
    import smtplib
    import ssl
    import subprocess
    from tests.support import require
    require(shutil.which("openssl") is not None, "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=sink.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = start_server(cfg=with_listener_limits(config, tls_cert=str(cert), tls_key=str(key)))
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        smtp.starttls(context=context)
        smtp.ehlo()
        refused = smtp.sendmail("mta@firma.cz", ["crm@firma.cz"], make_mail(
            message_id="<tls@test>"))
    assert refused == {}
    assert count(engine, t.messages, t.messages.c.message_id == "<tls@test>") == 1
