"""Issue 15, operations: kill -9 in the middle of `sink calendar sync`, a revoked secret, a
user without a mailbox, the CLI and the background component in `serve`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import structlog

from sink.cli import main
from sink.log import configure
from tests.calendar_support import hour


@pytest.fixture(autouse=True)
def keep_logging():
    """main() configures logging onto this test's captured stderr: put the suite's back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "sink.log"
    saved = structlog.get_config()
    configure("info", str(path))
    yield path
    structlog.configure(**saved)


def events(path: Path, name: str) -> list[dict]:
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == name]


class Hold:
    """Holds the fake's answer to the first request ``when(method, path, result)`` accepts
    until released, and says when it is holding: the moment to kill the client."""

    def __init__(self, when):
        self.when, self.holding, self.release = when, threading.Event(), threading.Event()

    def __call__(self, method, path, result):
        if not self.holding.is_set() and self.when(method, path, result):
            self.holding.set()
            self.release.wait(30)


def kill_sync_when(cal, tmp_path, when, while_held=lambda: None) -> None:
    """Start `sink calendar sync` in a subprocess, kill -9 it while the fake holds ``when``."""
    config = cal.write_config(tmp_path / "sink.toml")
    hold = Hold(when)
    cal.fake.hold = hold
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "sink", "--config", str(config), "calendar",
                             "sync", "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert hold.holding.wait(60), proc.stderr.read1().decode()
        while_held()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        cal.fake.hold = None
        hold.release.set()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_kill_9_in_the_middle_of_a_delta_round_loses_and_duplicates_nothing(cal, tmp_path):
    for day in range(1, 6):
        cal.tenant.add_event(cal.alice, f"Meeting {day}", hour(day))
    cal.tenant.add_series(cal.alice, "Weekly", hour(8), 3)
    cal.run("alice@firma.cz")                      # a first round: the deltaLink is stored
    for day in range(1, 4):
        cal.tenant.add_event(cal.alice, f"Later {day}", hour(day, 15))
    # Held: the answer to the second page of the next round; the first page is committed.
    busy = []
    kill_sync_when(cal, tmp_path, lambda m, p, r: m == "GET" and "$skiptoken=" in p,
                   lambda: busy.append(cal.run("alice@firma.cz")["alice@firma.cz"].status))
    assert busy == ["busy"]                     # the other process holds Alice's pass
    committed = len(cal.rows("alice@firma.cz"))
    assert 9 <= committed < 12                  # killed part-way through the new events

    report = cal.run("alice@firma.cz")["alice@firma.cz"]

    assert report.status == "ok"
    rows = cal.rows("alice@firma.cz")
    assert sorted(r.graph_id for r in rows) == sorted(cal.tenant.events[cal.alice])
    assert len({r.graph_id for r in rows}) == len(rows) == 12


def test_kill_9_after_graph_created_the_event_makes_no_second_one(cal, tmp_path):
    activity = cal.crm_create("bob@firma.cz", "Demo at Globex", hour(4, 13))
    # Held: the answer to our POST - Graph has the event, our database never hears of it.
    kill_sync_when(cal, tmp_path, lambda m, p, r: m == "POST")
    assert len(cal.tenant.events[cal.bob]) == 1
    assert [r.graph_id for r in cal.rows("bob@firma.cz")] == [None]

    cal.run("bob@firma.cz")
    cal.run("bob@firma.cz")

    [event] = cal.tenant.events[cal.bob].values()
    assert [(r.id, r.graph_id) for r in cal.rows("bob@firma.cz")] == [(activity, event["id"])]


def test_a_revoked_secret_is_logged_once_and_never_a_login_storm(cal, log_file):
    cal.tenant.add_event(cal.bob, "Lunch", hour(1))
    cal.run()                                      # a token, cached by msal
    cal.tenant.secret_revoked = True
    cal.tenant.tokens.clear()                      # and Graph no longer takes the old one
    before = cal.fake.token_requests()
    for _ in range(3):
        reports = cal.run()
        assert reports["alice@firma.cz"].status == "token-refused", reports["alice@firma.cz"].error
        assert "AADSTS7000215" in reports["alice@firma.cz"].error
        assert {r.status for u, r in reports.items() if u != "alice@firma.cz"} == {"skipped"}
    assert cal.fake.token_requests() - before == 1          # one login in three passes
    [refused] = events(log_file, "calendar.token_refused")
    assert "invalid_client" in refused["reason"]
    assert cal.tenant.secret not in log_file.read_text()
    # A new secret in the file is tried at once, and works.
    cal.tenant.secret, cal.tenant.secret_revoked = "n3w~secret", False
    cal.secret_file.write_text("n3w~secret\n")
    assert cal.run()["bob@firma.cz"].status == "ok"


def test_a_user_without_a_mailbox_is_logged_once_and_stops_nobody(cal, log_file):
    cal.tenant.add_event(cal.bob, "Lunch", hour(1))
    for _ in range(2):
        reports = cal.run()
        assert reports["carol@firma.cz"].status == "no-mailbox"
        assert "MailboxNotEnabledForRESTAPI" in reports["carol@firma.cz"].error
        assert reports["dave@firma.cz"].status == "not-in-tenant"
        assert reports["bob@firma.cz"].status == "ok"
    failures = events(log_file, "calendar.user_failed")
    assert [e["user"] for e in failures] == ["carol@firma.cz"]
    assert [e["user"] for e in events(log_file, "calendar.user_skipped")] == ["dave@firma.cz"]
    # Once the mailbox exists, the pass succeeds and says the problem is over.
    cal.tenant.users[cal.carol]["mailbox"] = True
    assert cal.run("carol@firma.cz")["carol@firma.cz"].status == "ok"
    assert [e["user"] for e in events(log_file, "calendar.user_recovered")] == ["carol@firma.cz"]


def test_cli_calendar_sync(cal, tmp_path, capsys):
    cal.tenant.add_event(cal.bob, "Lunch", hour(1))
    config = cal.write_config(tmp_path / "sink.toml")
    assert main(["--config", str(config), "calendar", "sync", "--user", "bob@firma.cz",
                 "--json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    report = json.loads(line)
    assert (report["user"], report["status"], report["pulled"]["created"]) == (
        "bob@firma.cz", "ok", 1)
    assert main(["--config", str(config), "calendar", "sync", "--user", "nobody@firma.cz"]) == 2
    assert "no such user" in capsys.readouterr().err
    cal.tenant.secret_revoked = True
    cal.tenant.tokens.clear()
    assert main(["--config", str(config), "calendar", "sync"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and cal.tenant.secret not in err


def test_cli_without_a_calendar_section_is_a_usage_error(tmp_path, capsys):
    config = tmp_path / "sink.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/s.db"\n')
    assert main(["--config", str(config), "calendar", "sync"]) == 2
    assert "no [calendar] section" in capsys.readouterr().err


def test_serve_runs_the_sync_in_the_background_and_stops_it(cal):
    from sink.app import build
    cal.tenant.add_event(cal.bob, "Lunch", hour(1))
    from sink.calendar.service import CalendarSync
    app = build(cal.config, cal.engine)
    [component] = [c for c in app.background if isinstance(c, CalendarSync)]
    component.syncer = cal.syncer                   # the harness's (recorded sleeps)

    async def run():
        await component.start()
        for _ in range(200):
            if component.passes:
                break
            await asyncio.sleep(0.05)
        await asyncio.wait_for(component.stop(), 10)
    asyncio.run(run())
    assert component.passes == 1
    assert [r.subject for r in cal.rows("bob@firma.cz")] == ["Lunch"]
