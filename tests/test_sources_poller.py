"""The poller's arithmetic (pause window, backoff, UID bookkeeping, batches) as properties, the
[[sources]] config, and the loop with an injected clock."""

from __future__ import annotations

import asyncio
from datetime import datetime, time, timedelta

import pytest
from hypothesis import given, strategies as st

from sink.config import ConfigError, parse_config
from sink.sources.poller import Poller, PassResult, Worker, backoff, in_pause, pause_left
from sink.sources.state import batches, uids_to_fetch

times = st.times().map(lambda t: t.replace(second=0, microsecond=0))
moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1))


# ------------------------------------------------------------------------- pause window
@given(times, times, times)
def test_pause_window_membership(now, start, stop):
    inside = in_pause(now, start, stop)
    if start == stop:
        assert not inside
    elif start < stop:
        assert inside == (start <= now < stop)
    else:                               # crosses midnight: the complement of [stop, start)
        assert inside == (not (stop <= now < start))


@given(moments, times, times)
def test_pause_left_ends_exactly_at_stop_and_is_under_a_day(now, start, stop):
    left = pause_left(now, start, stop)
    if not in_pause(now.time(), start, stop):
        assert left == 0
        return
    assert 0 < left <= 24 * 3600
    end = now + timedelta(seconds=left)
    assert (end.hour, end.minute, end.second) == (stop.hour, stop.minute, 0)
    assert not in_pause(end.time(), start, stop)
    # every minute before the end is still inside the window
    assert in_pause((end - timedelta(seconds=30)).time(), start, stop) or left <= 30


@pytest.mark.parametrize("now,inside", [("23:59", True), ("00:00", True), ("05:59", True),
                                        ("06:00", False), ("21:59", False), ("22:00", True)])
def test_window_across_midnight(now, inside):
    assert in_pause(time.fromisoformat(now), time(22, 0), time(6, 0)) is inside


@given(st.integers(0, 200), st.floats(1, 10_000))
def test_backoff_grows_and_never_exceeds_the_interval(failures, interval):
    delay = backoff(failures, interval)
    assert 0 <= delay <= interval
    assert backoff(failures + 1, interval) >= delay


# ------------------------------------------------------------------------ bookkeeping
@given(st.sets(st.integers(1, 2**32 - 1)), st.sets(st.integers(1, 2**32 - 1)))
def test_uids_to_fetch_is_what_is_new_in_order(server, seen):
    todo = uids_to_fetch(server, seen)
    assert todo == sorted(todo) and len(set(todo)) == len(todo)
    assert set(todo) == server - seen
    # taking them and remembering them leaves nothing to take
    assert uids_to_fetch(server, seen | set(todo)) == []


@given(st.lists(st.integers(0, 10_000)), st.integers(1, 20_000), st.integers(1, 50))
def test_batches_keep_order_and_bounds(sizes, max_bytes, max_count):
    items = list(enumerate(sizes))
    out = batches(items, max_bytes, max_count)
    assert [i for b in out for i in b] == [i for i, _ in items]
    for batch in out:
        assert 1 <= len(batch) <= max_count
        assert len(batch) == 1 or sum(sizes[i] for i in batch) <= max_bytes


# ----------------------------------------------------------------------------- config
def parse(**source):
    return parse_config({"boxes": [{"address": "crm@firma.cz"}],
                         "sources": [{"kind": "imap", "box": "crm@firma.cz",
                                      "host": "imap.firma.cz", "user": "crm",
                                      "password": "pw", **source}]})


def test_config_defaults_and_secret_kept_out_of_repr(tmp_path):
    (tmp_path / "app.secret").write_text("very-Secret-value\n")
    config = parse_config({"boxes": [{"address": "crm@firma.cz"}], "sources": [
        {"kind": "imap", "box": "CRM@firma.cz", "host": "outlook.office365.com",
         "user": "crm@firma.cz", "stop_from": "22:00", "stop_to": "06:00",
         "oauth": {"tenant_id": "t", "client_id": "c", "client_secret_file": "app.secret"}},
        {"kind": "pop3", "box": "crm@firma.cz", "host": "pop.firma.cz", "user": "crm",
         "tls": "starttls", "password": "p0p-Secret", "after": "keep"},
        {"kind": "emldir", "box": "crm@firma.cz", "path": "spool"}]}, base=tmp_path)
    imap, pop3, eml = config.sources
    assert (imap.port, imap.tls, imap.folders, imap.fetch, imap.after, imap.interval) == \
        (993, "ssl", ("INBOX",), "all", "delete", 300)
    assert imap.oauth.client_secret.reveal() == "very-Secret-value"
    assert imap.oauth.scope == "https://outlook.office365.com/.default"
    assert (imap.stop_from, imap.stop_to) == (time(22), time(6))
    assert (pop3.port, pop3.after) == (110, "keep")
    assert eml.path == str(tmp_path / "spool")
    text = repr(config) + str(config.sources)
    assert "very-Secret-value" not in text and "p0p-Secret" not in text
    assert len({imap.key, pop3.key, eml.key}) == 3
    # the key is the source's identity, not its place in the file
    assert parse().sources[0].key == parse(interval=60).sources[0].key


@pytest.mark.parametrize("source,message", [
    ({"kind": "smtp"}, "sources[0].kind: expected imap, pop3 or emldir"),
    ({"after": "trash"}, "sources[0].after: expected delete, keep, seen or move:FOLDER"),
    ({"fetch": "new"}, "sources[0].fetch: expected all or unseen"),
    ({"tls": "none"}, 'sources[0].tls: "none" only for a loopback host'),
    ({"stop_from": "25:00", "stop_to": "06:00"}, "sources[0].stop_from: expected HH:MM"),
    ({"stop_from": "22:00"}, "sources[0].stop_to: required with stop_from"),
    ({"box": "other@firma.cz"}, "sources[0].box: other@firma.cz is not a configured"),
    ({"password_file": "/nonexistent/pw"}, "sources[0].password_file: give exactly one"),
    ({"interval": 0}, "sources[0].interval: expected a number of seconds above 0"),
    ({"pop3Url": "x"}, "sources[0].pop3Url: unknown key"),
])
def test_config_errors_name_the_key(source, message):
    with pytest.raises(ConfigError) as caught:
        parse(**source)
    assert str(caught.value).startswith(message)


def test_unreadable_secret_file_names_the_path_not_a_value(tmp_path):
    with pytest.raises(ConfigError, match=r"sources\[0\].password_file: cannot read .*/nope"):
        parse_config({"boxes": [{"address": "crm@firma.cz"}], "sources": [
            {"kind": "pop3", "box": "crm@firma.cz", "host": "h", "user": "u",
             "password_file": "nope"}]}, base=tmp_path)


# -------------------------------------------------------------------------- the loop
@pytest.fixture(autouse=True)
def fresh_log():
    """`sink poll` in an earlier test pointed the log at that test's (closed) capture."""
    from sink.log import configure
    configure("warning")
class CountingWorker(Worker):
    """A worker whose pass fails ``fail`` times, then succeeds: counts connections."""

    def __init__(self, source, config, fail=0):
        super().__init__(source, config, storage=None, engine=None)
        self.passes = 0
        self.fail = fail

    async def run_pass(self):
        self.passes += 1
        if self.passes <= self.fail:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        return PassResult()


def test_no_pass_inside_the_pause_window_and_passes_after_it():
    config = parse(stop_from="22:00", stop_to="06:00", interval=30)
    worker = CountingWorker(config.sources[0], config)
    now = [datetime(2026, 12, 1, 23, 30)]
    poller = Poller(worker, clock=lambda: now[0])

    async def run():
        delay = await poller.step()
        assert worker.passes == 0 and delay == 60          # the clock looked at each minute
        now[0] = datetime(2026, 12, 2, 5, 59, 30)
        assert await poller.step() == 30 and worker.passes == 0      # 30 s left
        now[0] = datetime(2026, 12, 2, 6, 0)
        assert await poller.step() == 30 and worker.passes == 1      # then one pass
    asyncio.run(run())


def test_failures_back_off_up_to_the_interval_then_recover():
    config = parse(interval=10)
    worker = CountingWorker(config.sources[0], config, fail=5)
    poller = Poller(worker, clock=lambda: datetime(2026, 12, 1, 12, 0))

    async def run():
        delays = [await poller.step() for _ in range(6)]
        assert delays == [2, 4, 8, 10, 10, 10]
        assert poller.failures == 0 and poller.last_error is None
    asyncio.run(run())


def test_the_deploy_example_parses(tmp_path):
    import tomllib
    from pathlib import Path
    example = Path(__file__).resolve().parent.parent / "deploy" / "sources.example.toml"
    data = tomllib.loads(example.read_text())
    for name in ("crm.secret", "m365-app.secret"):
        (tmp_path / name).write_text("x")
    for source in data["sources"]:
        for key in ("password_file",):
            if key in source:
                source[key] = str(tmp_path / "crm.secret")
        if "oauth" in source:
            source["oauth"]["client_secret_file"] = str(tmp_path / "m365-app.secret")
    config = parse_config({"boxes": [{"address": "crm@firma.cz"}], **data})
    assert [s.kind for s in config.sources] == ["imap", "imap", "emldir"]
    assert config.sources[0].move_to == "Archive" and config.sources[1].oauth is not None


def test_a_message_left_on_the_server_is_logged_and_notified_once():
    """SPEC 2.2: a message over max_message_size is left on the server, logged and notified -
    once per message, however many passes find it there again; each pass counts it skipped."""
    from sink.operations import Ops
    config = parse()
    worker = CountingWorker(config.sources[0], config)
    sent = []

    class Recorder:
        def notify(self, kind, subject, body):
            sent.append((kind, subject, body))
    Poller(worker, ops=Ops(notifier=Recorder()))     # gives the worker the app's notifier
    first, second = PassResult(), PassResult()
    worker.leave_on_server(first, "uidl-7", 99_000_000, uidl="uidl-7")
    worker.leave_on_server(second, "uidl-7", 99_000_000, uidl="uidl-7")     # the next pass
    worker.leave_on_server(second, "uidl-8", None, uidl="uidl-8")
    assert (first.skipped, second.skipped) == (1, 2)
    assert [kind for kind, _, _ in sent] == ["message_too_big"] * 2
    assert "uidl uidl-7; 99000000 bytes" in sent[0][2] and "never deleted" in sent[0][2]
    assert "the server sent more" in sent[1][2]
