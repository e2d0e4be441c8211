"""[backup] directory (issue 17, SPEC 3): every stored message written after its commit as
DIRECTORY/YYYY-MM-DD/<uuid>.eml (the `sink export` names), found from the database, caught up
after a restart or a full disk; a disk problem never costs mail a 4xx."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sink.backup import Backup, write_durably
from sink.config import BackupConfig, ConfigError, parse_config
from sink.db import schema as t
from sink.db.queries import export_raw
from sink.intake import Envelope, Intake
from tests.attachment_corpus import pseudo_random
from tests.conftest import config_for, seeded
from tests.reliability.test_disk_full import small_fs  # noqa: F401 - the tmpfs fixture
from tests.support import MailClient, SinkProcess, free_port, make_mail, wait_for, write_config


def backed_up(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*.eml")}


# ---------------------------------------------------------------------------------- config
def test_backup_config(tmp_path):
    base = {"database": {"url": "sqlite:///x.db"}, "boxes": [{"address": "crm@firma.cz"}]}
    assert parse_config(base).backup is None
    config = parse_config({**base, "backup": {"directory": "b", "retry": 5}}, base=tmp_path)
    assert config.backup == BackupConfig(directory=tmp_path / "b", interval=1, retry=5)
    for bad, key in (({"directory": ""}, "backup.directory"), ({}, "backup.directory"),
                     ({"directory": "b", "every": 1}, "backup.every"),
                     ({"directory": "b", "interval": 0}, "backup.interval"),
                     ({"directory": "b", "retry": "1"}, "backup.retry")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config({**base, "backup": bad}, base=tmp_path)


# ------------------------------------------------------------------------------------ pass
def test_every_stored_message_written_once_under_the_export_name(db_url, tmp_path):
    engine = seeded(db_url)
    intake = Intake(engine)
    box = config_for(db_url).boxes[0]
    raws = [make_mail(subject=f"b{i}") for i in range(5)]
    for raw in raws:
        intake.deliver(raw, Envelope("cli", rcpt_tos=(box.address,)), [box])
    backup = Backup(BackupConfig(tmp_path / "backup"), engine)
    assert backup.pass_once() == 5
    files = backed_up(tmp_path / "backup")
    with engine.connect() as conn:
        expected = {f"{day}/{name}.eml": bytes(raw) for day, name, raw in export_raw(conn)}
        assert conn.execute(select(func.count()).select_from(t.messages)
                            .where(t.messages.c.backed_up_at.is_(None))).scalar() == 0
    assert files == expected and sorted(files.values()) == sorted(raws)
    assert backup.pass_once() == 0                  # nothing twice
    intake.deliver(make_mail(subject="later"), Envelope("cli", rcpt_tos=(box.address,)), [box])
    assert backup.pass_once() == 1 and len(backed_up(tmp_path / "backup")) == 6
    assert not list((tmp_path / "backup").rglob("*.part"))
    mode = next((tmp_path / "backup").rglob("*.eml")).stat().st_mode & 0o777
    assert mode == 0o600                            # mail is private
    engine.dispose()


def test_a_file_that_cannot_be_written_is_retried_and_nothing_is_marked(tmp_path):
    url = f"sqlite:///{tmp_path}/sink.db"
    engine = seeded(url)
    box = config_for(url).boxes[0]
    Intake(engine).deliver(make_mail(), Envelope("cli", rcpt_tos=(box.address,)), [box])
    target = tmp_path / "backup"
    target.write_text("a file where the directory should be")
    backup = Backup(BackupConfig(target), engine)
    with pytest.raises(OSError):
        backup.pass_once()
    target.unlink()
    assert backup.pass_once() == 1 and len(backed_up(target)) == 1
    engine.dispose()


def test_a_crash_between_file_and_mark_writes_the_same_file_again(tmp_path, monkeypatch):
    """The files are durable before the database says so: a pass that dies before its mark
    (a crash, the database gone) leaves files the next pass writes again, identically."""
    url = f"sqlite:///{tmp_path}/sink.db"
    engine = seeded(url)
    box = config_for(url).boxes[0]
    for i in range(3):
        Intake(engine).deliver(make_mail(subject=f"c{i}"), Envelope("cli", rcpt_tos=(box.address,)),
                               [box])
    backup = Backup(BackupConfig(tmp_path / "backup"), engine)

    def lost(ids):
        raise ConnectionError("database gone before the mark")
    monkeypatch.setattr(backup, "_mark", lost)
    with pytest.raises(ConnectionError):
        backup.pass_once()
    first = backed_up(tmp_path / "backup")
    assert len(first) == 3
    monkeypatch.undo()
    assert backup.pass_once() == 3 and backed_up(tmp_path / "backup") == first
    assert backup.pass_once() == 0
    engine.dispose()


def test_write_durably_leaves_no_partial_file(tmp_path):
    write_durably(tmp_path / "d" / "a.eml", b"x" * 10)
    assert (tmp_path / "d" / "a.eml").read_bytes() == b"x" * 10
    (tmp_path / "d" / "b.eml").mkdir()               # rename onto a directory fails
    with pytest.raises(OSError):
        write_durably(tmp_path / "d" / "b.eml", b"y")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["a.eml", "b.eml"]


# ------------------------------------------------------------------------- full disk, e2e
def test_full_backup_disk_still_250_and_caught_up_after_space_is_freed(tmp_path, small_fs):
    """A real `sink serve` with [backup] on a 4 MB tmpfs that a filler leaves ~300 KB of:
    every one of 25 messages of ~100 KB gets 250 while the backup fails (logged), and once the
    filler is removed every message is in the backup directory, byte for byte."""
    mount = Path(small_fs("4m"))
    filler = mount / "filler"
    filler.write_bytes(b"\0" * (3_700 * 1024))
    backup = mount / "backup"
    url = f"sqlite:///{tmp_path}/sink.db"           # the database is not on the small disk
    seeded(url).dispose()
    port = free_port()
    config = tmp_path / "sink.toml"
    write_config(config, url, port)
    with config.open("a") as f:
        f.write(f'\n[backup]\ndirectory = "{backup}"\ninterval = 1\nretry = 1\n')
    raws = [make_mail(subject=f"full {i}", attachments=[
        ("application", "pdf", pseudo_random(75_000, 100 + i), f"o{i}.pdf")]) for i in range(25)]
    sink = SinkProcess(config, port)
    replies, slowest = [], 0.0
    try:
        client = MailClient(port)
        client.hello()
        for raw in raws:
            started = time.monotonic()
            replies += client.send(raw)[1:]
            slowest = max(slowest, time.monotonic() - started)
        client.close()
        assert [code for code, _ in replies] == [250] * len(raws), replies
        assert wait_for(lambda: '"backup.failed"' in Path(sink.log_path).read_text(), 30), \
            sink.log_tail()
        written_while_full = len(backed_up(backup))
        assert written_while_full < len(raws)
        filler.unlink()                              # space is freed
        assert wait_for(lambda: len(backed_up(backup)) == len(raws), 60), sink.log_tail()
    finally:
        assert sink.stop() == 0
    assert sorted(backed_up(backup).values()) == sorted(raws)
    assert not list(backup.rglob("*.part"))
    log = Path(sink.log_path).read_text()
    assert "ENOSPC" in log and '"backup.caught_up"' in log
    conn = sqlite3.connect(f"{tmp_path}/sink.db")
    assert conn.execute("SELECT count(*) FROM messages WHERE backed_up_at IS NULL").fetchone() \
        == (0,)
    conn.close()
    print(f"\n[backup on a full disk] {written_while_full}/{len(raws)} written while full, "
          f"slowest reply {slowest * 1000:.0f} ms")
    assert slowest < 5
