"""Issue 13 findings 5, 8 and 9: a deleted or replaced SQLite file is 451, never 250; text
from a message reaches a terminal with its control characters made visible; a malformed
database URL is one line and exit 2."""

from __future__ import annotations

import json
import os
import shutil

from hypothesis import given, settings, strategies as st

from sink.cli.inspect import visible
from tests.conftest import RunningServer, config_for, seeded
from tests.support import MailClient, make_mail
from tests.test_cli import sink


def deliver(port: int, subject: str) -> tuple[int, str]:
    client = MailClient(port)
    client.hello()
    [_, reply] = client.send(make_mail(subject=subject))
    client.close()
    return reply


def test_finding5_deleted_or_replaced_sqlite_file_is_451(tmp_path):
    path = tmp_path / "sink.db"
    engine = seeded(f"sqlite:///{path}")
    engine.dispose()
    spare = tmp_path / "spare.db"
    seeded(f"sqlite:///{spare}").dispose()
    config = config_for(f"sqlite:///{path}",
                        listeners=[{"protocol": "lmtp", "address": "127.0.0.1:0"}])
    server = RunningServer(config, workers=2)       # storage worker processes, as served
    try:
        assert deliver(server.lmtp_port, "before")[0] == 250
        shutil.copy(spare, tmp_path / "new.db")
        os.replace(tmp_path / "new.db", path)           # a "restore" over the live file
        replies = [deliver(server.lmtp_port, f"replaced {i}") for i in range(3)]
        assert [code for code, _ in replies] == [451] * 3, replies
        os.unlink(path)
        replies = [deliver(server.lmtp_port, f"deleted {i}") for i in range(3)]
        assert [code for code, _ in replies] == [451] * 3, replies
    finally:
        server.stop()


def test_visible_keeps_text_and_shows_controls():
    assert visible("Nabídka – 2023-015 ✓") == "Nabídka – 2023-015 ✓"
    shown = visible("\x1b[2J\x1b]8;;http://evil/\x07click\x1b]8;;\x07\u202etxt.exe\x9b1m")
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\x9b" not in shown
    assert shown.startswith("\\x1b[2J")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.integers(min_value=0, max_value=80))
def test_visible_cut_never_leaves_a_control_character(text, cut):
    shown = visible(text)[:cut]
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in shown)
    assert "\u202e" not in shown and "\u2028" not in shown


def _setup_cli(tmp_path):
    from tests.support import DIRECTORY
    config = tmp_path / "sink.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/s.db"\n'
                      '[[boxes]]\naddress = "crm@firma.cz"\n')
    (tmp_path / "d.json").write_text(json.dumps(DIRECTORY))
    sink(config, "db", "upgrade", check=True)
    sink(config, "directory", "import", tmp_path / "d.json", check=True)
    return config


def test_finding8_messages_and_show_print_no_escape_sequences(tmp_path):
    config = _setup_cli(tmp_path)
    subject = "x" * 55 + "\x1b]8;;http://evil.example/\x07pay\x1b]8;;\x07 \x1b[2J\x1b[3J"
    mail = tmp_path / "evil.eml"
    # the email package would encode the ESC; write the header raw, as an attacker does
    raw = make_mail(subject="PLACEHOLDER").replace(b"PLACEHOLDER", subject.encode())
    mail.write_bytes(raw)
    ingested = sink(config, "ingest", mail, check=True)
    message_id = json.loads(ingested.stdout)["id"]
    listed = sink(config, "messages", check=True).stdout
    shown = sink(config, "show", message_id, check=True).stdout
    for out in (listed, shown):
        assert b"\x1b" not in out and b"\x07" not in out
    assert b"\\x1b]8;;http://evil" in shown


def test_finding9_malformed_database_url_is_one_line_exit_2(tmp_path):
    config = tmp_path / "sink.toml"
    for url in ("postgres//nonsense::x", "postgresql+nodriver://u:secretpw@h/x"):
        config.write_text(f'[database]\nurl = "{url}"\n[[boxes]]\naddress = "crm@firma.cz"\n')
        result = sink(config, "messages")
        err = result.stderr.decode()
        assert result.returncode == 2, err
        assert len(err.strip().splitlines()) == 1 and "database.url" in err
        assert "Traceback" not in err and "secretpw" not in err
