"""5. LMTP with several recipients (RFC 2033): exactly one reply per accepted RCPT, in RCPT
order, each box its own transaction — so when one box's storage is away only that recipient is
deferred, and the MTA's retry (Postfix retries only the recipients that got a 4xx) stores it
once without touching what was already stored."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest
from sqlalchemy import exc as sa_exc, func, select

from sink.db import schema as t
from sink.intake import Intake
from tests.conftest import config_for
from tests.support import MailClient, make_mail


@pytest.fixture
def flaky_box(engine):
    """Storage fails for one box's messages (a transient database error in the middle of its
    transaction) while ``state["down"]`` is set; the other box's storage works. The Intake
    with that executor is ``state["intake"]``."""
    from sink.executor import apply as real_apply
    state = {"box": "crm2@firma.cz", "down": True, "failures": 0}

    def apply(conn, message_id, decision, directory):
        if state["down"] and conn.execute(select(t.messages.c.box).where(
                t.messages.c.id == message_id)).scalar() == state["box"]:
            state["failures"] += 1
            raise sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError(
                "disk I/O error"))
        return real_apply(conn, message_id, decision, directory)
    state["intake"] = Intake(engine, executor=apply)
    return state


def two_box_config(db_url, protocol="lmtp"):
    cfg = config_for(db_url, listeners=[{"protocol": protocol, "address": "127.0.0.1:0"}])
    second = dataclasses.replace(cfg.boxes[0], address="crm2@firma.cz")
    return dataclasses.replace(cfg, boxes=cfg.boxes + (second,))


def rows_by_box(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(t.messages.c.box, func.count())
                                 .group_by(t.messages.c.box)).all())


def activities_by_box(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(
            select(t.messages.c.box, func.count()).select_from(t.activities)
            .join(t.messages, t.messages.c.id == t.activities.c.message_id)
            .group_by(t.messages.c.box)).all())


def test_one_reply_per_rcpt_in_order_and_only_the_deferred_are_retried(engine, db_url,
                                                                    start_server, flaky_box):
    server = start_server(flaky_box["intake"], cfg=two_box_config(db_url))
    raw = make_mail(message_id="<multi@test>")
    rcpts = ("crm@firma.cz", "crm2@firma.cz", "stranger@elsewhere.org", "CRM@firma.cz",
             "crm2@firma.cz")
    client = MailClient(server.lmtp_port)
    client.hello()
    replies = client.send(raw, rcpts=rcpts)
    assert [c for c, _ in replies[:5]] == [250, 250, 550, 250, 250]
    data = replies[5:]
    # four accepted RCPTs: exactly four replies, in RCPT order (crm, crm2, crm, crm2); a
    # repeated RCPT gets the same reply as its first mention
    assert len(data) == 4, data
    assert data[0] == data[2] and data[1] == data[3], data
    assert data[1][0] == 451 and data[1][1].startswith("4.3.0")      # crm2's storage is away
    assert data[0][0] in (250, 451)    # crm: stored, or deferred with the whole batch
    stored = {"crm@firma.cz": 1} if data[0][0] == 250 else {}
    assert rows_by_box(engine) == stored                 # a 250 is committed, a 451 is not
    # the MTA retries only the recipients that got a 4xx, once the storage is back
    flaky_box["down"] = False
    deferred = [r for r, (code, _) in zip(("crm@firma.cz", "crm2@firma.cz"), data[:2])
                if code == 451]
    retry = client.send(raw, rcpts=deferred)
    client.close()
    assert [c for c, _ in retry] == [250] * (2 * len(deferred)), retry
    assert not any("already" in text for _, text in retry[len(deferred):])   # first storing
    assert rows_by_box(engine) == {"crm@firma.cz": 1, "crm2@firma.cz": 1}
    assert activities_by_box(engine) == {"crm@firma.cz": 1, "crm2@firma.cz": 1}
    # a careless MTA that retries every recipient changes nothing either
    client = MailClient(server.lmtp_port)
    client.hello()
    again = client.send(raw, rcpts=("crm@firma.cz", "crm2@firma.cz"))
    client.close()
    assert [c for c, _ in again] == [250, 250, 250, 250]
    assert all("already stored" in text for _, text in again[2:])
    assert rows_by_box(engine) == {"crm@firma.cz": 1, "crm2@firma.cz": 1}
    assert flaky_box["failures"] >= 1


def test_smtp_with_one_box_deferred_answers_4xx_and_the_retry_stores_each_once(
        engine, db_url, start_server, flaky_box):
    server = start_server(flaky_box["intake"], cfg=two_box_config(db_url, "smtp"))
    raw = make_mail(message_id="<multi-smtp@test>")
    client = MailClient(server.smtp_port)
    client.hello(lmtp=False)
    replies = client.send(raw, rcpts=("crm@firma.cz", "crm2@firma.cz"), lmtp=False)
    # SMTP has one reply for the transaction: not everything is stored, so 4xx (never 250)
    assert [c for c, _ in replies] == [250, 250, 451]
    flaky_box["down"] = False
    retry = client.send(raw, rcpts=("crm@firma.cz", "crm2@firma.cz"), lmtp=False)
    client.close()
    assert retry[-1][0] == 250
    assert rows_by_box(engine) == {"crm@firma.cz": 1, "crm2@firma.cz": 1}
    assert activities_by_box(engine) == {"crm@firma.cz": 1, "crm2@firma.cz": 1}
