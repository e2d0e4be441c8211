"""Issue 15, the parts on their own: `[calendar]` validation, the event mapping (property
tests: hostile JSON never raises, never overflows a column), the Graph client's defences."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sink.calendar.events import digest, from_graph, parse_graph_time, to_graph
from sink.calendar.graph import GraphClient, GraphError, SyncStateGone, Throttled
from sink.config import ConfigError, parse_config

CALENDAR = {"tenant_id": "t", "client_id": "c", "client_secret_file": "graph.secret"}


def calendar(**changes):
    return parse_config({"calendar": {**CALENDAR, **changes}}, base=None).calendar


def test_calendar_section_defaults_and_paths(tmp_path):
    cfg = parse_config({"calendar": CALENDAR}, base=tmp_path).calendar
    assert (cfg.interval, cfg.days_back, cfg.days_ahead, cfg.activity_type) == (
        300, 30, 365, "Meeting")
    assert cfg.client_secret_file == tmp_path / "graph.secret"
    assert cfg.authority_url == "https://login.microsoftonline.com/t"
    assert cfg.graph_url == "https://graph.microsoft.com/v1.0"
    assert parse_config({}).calendar is None


@pytest.mark.parametrize("changes, message", [
    ({"tenant_id": None}, "calendar.tenant_id: required"),
    ({"secret": "x"}, "calendar.secret: unknown key"),
    ({"interval": 0}, "calendar.interval"),
    ({"graph_url": "http://graph.example"}, "calendar.graph_url: expected an https:// URL"),
    ({"tenant_id": "a/b"}, "calendar.tenant_id"),
    ({"days_ahead": 10000}, "calendar.days_ahead"),
])
def test_calendar_section_errors_name_the_key(changes, message):
    table = {k: v for k, v in {**CALENDAR, **changes}.items() if v is not None}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config({"calendar": table})


def test_the_secret_is_read_from_its_file_and_never_part_of_the_config(tmp_path):
    (tmp_path / "graph.secret").write_text("  s3cret~value \n")
    cfg = parse_config({"calendar": CALENDAR}, base=tmp_path).calendar
    assert "s3cret" not in repr(cfg)
    assert cfg.read_secret() == "s3cret~value"
    (tmp_path / "graph.secret").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        cfg.read_secret()


# ---------------------------------------------------------------------------- event mapping
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=50), lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
event_keys = st.sampled_from(["id", "changeKey", "iCalUId", "type", "seriesMasterId",
                              "subject", "location", "start", "end", "isAllDay", "isCancelled",
                              "organizer", "attendees", "recurrence", "lastModifiedDateTime",
                              "originalStart"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(event_keys, json_values, max_size=16))
def test_hostile_events_map_without_raising_and_fit_their_columns(event):
    fields = from_graph(event)
    assert fields["event_type"] in {"singleInstance", "occurrence", "exception",
                                    "seriesMaster"}
    assert len(fields["subject"]) <= 2000 and len(fields["location"]) <= 1000
    assert all(len(fields[k] or "") <= 500 for k in ("graph_id", "ical_uid",
                                                     "series_master_id"))
    assert all("@" in a["email"] for a in fields["attendees"])
    assert fields["recurrence"] is None or len(json.dumps(fields["recurrence"])) <= 8192
    json.dumps({k: v for k, v in fields.items() if not isinstance(v, datetime)})
    assert digest(fields) == digest(dict(fields))


@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)))
def test_graph_times_round_trip_through_the_event_body(moment):
    moment = moment.replace(microsecond=0, tzinfo=timezone.utc)
    row = {"subject": "s", "start": moment, "end": moment, "all_day": False, "location": "",
           "attendees": [], "event_type": "singleInstance", "recurrence": None}
    body = to_graph(row)
    assert parse_graph_time(body["start"]) == moment
    assert parse_graph_time({"dateTime": body["start"]["dateTime"] + ".0000000",
                             "timeZone": "UTC"}) == moment


def test_a_named_time_zone_is_honoured_and_an_unknown_one_is_utc():
    assert parse_graph_time({"dateTime": "2026-07-01T09:00:00.0000000",
                             "timeZone": "Europe/Prague"}) == datetime(2026, 7, 1, 7,
                                                                        tzinfo=timezone.utc)
    assert parse_graph_time({"dateTime": "2026-07-01T09:00:00", "timeZone": "Mars/Olympus"}
                            ) == datetime(2026, 7, 1, 9, tzinfo=timezone.utc)


# ------------------------------------------------------------------------------ Graph client
class Tokens:
    def __init__(self):
        self.invalidated = []

    def token(self):
        return "T"

    def invalidate(self, token):
        self.invalidated.append(token)


def client(handler, **options) -> tuple[GraphClient, list]:
    seen = []

    def record(request: httpx.Request):
        seen.append(request)
        return handler(request)
    # httpx.MockTransport: the real httpx client with the network replaced, for answers a
    # faithful server would never give (hostile links, floods) - deterministic and instant.
    graph = GraphClient("https://graph.example/v1.0", Tokens(), sleep=lambda s: None,
                        transport=httpx.MockTransport(record), **options)
    return graph, seen


def test_a_paging_link_to_another_host_is_never_sent_the_token():
    graph, seen = client(lambda r: httpx.Response(200, json={
        "value": [], "@odata.nextLink": "https://evil.example/v1.0/steal?$skiptoken=1"}))
    with pytest.raises(GraphError, match="ForeignLink"):
        list(graph.delta_pages("https://graph.example/v1.0/users/u/calendarView/delta"))
    assert [r.url.host for r in seen] == ["graph.example"]


def test_a_body_larger_than_the_cap_is_refused(monkeypatch):
    monkeypatch.setattr("sink.calendar.graph.MAX_BODY", 1000)
    graph, _ = client(lambda r: httpx.Response(200, content=b'{"value": "' + b"x" * 5000 + b'"}'))
    with pytest.raises(GraphError, match="ResponseTooLarge"):
        graph.request("GET", "/users")


def test_410_throttling_and_401_are_told_apart():
    answers = iter([httpx.Response(401, json={"error": {"code": "InvalidAuthenticationToken"}}),
                    httpx.Response(410, json={"error": {"code": "SyncStateNotFound"}})])
    graph, seen = client(lambda r: next(answers))
    with pytest.raises(SyncStateGone):
        graph.request("GET", "/users/u/calendarView/delta?$deltatoken=x")
    assert graph.tokens.invalidated == ["T"] and len(seen) == 2
    graph, seen = client(lambda r: httpx.Response(429, headers={"Retry-After": "bogus"}),
                         max_retries=2)
    with pytest.raises(Throttled):
        graph.request("GET", "/users")
    assert len(seen) == 3 and graph.throttled == 2


def test_a_delta_page_without_links_or_with_junk_is_an_error_not_a_loop():
    graph, _ = client(lambda r: httpx.Response(200, json={"value": "junk"}))
    with pytest.raises(GraphError, match="BadResponse"):
        list(graph.delta_pages("https://graph.example/v1.0/x"))
    graph, _ = client(lambda r: httpx.Response(200, content=b"[1, 2]"))
    with pytest.raises(GraphError, match="BadResponse"):
        graph.request("GET", "/users")


@given(st.text(max_size=40) | st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?\Z"),
       st.sampled_from(["UTC", "America/Adak", "Pacific/Kiritimati", "Europe/Prague",
                        "Pacific Standard Time", "", "../../etc/passwd"]) | st.text(max_size=20))
def test_any_graph_time_parses_to_aware_utc_or_none(text, zone):
    parsed = parse_graph_time({"dateTime": text, "timeZone": zone})
    assert parsed is None or (parsed.utcoffset().total_seconds() == 0 and not parsed.microsecond)


def test_the_ends_of_the_calendar_in_far_zones_are_none_not_a_crash():
    assert parse_graph_time({"dateTime": "9999-12-31T23:00:00",
                             "timeZone": "America/Adak"}) is None
    assert parse_graph_time({"dateTime": "0001-01-01T00:30:00",
                             "timeZone": "Asia/Tokyo"}) is None


@pytest.mark.parametrize("header, expected", [
    ("7", 7.0), ("0", 0.0), ("-5", 0.0), ("100000", 120.0), ("nan", 120.0), ("soon", 1.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("", 1.0)])
def test_retry_after_as_seconds_or_a_date_is_bounded(header, expected):
    from sink.calendar.graph import _retry_after
    response = httpx.Response(429, headers={"Retry-After": header})
    assert _retry_after(response, 0, 120.0) == expected


def test_stopping_cuts_a_retry_after_wait_short(tmp_path):
    import threading
    import time as clock
    from sink.calendar.service import CalendarSync
    from sink.calendar.sync import Stopped
    cfg = parse_config({"calendar": CALENDAR}, base=tmp_path).calendar
    component = CalendarSync(cfg, engine=None)
    threading.Timer(0.2, component._stopping.set).start()
    began = clock.monotonic()
    with pytest.raises(Stopped):
        component._sleep(60)
    assert clock.monotonic() - began < 5
    component.syncer.graph.close()


def test_the_token_session_never_waits_for_ever(tmp_path):
    import socket
    from sink.calendar.token import TokenError, TokenProvider, _Session
    (tmp_path / "graph.secret").write_text("s")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)                                   # accepts, never answers
    port = silent.getsockname()[1]
    cfg = calendar(authority=f"https://127.0.0.1:{port}")
    cfg = type(cfg)(**{**cfg.__dict__, "client_secret_file": tmp_path / "graph.secret"})
    session = _Session()
    session.timeout = 0.5
    with pytest.raises(TokenError, match="unavailable"):
        TokenProvider(cfg, session=session).token()
    silent.close()


# ------------------------------------------------------------------ error mails (SPEC 7)

@pytest.mark.parametrize("status, kind", [("token-refused", "credential"),
                                          ("failed", "calendar"), ("ok", None)])
def test_a_failing_pass_is_one_error_mail_of_its_kind(status, kind):
    """The background sync hands a refused secret ("credential") or failing users
    ("calendar") to the notifier after the pass; a good pass mails nothing."""
    import asyncio

    from sink.calendar.service import CalendarSync
    from sink.calendar.sync import UserReport
    sent = []

    class OnePass:
        graph = type("Graph", (), {"close": lambda self: None})()

        def run(self, user, stopping):
            return [UserReport("alice@firma.cz", status=status, error="AADSTS7000215 or 503")]

    async def run_once():
        sync = CalendarSync(calendar(), None, syncer=OnePass(),
                            notify=lambda *mail: sent.append(mail))
        await sync.start()
        while sync.passes == 0:
            await asyncio.sleep(0.01)
        await sync.stop()
    asyncio.run(asyncio.wait_for(run_once(), 10))
    assert [m[0] for m in sent] == ([kind] if kind else [])
    if kind:
        assert "alice@firma.cz" in sent[0][2] or "AADSTS7000215" in sent[0][2]


def test_cancelled_occurrences_start_at_the_series_time_in_its_zone():
    """OID dates are in the recurrence's zone: a series at 10:00 Prague time started in
    summer (08:00 UTC) has its December occurrence at 09:00 UTC. Other series' ids, junk and
    impossible dates are left out; a Windows zone name and an IANA one both work."""
    from sink.calendar.events import cancelled_occurrences, from_graph, zone_of
    master = {"id": "M1", "type": "seriesMaster", "subject": "Standup",
              "start": {"dateTime": "2026-06-01T08:00:00.0000000", "timeZone": "UTC"},
              "end": {"dateTime": "2026-06-01T08:30:00.0000000", "timeZone": "UTC"},
              "recurrence": {"pattern": {"type": "weekly", "interval": 1},
                             "range": {"type": "noEnd", "startDate": "2026-06-01",
                                       "recurrenceTimeZone": "Central Europe Standard Time"}},
              "cancelledOccurrences": ["OID.M1.2026-12-07", "OID.M1.2026-07-06", "OID.M2.2026-12-08",
                                       "junk", 5, "OID.M1.2026-13-01", "OID.M1.2026-12-07"]}
    found = cancelled_occurrences(master, from_graph(master))
    assert [(r["start"].isoformat(), r["end"].isoformat()) for r in found] == [
        ("2026-12-07T09:00:00+00:00", "2026-12-07T09:30:00+00:00"),
        ("2026-07-06T08:00:00+00:00", "2026-07-06T08:30:00+00:00")]
    assert all(r["cancelled"] and r["graph_id"] is None and r["series_master_id"] == "M1"
               and r["original_start"] == r["start"] and r["subject"] == "Standup"
               for r in found)
    assert str(zone_of("Europe/Prague")) == "Europe/Prague"
    assert zone_of("Mars Standard Time") == zone_of(None) == zone_of("x" * 200)
    master["cancelledOccurrences"] = "OID.M1.2026-12-07"             # not a list: nothing
    assert cancelled_occurrences(master, from_graph(master)) == []
