"""Error mails (SPEC 7 [notify]): through a real SMTP server (an aiosmtpd capture server),
rate-limited per kind, bounded retries, never on a message's path to its reply."""

from __future__ import annotations

import asyncio
import email
import time

import pytest
from aiosmtpd.controller import Controller

from sink.config import parse_config
from sink.config.checks import ConfigError
from sink.config.notify import NotifyConfig, parse_notify
from sink.notify import ATTEMPTS, Notifier
from sink.operations import Ops
from tests.support import free_port


class Capture:
    def __init__(self):
        self.mails: list[email.message.Message] = []
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.mails.append(email.message_from_bytes(envelope.original_content))
        return "250 OK"


@pytest.fixture
def relay():
    capture = Capture()
    port = free_port()
    controller = Controller(capture, hostname="127.0.0.1", port=port)
    controller.start()
    capture.port = port
    yield capture
    controller.stop()


def settings(port: int, interval: int = 900) -> NotifyConfig:
    return NotifyConfig("127.0.0.1", port, "crmservice@firma.cz", ("support@firma.cz",),
                        interval)


async def run_notifier(notifier: Notifier, calls, settle: float = 0.5):
    await notifier.start()
    for call in calls:
        notifier.notify(*call)
    await asyncio.sleep(settle)
    await notifier.stop(grace=10)


def test_config_section_keys_and_errors():
    config = parse_config({"notify": {"smtp_server": "mail.firma.cz:2525",
                                      "from": "crmservice@firma.cz", "to": ["support@firma.cz"],
                                      "min_interval": 60}})
    assert config.notify == NotifyConfig("mail.firma.cz", 2525, "crmservice@firma.cz",
                                         ("support@firma.cz",), 60)
    assert parse_notify({"from": "a@b.cz", "to": ["c@d.cz"]}).smtp_server == "localhost:25"
    assert parse_notify({"smtp_server": "relay", "from": "a@b.cz", "to": ["c@d.cz"]}).port == 25
    for bad, key in (({"from": "a@b.cz", "to": ["c@d.cz"], "smtp_server": "x:99999"},
                      "notify.smtp_server"),
                     ({"from": "a@b.cz", "to": []}, "notify.to"),
                     ({"to": ["c@d.cz"]}, "notify.from"),
                     ({"from": "a@b.cz", "to": ["c@d.cz"], "min_interval": "9"},
                      "notify.min_interval"),
                     ({"from": "a@b.cz", "to": ["c@d.cz"], "cc": []}, "notify.cc")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_notify(bad)


def test_a_mail_per_kind_and_the_next_says_how_many_were_held(relay):
    notifier = Notifier(settings(relay.port, interval=1))
    calls = [("message_failed", f"message #{i} failed", f"sink show {i}") for i in range(3)]
    calls.append(("worker_restarted", "storage worker 0 restarted", "see the log"))

    async def scenario():
        await run_notifier(notifier, calls, settle=0.5)
        assert len(relay.mails) == 2            # one per kind, the other two were held
        await asyncio.sleep(0.6)                # min_interval over
        await run_notifier(notifier, [("message_failed", "message #9 failed", "sink show 9")])
    asyncio.run(scenario())
    subjects = [m["Subject"] for m in relay.mails]
    assert subjects == ["[crm-sink] message #0 failed",
                        "[crm-sink] storage worker 0 restarted",
                        "[crm-sink] message #9 failed"]
    last = relay.mails[-1].get_payload()
    assert "sink show 9" in last and "2 more notification(s) of this kind were held back" in last
    assert relay.envelopes[0] == ("crmservice@firma.cz", ["support@firma.cz"])
    assert relay.mails[0]["Auto-Submitted"] == "auto-generated"
    assert notifier.sent == 3


def test_unreachable_server_is_retried_a_bounded_number_of_times_and_never_blocks():
    notifier = Notifier(settings(free_port()), retry_pause=0.01)    # nobody listens there

    async def scenario():
        await notifier.start()
        began = time.perf_counter()
        for i in range(50):
            notifier.notify("message_failed", f"#{i}", "x")     # a burst: queued, not sent
        assert time.perf_counter() - began < 0.05
        await asyncio.sleep(1.0)
        await notifier.stop(grace=5)
    asyncio.run(scenario())
    assert notifier.failed == 1 and notifier.sent == 0          # one tried, 49 held back


def test_notify_from_another_thread(relay):
    import threading
    notifier = Notifier(settings(relay.port))

    async def scenario():
        await notifier.start()
        thread = threading.Thread(target=notifier.notify,
                                  args=("source_failing", "source imap failing", "since now"))
        thread.start()
        thread.join()
        await asyncio.sleep(0.5)
        await notifier.stop()
    asyncio.run(scenario())
    assert [m["X-Sink-Notification"] for m in relay.mails] == ["source_failing"]


def test_storage_4xx_for_more_than_a_minute_notifies_once(relay):
    from sink.errors import TransientStorageError
    now = [1000.0]
    sent = []

    class Recorder:
        def notify(self, kind, subject, body):
            sent.append((kind, subject, body))
    ops = Ops(notifier=Recorder(), clock=lambda: now[0])
    down = [TransientStorageError("database unavailable")]
    for step in range(0, 130, 10):
        now[0] = 1000.0 + step
        ops.observe("lmtp", down, ["451 4.3.0 x"], None)
    assert len(sent) == 1 and sent[0][0] == "storage_deferring"
    assert "database unavailable" in sent[0][2] and "sink status" in sent[0][2]
    ops.observe("lmtp", [], ["250 ok"], None)        # a success ends the streak
    assert ops.deferring_since is None


from hypothesis import given, strategies as st  # noqa: E402


@given(st.one_of(st.text(max_size=40),
                 st.builds(lambda h, p: f"{h}:{p}", st.text(max_size=10),
                           st.text(alphabet="0123456789²٣", max_size=6))))
def test_any_smtp_server_text_is_parsed_or_refused_naming_the_key(text):
    from sink.config.metrics import parse_metrics
    for parse, key in ((lambda v: parse_notify({"smtp_server": v, "from": "a@b.cz",
                                                "to": ["c@d.cz"]}), "notify.smtp_server"),
                       (lambda v: parse_metrics({"address": v}), "metrics.address")):
        try:
            parsed = parse(text)
        except ConfigError as error:
            assert str(error).startswith(key)
            continue
        assert 0 <= parsed.port < 65536 and parsed.host


@given(st.sampled_from(["localhost", "10.0.0.1", "mail.firma.cz", "[::1]"]),
       st.integers(1, 65535))
def test_host_and_port_survive_the_round_trip(host, port):
    parsed = parse_notify({"smtp_server": f"{host}:{port}", "from": "a@b.cz", "to": ["c@d.cz"]})
    assert (parsed.host, parsed.port) == (host.strip("[]"), port)
