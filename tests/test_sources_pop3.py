"""POP3 source against a real Dovecot: exact bytes once, DELE after commit, keep by UIDL,
too-large messages, STARTTLS, refused login."""

from __future__ import annotations

from tests.sources_support import (BOX, USER, message_count, pop3_source, run_poll, stored_raws,
                                   write_config)
from tests.support import make_mail


def test_300_messages_taken_once_with_exact_bytes_then_deleted(dovecot, engine, db_url,
                                                                tmp_path):
    # dot-stuffing and a line far over poplib's own 2,048-octet limit survive the round trip
    sent = [make_mail(subject=f"pop {i}", body=f".leading dot {i}\n..two\n" + "z" * 3000)
            for i in range(300)]
    for raw in sent:
        dovecot.drop(USER, raw)
    cfg = write_config(tmp_path / "sink.toml", db_url, [pop3_source(dovecot, tmp_path / "pw")])
    code, lines = run_poll(cfg)
    assert code == 0, lines
    assert lines == [{"source": 0, "kind": "pop3", "box": BOX, "fetched": 300, "stored": 300,
                      "already_stored": 0, "removed": 300, "skipped": 0, "errors": []}]
    assert sorted(stored_raws(engine, "pop3")) == sorted(sent)
    assert dovecot.files(USER) == []
    assert run_poll(cfg)[1][0]["fetched"] == 0


def test_keep_mode_remembers_uidls_across_runs(dovecot, engine, db_url, tmp_path):
    for raw in (make_mail(subject="a"), make_mail(subject="b")):
        dovecot.drop(USER, raw)
    cfg = write_config(tmp_path / "sink.toml", db_url, [pop3_source(
        dovecot, tmp_path / "pw", after="keep")])
    assert run_poll(cfg)[1][0]["stored"] == 2
    dovecot.drop(USER, make_mail(subject="c"))
    code, lines = run_poll(cfg)
    assert (lines[0]["fetched"], lines[0]["stored"], lines[0]["removed"]) == (1, 1, 0)
    assert len(dovecot.files(USER)) == 3 and message_count(engine) == 3


def test_too_large_stays_and_starttls_verifies(dovecot, engine, db_url, tmp_path):
    small, big = make_mail(subject="small"), make_mail(subject="big", body="q" * 5000)
    dovecot.drop(USER, small)
    dovecot.drop(USER, big)
    cfg = write_config(tmp_path / "sink.toml", db_url, [pop3_source(
        dovecot, tmp_path / "pw", tls="starttls", host="localhost", max_message_size=2000,
        ca_file=str(dovecot.tls.ca_file))])
    code, lines = run_poll(cfg)
    assert (lines[0]["stored"], lines[0]["skipped"], lines[0]["removed"]) == (1, 1, 1), lines
    assert dovecot.contents(USER) == [big] and stored_raws(engine) == [small]


def test_refused_login_keeps_everything(dovecot, engine, db_url, tmp_path, capfd):
    dovecot.drop(USER, make_mail())
    source = pop3_source(dovecot, tmp_path / "pw", tls="ssl", port=dovecot.ports["pop3s"],
                         host="localhost", ca_file=str(dovecot.tls.ca_file))
    (tmp_path / "pw").write_text("not-the-Password-7\n")
    code, lines = run_poll(write_config(tmp_path / "sink.toml", db_url, [source]))
    assert code == 1 and lines[0]["errors"][0].startswith("LoginRefused:")
    out, err = capfd.readouterr()
    assert "not-the-Password-7" not in out + err + repr(lines)
    assert len(dovecot.files(USER)) == 1 and message_count(engine) == 0
