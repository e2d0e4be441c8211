"""Side-effect records in the fixed interfaces (SPEC 6): `check` and `ingest` JSON, `sink show`;
and migration 0002 applied to a database that already holds records."""

from __future__ import annotations

import json

import pytest
import structlog
from sqlalchemy import select

from sink.cli import main
from sink.db import schema as t
from sink.db.engine import make_engine
from sink.db.migrate import upgrade
from tests.side_effect_mail import (gmail_dsn, invitation_mail, troubleshooting_mail,
                                    vcalendar, vevent)
from tests.support import DIRECTORY, make_mail

FILES = {
    "trouble.eml": troubleshooting_mail(),
    "optout.eml": make_mail(sender="stranger@nowhere.cz", subject="Nezasílat prosím"),
    "bounce.eml": gmail_dsn(("jan@acme.cz",)),
    "invite.eml": invitation_mail(vcalendar("REQUEST", vevent(rrule="FREQ=WEEKLY;BYDAY=TU"))),
    "task.eml": make_mail(sender="alice@firma.cz", to=("bob@firma.cz",),
                          subject="New task: Call Jan"),
}


@pytest.fixture
def cli(tmp_path, db_url, capsys):
    config = tmp_path / "sink.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n\n[[boxes]]\naddress = "crm@firma.cz"\n')
    (tmp_path / "directory.json").write_text(json.dumps(DIRECTORY))
    for name, raw in FILES.items():
        (tmp_path / name).write_bytes(raw)

    def run(*args) -> tuple[int, str]:
        code = main(["--config", str(config), *[str(a) for a in args]])
        return code, capsys.readouterr().out
    logging = structlog.get_config()    # main() points the log at capsys' stream
    assert run("db", "upgrade")[0] == 0
    assert run("directory", "import", tmp_path / "directory.json")[0] == 0
    yield run, tmp_path
    structlog.configure(**logging)


def by_file(output: str) -> dict[str, dict]:
    return {o["file"].rsplit("/", 1)[-1]: o for o in map(json.loads, output.splitlines())}


EXPECTED = {
    "trouble.eml": ("TASK_CREATED", {"tasks": [{
        "action": "created", "number": "4711", "subject": "Printer & toner", "status": "Open",
        "solvers": [], "approver": None}]}),
    "optout.eml": ("PROCESSED", {"forbidden": [{"email": "stranger@nowhere.cz",
                                                "type": "do-not-send"}]}),
    "bounce.eml": ("PROCESSED", {"contact_flags": [{"email": "jan@acme.cz",
                                                    "non_functional": True}]}),
    "invite.eml": ("PROCESSED", {"invitations": [
        {"user": "alice@firma.cz", "uid": "040000008200E00074C5B7101A82E008000000001",
         "method": "REQUEST"},
        {"user": "bob@firma.cz", "uid": "040000008200E00074C5B7101A82E008000000001",
         "method": "REQUEST"}]}),
    "task.eml": ("PROCESSED", {"tasks": [{
        "action": "created", "number": None, "subject": "Call Jan", "status": None,
        "solvers": ["bob@firma.cz"], "approver": "alice@firma.cz"}]}),
}
KINDS = ("tasks", "contact_flags", "forbidden", "invitations")


def test_check_and_ingest_print_the_records(cli):
    run, tmp = cli
    names = list(FILES)
    code, out = run("check", *(tmp / n for n in names))
    assert code == 0
    checked = by_file(out)
    code, out = run("ingest", *(tmp / n for n in names))
    assert code == 0
    ingested = by_file(out)
    for name, (verdict, records) in EXPECTED.items():
        for result in (checked[name], ingested[name]):
            assert result["verdict"] == verdict
            expected = {k: records.get(k, []) for k in KINDS}
            if result is ingested[name] and name == "task.eml":   # numbered when stored
                expected["tasks"] = [{**expected["tasks"][0],
                                      "number": f"MAIL-{result['id']}"}]
            assert {k: result[k] for k in KINDS} == expected, name
    assert [a["completed"] for a in ingested["bounce.eml"]["activities"]] == [False]
    assert [a["completed"] for a in checked["bounce.eml"]["activities"]] == [False]


def test_show_lists_the_records_of_a_message(cli):
    run, tmp = cli
    _, out = run("ingest", *(tmp / n for n in FILES))
    ids = {name: r["id"] for name, r in by_file(out).items()}
    shown = {name: run("show", ids[name])[1] for name in FILES}
    assert "tasks: 1\n  created 4711 subject='Printer & toner' status=Open contract=2023-015" \
        in shown["trouble.eml"]
    assert "forbidden: 1\n  do-not-send stranger@nowhere.cz" in shown["optout.eml"]
    assert "contact flags: 1\n  contact jan@acme.cz: non_functional=True" in shown["bounce.eml"]
    assert "invitations: 2\n  alice@firma.cz REQUEST CONFIRMED uid=" in shown["invite.eml"]
    assert "2026-11-10T10:00:00+01:00 (Central Europe Standard Time)" in shown["invite.eml"]
    assert "rrule=FREQ=WEEKLY;BYDAY=TU" in shown["invite.eml"]
    assert (f"created MAIL-{ids['task.eml']} subject='Call Jan' status=None contract=- "
            "approver=alice@firma.cz solvers=bob@firma.cz") in shown["task.eml"]
    assert "tasks: 0\ncontact flags: 0\nforbidden: 1\n" in shown["optout.eml"]
    assert shown["optout.eml"].endswith("invitations: 0\nbounces: 0\n")


def test_migration_0002_upgrades_a_database_with_records(db_url):
    """SQLite cannot add a foreign key to ``tasks`` in place, and rebuilding it would fail
    while activities point at tasks: the upgrade must work on a database in use."""
    engine = make_engine(db_url)
    upgrade(engine, "0001")
    with engine.begin() as conn:        # raw SQL: the models describe the newest schema
        conn.exec_driver_sql("INSERT INTO users (email, name) VALUES ('a@firma.cz', 'A')")
        conn.exec_driver_sql("INSERT INTO tasks (number, subject) VALUES ('T-1', 'old')")
        conn.exec_driver_sql(
            "INSERT INTO messages (uuid, received_at, channel, box, rcpt_to, to_addrs, "
            "cc_addrs, date_header, subject, size, sha256, status, trace) VALUES "
            "('u1', '2026-11-02 10:00:00', 'cli', 'crm@firma.cz', '[]', '[]', '[]', '', "
            "'', 1, 'x', 'processed', '[]')")
        conn.exec_driver_sql(
            "INSERT INTO activities (message_id, direction, responsible_id, type_name, scope, "
            "subject, text, task_id, completed, due) SELECT m.id, 'incoming', u.id, "
            "'E-mail', 'none', '', '', k.id, true, false FROM messages m, tasks k, users u")
    assert upgrade(engine, "0002") == "0002"
    with engine.connect() as conn:
        task = conn.execute(select(t.tasks)).one()
        linked = conn.execute(select(t.activities.c.task_id)).scalar()
    assert (task.number, task.subject, task.origin, task.approver_id) == ("T-1", "old", None,
                                                                          None)
    assert linked == task.id
    engine.dispose()
