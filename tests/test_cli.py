"""The fixed CLI of SPEC 6, run as a real `sink` process: JSON shapes, exit codes, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DIRECTORY, make_mail


def sink(config: Path | None, *args, check=False, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sink"] + (["--config", str(config)] if config else []) + \
        [str(a) for a in args]
    result = subprocess.run(cmd, capture_output=True, timeout=120, env=env)
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


def lines(result) -> list[dict]:
    return [json.loads(l) for l in result.stdout.decode().splitlines() if l.strip()]


@pytest.fixture
def setup(tmp_path, db_url):
    config = tmp_path / "sink.toml"
    config.write_text(f'''
[database]
url = "{db_url}"

[[listeners]]
protocol = "lmtp"
address = "127.0.0.1:0"

[[boxes]]
address = "crm@firma.cz"
save_originals_from = ["jan@acme.cz"]

[[boxes]]
address = "support@firma.cz"
incoming_as_pending = true
''')
    directory = tmp_path / "directory.json"
    directory.write_text(json.dumps(DIRECTORY))
    sink(config, "db", "upgrade", check=True)
    assert sink(config, "directory", "import", directory, check=True).returncode == 0
    mails = {}
    for name, kwargs in {
        "in.eml": dict(subject="Zakázka: 2023-015", cc=("eva@globex.com",)),
        "out.eml": dict(sender="alice@firma.cz", to=("jan@acme.cz",),
                        subject="Order:OBJ-77 Documentation p-"),
        "spam.eml": dict(sender="nobody"),
    }.items():
        path = tmp_path / name
        path.write_bytes(make_mail(**kwargs))
        mails[name] = path
    return config, mails


def test_check_prints_the_documented_json_and_writes_nothing(setup):
    config, mails = setup
    result = sink(config, "check", mails["in.eml"], mails["out.eml"], mails["spam.eml"],
                  check=True)
    first, second, third = lines(result)
    assert first["file"] == str(mails["in.eml"]) and first["box"] == "crm@firma.cz"
    assert first["verdict"] == "PROCESSED" and first["direction"] == "incoming"
    assert first["activities"] == [{
        "responsible": "alice@firma.cz", "direction": "incoming", "type": "E-mail",
        "scope": "role:Sales", "contract": "2023-015", "order": None, "task": None, "ticket": None,
        "completed": True, "due": False, "original_attached": True,
        "contacts": ["jan@acme.cz", "eva@globex.com"], "companies": ["ACME", "Globex"]}]
    for key in ("tasks", "contact_flags", "forbidden", "invitations", "tickets"):
        assert first[key] == []
    assert first["trace"][0] == {"rule": "duplicate", "outcome": "pass"}
    assert second["activities"][0]["type"] == "Documentation"
    assert second["activities"][0]["scope"] == "none"
    assert second["activities"][0]["order"] == "OBJ-77"
    assert third["verdict"] == "SPAM" and third["activities"] == []
    assert lines(sink(config, "messages", "--json", check=True)) == []


def test_check_with_box_option(setup):
    config, mails = setup
    [out] = lines(sink(config, "check", "--box", "SUPPORT@firma.cz", mails["in.eml"],
                       check=True))
    assert out["box"] == "support@firma.cz"
    assert out["activities"][0]["due"] is True
    assert out["activities"][0]["original_attached"] is False


def test_ingest_then_messages_show_and_raw(setup):
    config, mails = setup
    ingested = lines(sink(config, "ingest", mails["in.eml"], mails["out.eml"], check=True))
    assert [o["verdict"] for o in ingested] == ["PROCESSED", "PROCESSED"]
    again = lines(sink(config, "ingest", mails["in.eml"], check=True))
    assert again[0]["already_stored"] is True

    listed = lines(sink(config, "messages", "--json", check=True))
    assert [set(m) for m in listed] == [{"id", "received_at", "channel", "box", "message_id",
                                        "sender", "subject", "status", "verdict",
                                        "activities"}] * 2
    assert [m["sender"] for m in listed] == ["alice@firma.cz", "jan@acme.cz"]  # newest first
    assert {m["channel"] for m in listed} == {"cli"}
    assert all(m["activities"] == 1 for m in listed)
    assert len(lines(sink(config, "messages", "--json", "--limit", "1", check=True))) == 1
    assert lines(sink(config, "messages", "--json", "--verdict", "SPAM", check=True)) == []
    assert len(lines(sink(config, "messages", "--json", "--status", "processed",
                          check=True))) == 2

    oldest = listed[-1]["id"]
    raw = sink(config, "show", oldest, "--raw", check=True).stdout
    assert raw == mails["in.eml"].read_bytes()
    shown = sink(config, "show", oldest, check=True).stdout.decode()
    assert "verdict:      PROCESSED" in shown
    assert "responsible=alice@firma.cz" in shown and "contract 2023-015" in shown
    assert "original=Original.eml" in shown
    assert "duplicate" in shown and "incoming" in shown
    text = sink(config, "messages", check=True).stdout.decode()
    assert "PROCESSED" in text and "Zakázka" in text


@pytest.mark.parametrize("args, message", [
    (["check"], "the following arguments are required"),
    (["check", "/nonexistent.eml"], "/nonexistent.eml: cannot read"),
    (["check", "--box", "nobody@firma.cz", "x.eml"], "no such box"),
    (["show", "999"], "message 999: not found"),
    (["show", "abc"], "invalid int value"),
    (["directory", "import", "/nonexistent.json"], "cannot read"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_one_line(setup, args, message):
    config, _ = setup
    if args[-1] == "x.eml":
        args = args[:-1] + [str(setup[1]["in.eml"])]
    result = sink(config, *args)
    assert result.returncode == 2
    err = result.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_schema_not_current_is_a_clear_error(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/new.db"\n'
                      '[[boxes]]\naddress = "crm@firma.cz"\n')
    result = sink(config, "messages")
    assert result.returncode == 2 and "sink db upgrade" in result.stderr.decode()


@pytest.mark.parametrize("toml, message", [
    ('[[boxes]]\naddress = "crm@firma.cz"\nignore_subject = []\n',
     "boxes[0].ignore_subject: unknown key"),
    ('[[boxes]]\naddress = "crm@firma.cz"\nignore_subjects = "x"\n',
     "boxes[0].ignore_subjects: expected a list of strings"),
    ('[[boxes]]\naddress = "crm@firma.cz"\nblock_free_mail = "yes"\n',
     "boxes[0].block_free_mail: expected true or false"),
    ('[[boxes]]\ninternal_domains = []\n', "boxes[0].address: required"),
    ('[[listeners]]\nprotocol = "imap"\naddress = "127.0.0.1:1"\n', "listeners[0].protocol"),
    ('[[listeners]]\naddress = "localhost"\n', "listeners[0].address: expected HOST:PORT"),
    ('[database]\nuri = "x"\n', "database.uri: unknown key"),
    ('[[boxes]]\naddress = "crm@firma.cz"\n[[boxes]]\naddress = "CRM@firma.cz"\n',
     "configured twice"),
    ('not toml at all', "not valid TOML"),
])
def test_config_errors_name_the_key(tmp_path, toml, message):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = sink(config, "messages")
    assert result.returncode == 2
    assert message in result.stderr.decode(), result.stderr.decode()


def test_config_from_environment(setup):
    import os
    config, mails = setup
    env = dict(os.environ, SINK_CONFIG=str(config))
    result = sink(None, "check", mails["spam.eml"], env=env)
    assert result.returncode == 0 and lines(result)[0]["verdict"] == "SPAM"
    env.pop("SINK_CONFIG")
    result = sink(None, "messages", env=env)
    assert result.returncode == 2 and "--config" in result.stderr.decode()


def test_config_defaults(tmp_path):
    from sink.config import load_config
    config = tmp_path / "c.toml"
    config.write_text('[[boxes]]\naddress = "CRM@Firma.cz"\n')
    cfg = load_config(config)
    box = cfg.boxes[0]
    assert box.address == "crm@firma.cz" and box.internal_domains == ("firma.cz",)
    assert (box.ignore_subjects, box.system_senders, box.incoming_as_pending,
            box.block_free_mail) == ((), (), False, False)
    assert cfg.database_url == f"sqlite:///{tmp_path}/var/sink.db"   # relative to the config


def test_export_writes_dated_eml_files_byte_exact(setup, tmp_path):
    config, mails = setup
    sink(config, "ingest", mails["in.eml"], mails["out.eml"], check=True)
    target = tmp_path / "export"
    result = json.loads(sink(config, "export", target, check=True).stdout)
    assert result["exported"] == 2
    files = sorted(target.glob("*/*.eml"))
    assert len(files) == 2
    import re
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", f.parent.name) for f in files)
    assert sorted(f.read_bytes() for f in files) == sorted(
        [mails["in.eml"].read_bytes(), mails["out.eml"].read_bytes()])
    again = json.loads(sink(config, "export", target, check=True).stdout)
    assert (again["exported"], again["already_there"]) == (0, 2)
    none = json.loads(sink(config, "export", tmp_path / "e2", "--until", "2000-01-01",
                           check=True).stdout)
    assert none["exported"] == 0
    assert sink(config, "export", target, "--since", "yesterday").returncode == 2
