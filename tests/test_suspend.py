"""Suspend and resume (SPEC 7): 451 4.3.2 within a second, --store keeps mail pending, resume
decides it in arrival order exactly once - in one process, across two `sink serve` instances
on PostgreSQL, against a second resume and after a kill -9."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from sink.db import schema as t
from sink.intake import Envelope, Intake
from tests.conftest import config_for
from tests.ops_support import RunningApp, sink_cli
from tests.support import MailClient, make_mail, wait_for, write_config


@pytest.fixture
def served(engine, db_url, tmp_path):
    """A running app on ``db_url`` and a config file for the CLI on the same database."""
    config = config_for(db_url, listeners=[{"protocol": "lmtp", "address": "127.0.0.1:0"}])
    path = tmp_path / "sink.toml"
    write_config(path, db_url, 1)
    running = RunningApp(config, engine)
    yield running, path
    running.stop()


def statuses(engine) -> list[tuple[int, str, str | None]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(
            t.messages.c.id, t.messages.c.status, t.messages.c.verdict).where(
            t.messages.c.parent_id.is_(None)).order_by(t.messages.c.id))]


def mail_from_reply(port: int) -> tuple[int, str]:
    client = MailClient(port)
    client.hello()
    try:
        return client.cmd("MAIL FROM:<mta@firma.cz>")
    finally:
        client.close()


def test_suspend_answers_451_432_within_a_second_and_resume_takes_mail_again(served, engine):
    running, path = served
    assert running.app.suspension.last_read is not None
    client = MailClient(running.port)
    client.hello()
    assert client.cmd("MAIL FROM:<mta@firma.cz>")[0] == 250    # a transaction already open
    code, out, _ = sink_cli(path, "suspend", "--reason", "CRM upgrade")
    assert code == 0 and '"suspended": true' in out
    began = time.monotonic()
    assert wait_for(lambda: running.app.suspension.active, 1.5)
    assert time.monotonic() - began < 1.0
    code, text = client.cmd("RCPT TO:<crm@firma.cz>")           # RCPT of the open one
    assert (code, text.split()[0]) == (451, "4.3.2"), text
    client.close()
    assert mail_from_reply(running.port)[0] == 451
    code, out, _ = sink_cli(path, "status", "--json")
    assert '"suspended": true' in out and "CRM upgrade" in out
    text = sink_cli(path, "status")[1]
    assert "state:     suspended since" in text and "(CRM upgrade)" in text
    assert "+00:00 (CRM upgrade)" in text       # UTC, said so (SQLite's is naive)
    assert "failed:    0" in text and "pending:   0" in text
    assert sink_cli(path, "resume")[0] == 0
    assert wait_for(lambda: not running.app.suspension.active, 1.5)
    client = MailClient(running.port)
    client.hello()
    assert client.send(make_mail(subject="after resume"))[-1][0] == 250
    client.close()
    assert [s for _, s, _ in statuses(engine)] == ["processed"]


def test_store_keeps_mail_pending_and_resume_decides_it_in_arrival_order(served, engine):
    running, path = served
    sink_cli(path, "suspend", "--store")
    assert wait_for(lambda: running.app.suspension.store, 1.5)
    original = make_mail(subject="Offer", message_id="<offer-1@acme.cz>")
    copy = b"X-Forwarded-Copy: yes\r\n" + original      # other bytes, same Message-ID
    client = MailClient(running.port)
    client.hello()
    for raw in (original, copy, make_mail(subject="Other")):
        code, text = client.send(raw)[-1]
        assert code == 250 and "stored as #" in text
    client.close()
    assert [(s, v) for _, s, v in statuses(engine)] == [("pending", None)] * 3
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.activities)).scalar() == 0
    code, out, _ = sink_cli(path, "status", "--json")
    assert '"pending": 3' in out and '"store": true' in out
    code, out, _ = sink_cli(path, "resume")
    assert code == 0 and '"decided": 3' in out and '"resumed": true' in out
    assert [v for _, _, v in statuses(engine)] == ["PROCESSED", "DUPLICATE", "PROCESSED"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.activities)).scalar() == 2
    code, out, _ = sink_cli(path, "resume")     # again: nothing left, nothing twice
    assert '"decided": 0' in out
    assert wait_for(lambda: not running.app.suspension.active, 1.5)


def test_a_message_kept_pending_after_the_resume_is_decided_by_the_instance(served, engine):
    """An instance may store a message as pending after `resume` lifted the state (it reads
    the row twice a second): it decides such stragglers itself once it sees the change."""
    from sink.suspension import STRAGGLER_DELAY
    running, path = served
    sink_cli(path, "suspend", "--store")
    assert wait_for(lambda: running.app.suspension.store, 1.5)
    client = MailClient(running.port)
    client.hello()
    assert client.send(make_mail(subject="straggler"))[-1][0] == 250
    client.close()
    assert [s for _, s, _ in statuses(engine)] == ["pending"]
    with engine.begin() as conn:      # lifted as by a resume that did not see this message
        conn.execute(t.operation_state.update().values(suspended=False, store=False))
    assert wait_for(lambda: [s for _, s, _ in statuses(engine)] == ["processed"],
                    STRAGGLER_DELAY + 5)


def test_pending_carrier_is_unwrapped_on_resume(engine, db_url):
    from email.message import EmailMessage
    from sink.suspension import resume
    inner = make_mail(subject="Carried", message_id="<c1@acme.cz>")
    outer = EmailMessage()
    outer["From"] = "alice@firma.cz"
    outer["To"] = "crm@firma.cz"
    outer["Subject"] = "> forwarded mail"
    # a wrapper is unwrapped only from an authenticated user (SPEC 2.3), judged again on resume
    outer["Authentication-Results"] = "mx.firma.cz; dkim=pass header.d=firma.cz"
    outer.set_content("see attached")
    outer.add_attachment(inner, maintype="message", subtype="rfc822")
    config = config_for(db_url, trusted_authserv_ids=["mx.firma.cz"])
    intake = Intake(engine)
    held = intake.deliver(outer.as_bytes(), Envelope("cli", hold=True,
                                                     rcpt_tos=("crm@firma.cz",)), config.boxes)
    assert [d.status for d in held] == ["pending"]
    done = resume(engine, config.boxes)
    assert done.decided == 1
    rows = statuses(engine)
    assert rows[0][1:] == ("processed", "UNWRAPPED")
    with engine.connect() as conn:
        child = conn.execute(select(t.messages.c.status, t.messages.c.channel).where(
            t.messages.c.parent_id == rows[0][0])).all()
    assert child == [("processed", "cli")]


# ------------------------------------------------------------- real instances on PostgreSQL
from tests.support import SinkProcess, free_port  # noqa: E402


def hold(engine, count: int) -> None:
    """``count`` distinct messages stored pending, as `suspend --store` leaves them."""
    from sink.config import parse_config
    config = parse_config({"boxes": [{"address": "crm@firma.cz"}]})
    intake = Intake(engine)
    for n in range(count):
        intake.deliver(make_mail(subject=f"held {n}", message_id=f"<held-{n}@acme.cz>"),
                       Envelope("lmtp", hold=True, rcpt_tos=("crm@firma.cz",)), config.boxes)


def resume_process(path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sink", "--config", str(path), "resume"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def decided_once_in_order(engine) -> None:
    with engine.connect() as conn:
        rows = conn.execute(select(t.messages.c.id, t.messages.c.status,
                                   t.messages.c.processed_at).order_by(t.messages.c.id)).all()
        per_message = dict(conn.execute(select(t.activities.c.message_id, func.count())
                                        .group_by(t.activities.c.message_id)).all())
    assert {r.status for r in rows} == {"processed"}
    assert all(per_message.get(r.id) == 1 for r in rows), per_message   # once, not twice
    times = [r.processed_at for r in rows]
    assert times == sorted(times)                                       # arrival order


@pytest.mark.postgres
def test_two_instances_obey_suspend_within_a_second_and_after_a_restart(pg_engine, tmp_path):
    url = pg_engine.url.render_as_string(hide_password=False)
    sinks, paths = [], []
    try:
        for i in range(2):
            port = free_port()
            paths.append(tmp_path / f"sink{i}.toml")
            write_config(paths[-1], url, port)
            sinks.append(SinkProcess(paths[-1], port))
        status = json.loads(sink_cli(paths[0], "status", "--json")[1])
        assert status["listeners"] == [{"protocol": "lmtp", "address": f"127.0.0.1:"
                                        f"{sinks[0].port}", "accepting": True}]
        assert sink_cli(paths[0], "suspend")[0] == 0
        began = time.monotonic()
        for sink in sinks:
            assert wait_for(lambda: mail_from_reply(sink.port)[0] == 451, 2)
        assert time.monotonic() - began < 1.5
        sinks[1].stop()                                  # a restart keeps the suspension
        sinks[1] = SinkProcess(paths[1], sinks[1].port)
        code, text = mail_from_reply(sinks[1].port)
        assert (code, text.split()[0]) == (451, "4.3.2")
        assert sink_cli(paths[1], "suspend", "--store")[0] == 0
        for n, sink in enumerate(sinks):
            assert wait_for(lambda: mail_from_reply(sink.port)[0] == 250, 2)
            client = MailClient(sink.port)
            client.hello()
            assert client.send(make_mail(subject=f"kept {n}"))[-1][0] == 250
            client.close()
        assert [s for _, s, _ in statuses(pg_engine)] == ["pending", "pending"]
        code, out, _ = sink_cli(paths[0], "resume")
        assert code == 0 and '"decided": 2' in out
        decided_once_in_order(pg_engine)
        for sink in sinks:
            assert wait_for(lambda: mail_from_reply(sink.port)[0] == 250, 2)
    finally:
        for sink in sinks:
            sink.stop()


@pytest.mark.postgres
def test_two_resumes_at_once_decide_each_message_once_in_order(pg_engine, tmp_path):
    url = pg_engine.url.render_as_string(hide_password=False)
    path = tmp_path / "sink.toml"
    write_config(path, url, free_port())
    sink_cli(path, "suspend", "--store")
    hold(pg_engine, 120)
    procs = [resume_process(path) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    decided = [json.loads(out.splitlines()[-1])["decided"] for out, _ in outs]
    assert sum(decided) == 120, decided
    decided_once_in_order(pg_engine)
    assert '"suspended": false' in sink_cli(path, "status", "--json")[1]


@pytest.mark.postgres
def test_resume_killed_half_way_is_finished_by_the_next_resume(pg_engine, tmp_path):
    url = pg_engine.url.render_as_string(hide_password=False)
    path = tmp_path / "sink.toml"
    write_config(path, url, free_port())
    sink_cli(path, "suspend", "--store")
    hold(pg_engine, 300)

    def processed() -> int:
        with pg_engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(t.messages).where(
                t.messages.c.status == "processed")).scalar()
    proc = resume_process(path)
    assert wait_for(lambda: processed() >= 20, 60)
    proc.kill()                                            # kill -9 in the middle
    proc.communicate(timeout=10)
    left = 300 - processed()
    assert left > 0, "the resume finished before it was killed: hold more messages"
    status = sink_cli(path, "status", "--json")[1]
    assert '"suspended": true' in status and f'"pending": {left}' in status
    code, out, _ = sink_cli(path, "resume")
    assert code == 0 and f'"decided": {left}' in out
    decided_once_in_order(pg_engine)


def test_status_shows_sources_and_counts(engine, db_url, tmp_path):
    from datetime import datetime, timezone
    from sink.db.source_status import record_error, record_success
    path = tmp_path / "sink.toml"
    write_config(path, db_url, 1)
    ok = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
    with engine.begin() as conn:
        record_success(conn, "imap-office", ok)
        record_error(conn, "imap-office", "login refused\x00 by server")
        record_success(conn, "eml-drop")
    report = json.loads(sink_cli(path, "status", "--json")[1])
    by_name = {s["name"]: s for s in report["sources"]}
    assert set(by_name) == {"imap-office", "eml-drop"}
    assert by_name["imap-office"]["last_success"].startswith("2026-12-01T09:00:00")
    assert by_name["imap-office"]["last_error"] == "login refused\ufffd by server"
    assert by_name["eml-drop"]["last_error"] is None
    text = sink_cli(path, "status")[1]
    assert "source:    imap-office last success 2026-12-01" in text and "login refused" in text


def test_a_message_the_rules_fail_on_at_resume_is_logged_and_mailed(engine, monkeypatch):
    """Found in review: a held message that failed its rules on resume left one
    `message.resumed` line without the error, and no error mail (SPEC 7: "a message stored
    failed (its id and error)")."""
    from sink import suspension
    from sink.config import parse_config
    from sink.operations import Ops
    from sink.pipeline import chain as chain_module
    box = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
    [held] = Intake(engine).deliver(make_mail(subject="held"),
                                    Envelope("lmtp", "mta@firma.cz", hold=True), [box])
    assert held.status == "pending"

    def boom(ctx):
        raise RuntimeError("rule exploded")
    monkeypatch.setattr(chain_module, "chain_for",
                        lambda box, own=(): (chain_module.Rule("boom", boom),))
    import structlog
    failed = []
    with structlog.testing.capture_logs() as logged:
        done = suspension.resume(engine, [box], on_failed=failed.append)
    assert done.failed == 1 and [(d.message_id, d.status) for d in failed] == [
        (held.message_id, "failed")]
    said = [e for e in logged if e["event"] == "message.failed"]
    assert len(said) == 1 and "rule exploded" in said[0]["error"], logged
    assert said[0]["id"] == held.message_id and said[0]["log_level"] == "error"
    # in `sink serve` the suspension's failures go to the error mails
    ops = Ops(suspension.Suspension(engine, [box]))
    assert ops.suspension.on_failed == ops._failed
