"""IMAP source against a real Dovecot: exact bytes once, delete/keep/seen/move, UIDVALIDITY,
too-large messages, TLS verification, refused logins."""

from __future__ import annotations

import os

import pytest

from tests.sources_support import (BOX, USER, imap_source, message_count, run_poll, stored_raws,
                                   write_config)
from tests.support import make_mail


def mails(n: int, tag: str = "m") -> list[bytes]:
    return [make_mail(subject=f"{tag} {i}", body=f"body {i}\n" + "x" * (i % 50))
            for i in range(n)]


def test_300_messages_taken_once_with_exact_bytes_then_deleted(dovecot, engine, db_url,
                                                                tmp_path):
    sent = mails(300)
    for raw in sent:
        dovecot.drop(USER, raw)
    cfg = write_config(tmp_path / "sink.toml", db_url,
                       [imap_source(dovecot, tmp_path / "pw", after="delete")])
    code, lines = run_poll(cfg)
    assert code == 0, lines
    assert lines == [{"source": 0, "kind": "imap", "box": BOX, "fetched": 300, "stored": 300,
                      "already_stored": 0, "removed": 300, "skipped": 0, "errors": []}]
    assert sorted(stored_raws(engine, "imap")) == sorted(sent)
    assert dovecot.files(USER) == []
    code, lines = run_poll(cfg)
    assert lines[0]["fetched"] == 0 and message_count(engine) == 300


def test_keep_mode_remembers_uids_across_runs_and_survives_uidvalidity_change(
        dovecot, engine, db_url, tmp_path):
    first = mails(5, "first")
    for raw in first:
        dovecot.drop(USER, raw)
    cfg = write_config(tmp_path / "sink.toml", db_url,
                       [imap_source(dovecot, tmp_path / "pw", after="keep")])
    assert run_poll(cfg)[1][0]["stored"] == 5
    dovecot.drop(USER, later := make_mail(subject="later"))
    code, lines = run_poll(cfg)         # a new process: state from the database only
    assert (lines[0]["fetched"], lines[0]["stored"], lines[0]["removed"]) == (1, 1, 0)
    assert len(dovecot.files(USER)) == 6
    # the mailbox is rebuilt: new UIDVALIDITY, same mail - fetched again, stored never twice
    dovecot.stop()
    for name in os.listdir(dovecot.maildir(USER)):
        if name.startswith("dovecot"):
            os.remove(dovecot.maildir(USER) / name)
    dovecot.start()
    code, lines = run_poll(cfg)
    assert (lines[0]["fetched"], lines[0]["stored"], lines[0]["already_stored"]) == (6, 0, 6)
    assert message_count(engine) == 6
    assert run_poll(cfg)[1][0]["fetched"] == 0
    assert sorted(stored_raws(engine)) == sorted(first + [later])


def test_seen_mode_flags_only_and_unseen_fetch_skips_them(dovecot, engine, db_url, tmp_path):
    for raw in mails(3):
        dovecot.drop(USER, raw)
    cfg = write_config(tmp_path / "sink.toml", db_url, [imap_source(
        dovecot, tmp_path / "pw", after="seen", fetch="unseen")])
    assert run_poll(cfg)[1][0]["stored"] == 3
    assert dovecot.flags(USER) == ["S", "S", "S"]
    dovecot.drop(USER, make_mail(subject="new"))
    code, lines = run_poll(cfg)
    assert (lines[0]["fetched"], lines[0]["stored"]) == (1, 1)
    assert len(dovecot.files(USER)) == 4 and message_count(engine) == 4


def test_move_mode_moves_into_the_folder_and_reads_several_folders(dovecot, engine, db_url,
                                                                   tmp_path):
    dovecot.maildir(USER, "Done")
    dovecot.maildir(USER, "Other")
    inbox, other = mails(2, "inbox"), mails(2, "other")
    for raw in inbox:
        dovecot.drop(USER, raw)
    for raw in other:
        dovecot.drop(USER, raw, folder="Other")
    cfg = write_config(tmp_path / "sink.toml", db_url, [imap_source(
        dovecot, tmp_path / "pw", after="move:Done", folders=["INBOX", "Other"])])
    code, lines = run_poll(cfg)
    assert (lines[0]["stored"], lines[0]["removed"]) == (4, 4), lines
    assert dovecot.files(USER) == [] and dovecot.files(USER, "Other") == []
    assert sorted(dovecot.contents(USER, "Done")) == sorted(inbox + other)


def test_too_large_message_stays_on_the_server(dovecot, engine, db_url, tmp_path):
    small, big = make_mail(subject="small"), make_mail(subject="big", body="y" * 5000)
    dovecot.drop(USER, small)
    dovecot.drop(USER, big)
    cfg = write_config(tmp_path / "sink.toml", db_url, [imap_source(
        dovecot, tmp_path / "pw", max_message_size=2000)])
    code, lines = run_poll(cfg)
    assert (lines[0]["stored"], lines[0]["skipped"], lines[0]["removed"]) == (1, 1, 1)
    assert dovecot.contents(USER) == [big]
    assert stored_raws(engine) == [small]


@pytest.mark.parametrize("tls", ["ssl", "starttls"])
def test_tls_with_a_private_ca_and_refused_without_it(dovecot, engine, db_url, tmp_path, tls):
    dovecot.drop(USER, raw := make_mail())
    port = dovecot.ports["imaps" if tls == "ssl" else "imap"]
    untrusted = write_config(tmp_path / "a.toml", db_url, [imap_source(
        dovecot, tmp_path / "pw", tls=tls, port=port, host="localhost")])
    code, lines = run_poll(untrusted)
    assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in lines[0]["errors"][0]
    assert len(dovecot.files(USER)) == 1
    trusted = write_config(tmp_path / "b.toml", db_url, [imap_source(
        dovecot, tmp_path / "pw", tls=tls, port=port, host="localhost",
        ca_file=str(dovecot.tls.ca_file))])
    code, lines = run_poll(trusted)
    assert code == 0 and lines[0]["stored"] == 1 and stored_raws(engine) == [raw]


def test_refused_login_is_a_clear_error_without_the_password(dovecot, engine, db_url, tmp_path,
                                                             capfd):
    dovecot.drop(USER, make_mail())
    source = imap_source(dovecot, tmp_path / "pw")
    (tmp_path / "pw").write_text("wrong-Password-42\n")
    cfg = write_config(tmp_path / "sink.toml", db_url, [source])
    code, lines = run_poll(cfg)
    assert code == 1
    assert lines[0]["errors"][0].startswith("LoginRefused: login refused for crm@firma.cz")
    out, err = capfd.readouterr()
    assert "wrong-Password-42" not in out + err + repr(lines)
    assert len(dovecot.files(USER)) == 1 and message_count(engine) == 0
