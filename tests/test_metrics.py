"""/metrics (prometheus-client text format, SPEC 7 names) checked against the database, and
/healthz; worker restarts reach the metrics and the error mails."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from sink.config import parse_config
from sink.config.checks import ConfigError
from sink.db import schema as t
from sink.intake import Envelope, Intake
from tests.conftest import config_for
from tests.ops_support import RunningApp, sink_cli
from tests.support import MailClient, make_mail, wait_for, write_config
from tests.test_notify import relay  # noqa: F401 - the capture relay fixture

SPEC_NAMES = {"sink_messages_total", "sink_replies_total", "sink_reply_seconds",
              "sink_source_last_success_timestamp_seconds", "sink_messages_failed",
              "sink_messages_pending", "sink_worker_restarts_total", "sink_suspended"}


def scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


def health(port: int) -> tuple[int, str]:
    try:
        reply = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
        return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def metered(engine, db_url, tmp_path):
    config = config_for(db_url, listeners=[{"protocol": "lmtp", "address": "127.0.0.1:0"},
                                           {"protocol": "smtp", "address": "127.0.0.1:0"}])
    import dataclasses
    from sink.config.metrics import MetricsConfig
    config = dataclasses.replace(config, metrics=MetricsConfig("127.0.0.1", 0))
    path = tmp_path / "sink.toml"
    write_config(path, db_url, 1)
    running = RunningApp(config, engine)
    running.metrics_port = next(c for c in running.app.background
                                if hasattr(c, "bound")).bound[1]
    yield running, path
    running.stop()


def test_metrics_section():
    assert parse_config({"metrics": {"address": "0.0.0.0:9464"}}).metrics.port == 9464
    assert parse_config({"metrics": {}}).metrics.address == "127.0.0.1:9464"
    with pytest.raises(ConfigError, match="metrics.address"):
        parse_config({"metrics": {"address": "nowhere"}})


def test_metrics_match_the_database(metered, engine):
    running, path = metered
    lmtp, smtp = running.ports[0][1], running.ports[1][1]
    client = MailClient(lmtp)
    client.hello()
    first = make_mail(subject="one", message_id="<m1@acme.cz>")
    for raw in (first, first, b"X-Copy: 1\r\n" + first, make_mail(subject="two")):
        assert client.send(raw)[-1][0] == 250          # the second is already stored
    client.close()
    client = MailClient(smtp)
    client.hello(lmtp=False)
    assert client.send(make_mail(subject="three"), lmtp=False)[-1][0] == 250
    client.close()
    sink_cli(path, "suspend", "--store")
    assert wait_for(lambda: running.app.suspension.store, 2)
    client = MailClient(lmtp)
    client.hello()
    assert client.send(make_mail(subject="kept"))[-1][0] == 250
    client.close()
    Intake(engine, rules=_boom).deliver(make_mail(subject="boom"), Envelope("cli"),
                                        config_for("sqlite://").boxes)     # one failed row
    from datetime import datetime, timezone
    polled = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
    with engine.begin() as conn:                # what a source records after a good pass
        conn.execute(t.source_status.insert().values(name="imap-office", last_success=polled))
    samples = scrape(running.metrics_port)
    assert value(samples, "sink_source_last_success_timestamp_seconds",
                 source="imap-office") == polled.timestamp()
    assert SPEC_NAMES <= {s.rsplit("_bucket", 1)[0].rsplit("_count", 1)[0]
                          .rsplit("_sum", 1)[0] for s in samples}
    with engine.connect() as conn:
        rows = conn.execute(select(t.messages.c.channel, t.messages.c.status,
                                   t.messages.c.verdict, func.count()).where(
            t.messages.c.channel.in_(("lmtp", "smtp"))).group_by(
            t.messages.c.channel, t.messages.c.status, t.messages.c.verdict)).all()
        failed = conn.execute(select(func.count()).select_from(t.messages).where(
            t.messages.c.status == "failed")).scalar()
    expected = {(c, "PENDING" if s == "pending" else v): n for c, s, v, n in rows}
    counted = {(s.labels["channel"], s.labels["verdict"]): s.value
               for s in samples["sink_messages_total"]}
    assert counted == expected, (counted, expected)
    assert expected[("lmtp", "DUPLICATE")] == 1 and expected[("smtp", "PROCESSED")] == 1
    assert value(samples, "sink_replies_total", code="250") == 6
    assert value(samples, "sink_reply_seconds_count") == 6
    assert value(samples, "sink_messages_failed") == failed == 1
    assert value(samples, "sink_messages_pending") == 1
    assert value(samples, "sink_suspended") == 1
    assert value(samples, "sink_worker_restarts_total") == 0
    sink_cli(path, "suspend")
    assert wait_for(lambda: not running.app.suspension.store, 2)
    client = MailClient(lmtp)
    client.hello()
    assert client.cmd("MAIL FROM:<a@b.cz>")[0] == 451
    client.close()
    assert value(scrape(running.metrics_port), "sink_replies_total", code="451") == 1


def _boom(*args, **kwargs):
    raise RuntimeError("a rule fell over")


def test_healthz_is_200_while_serving_and_503_when_listeners_stop(metered):
    running, _ = metered
    assert health(running.metrics_port) == (200, "ok\n")
    running.loop.call_soon_threadsafe(running.app.listeners.stop_accepting)
    assert wait_for(lambda: health(running.metrics_port)[0] == 503, 5)
    assert "listeners: not accepting" in health(running.metrics_port)[1]
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/", timeout=5)


def test_a_worker_restart_is_counted_and_mailed(engine, db_url, relay):  # noqa: F811
    import dataclasses
    from sink.config.metrics import MetricsConfig
    from sink.config.notify import NotifyConfig
    config = dataclasses.replace(
        config_for(db_url, listeners=[{"protocol": "lmtp", "address": "127.0.0.1:0"}]),
        metrics=MetricsConfig("127.0.0.1", 0),
        notify=NotifyConfig("127.0.0.1", relay.port, "crmservice@firma.cz",
                            ("support@firma.cz",), 900))
    running = RunningApp(config, engine)
    try:
        port = next(c for c in running.app.background if hasattr(c, "bound")).bound[1]
        running.app.storage.workers[0].proc.kill()
        assert wait_for(lambda: value(scrape(port), "sink_worker_restarts_total") == 1, 10)
        assert wait_for(lambda: relay.mails, 10)
        assert relay.mails[0]["Subject"] == "[crm-sink] storage worker 0 restarted"
        assert wait_for(lambda: health(port)[0] == 200, 15)      # the new worker is up
    finally:
        running.stop()


def test_a_failed_message_is_mailed_with_what_to_run(engine, db_url, relay):  # noqa: F811
    import asyncio
    import threading
    from sink.app import SinkApp
    from sink.notify import Notifier
    from sink.config.notify import NotifyConfig
    from sink.storage import make_storage
    config = config_for(db_url, listeners=[{"protocol": "lmtp", "address": "127.0.0.1:0"}])
    notifier = Notifier(NotifyConfig("127.0.0.1", relay.port, "crmservice@firma.cz",
                                     ("support@firma.cz",), 900))
    app = SinkApp(config, make_storage(config, intake=Intake(engine, rules=_boom)),
                  notifier=notifier)
    loop = asyncio.new_event_loop()
    port = loop.run_until_complete(app.start())[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        client = MailClient(port)
        client.hello()
        code, text = client.send(make_mail(subject="boom"))[-1]
        client.close()
        assert code == 250 and "rules failed" in text
        message_id = int(text.split("#")[1].split()[0])
        assert wait_for(lambda: relay.mails, 10)
        body = relay.mails[0].get_payload()
        assert relay.mails[0]["Subject"] == f"[crm-sink] message #{message_id} failed in the rules"
        assert f"sink show {message_id}" in body and f"sink replay {message_id}" in body
        assert "a rule fell over" in body
    finally:
        asyncio.run_coroutine_threadsafe(app.stop(grace=5), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_healthz_is_503_while_storage_answers_nothing_but_4xx_for_a_minute(metered):
    """Listeners that accept in front of a storage that answers 451 to every message (its
    database file deleted, a full disk) are not healthy, though the suspension poll still
    reads: 503 once the streak the storage_deferring mail reports has lasted a minute, and
    200 again with the next stored message. A single 451 is no outage."""
    from sink.errors import TransientStorageError
    running, _ = metered
    ops = running.app.ops
    now = [5000.0]
    ops.clock = lambda: now[0]
    reason = "storage unavailable: the database file was deleted (/x/sink.db); restart the sink"

    def observe(outcomes, replies):
        done = threading.Event()
        running.loop.call_soon_threadsafe(lambda: (ops.observe("lmtp", outcomes, replies, None),
                                                   done.set()))
        assert done.wait(5)
    down = ([TransientStorageError(reason)], ["451 4.3.0 storage unavailable"])
    observe(*down)
    assert health(running.metrics_port) == (200, "ok\n")       # one 451: no outage yet
    now[0] += 30
    observe(*down)
    assert health(running.metrics_port) == (200, "ok\n")       # half a minute of them
    now[0] += 31
    observe(*down)
    status, body = health(running.metrics_port)
    assert status == 503, body
    assert "storage: answering 4xx since" in body and reason in body
    client = MailClient(running.port)               # a message stored ends the streak
    client.hello()
    assert client.send(make_mail(subject="back again"))[-1][0] == 250
    client.close()
    assert wait_for(lambda: health(running.metrics_port) == (200, "ok\n"), 5)
