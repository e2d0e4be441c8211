"""Issue 13: hostile command sequences against live LMTP and SMTP listeners. No crash, no
hang, every reply a valid code, the session count back to zero and memory bounded. Bounded
to run in seconds (examples, commands per example, line lengths)."""

from __future__ import annotations

import re
import resource
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sink.intake import Intake
from tests.conftest import RunningServer, config_for, seeded

REPLY = re.compile(rb"^[2-5]\d\d[ -]")
ADDRESSES = [b"crm@firma.cz", b"CRM@Firma.CZ", b"x@y", b"", b"<>", b"a" * 300 + b"@b.cz",
             b"\xff\xfe@x.cz", b"crm@firma.cz> SIZE=99999999999", b"crm@firma.cz> BODY=8BITMIME"]
VERBS = [b"HELO", b"EHLO", b"LHLO", b"MAIL FROM:", b"RCPT TO:", b"RSET", b"NOOP", b"VRFY",
         b"HELP", b"AUTH PLAIN", b"AUTH LOGIN", b"STARTTLS", b"EXPN", b"BDAT 10", b"XYZZY"]

line = st.one_of(
    st.builds(lambda v, a: v + b" <" + a + b">" if v in (b"MAIL FROM:", b"RCPT TO:")
              else v + b" " + a, st.sampled_from(VERBS), st.sampled_from(ADDRESSES)),
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
    st.integers(min_value=500, max_value=20_000).map(lambda n: b"NOOP " + b"A" * n),
)
body = st.lists(st.one_of(st.binary(max_size=80), st.just(b"."), st.just(b".."),
                          st.just(b"\r")), max_size=8).map(
    lambda parts: b"\r\n".join(p.replace(b"\n", b"") for p in parts))
step = st.one_of(st.tuples(st.just("line"), line), st.tuples(st.just("data"), body))
session = st.tuples(st.sampled_from(["lmtp", "smtp"]),
                    st.lists(step, min_size=1, max_size=10))


class Session:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def reply(self) -> int | None:
        while True:
            text = self.file.readline(8192)
            if not text:
                return None                        # closed by the server: allowed
            assert REPLY.match(text), text
            if text[3:4] == b" ":
                return int(text[:3])

    def send(self, data: bytes) -> int | None:
        try:
            self.sock.sendall(data)
        except OSError:
            return None
        return self.reply()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    engine = seeded(f"sqlite:///{path}")
    config = config_for(f"sqlite:///{path}", listeners=[
        {"protocol": "lmtp", "address": "127.0.0.1:0", "max_message_size": 10_000,
         "timeout": 5, "data_deadline": 5},
        {"protocol": "smtp", "address": "127.0.0.1:0", "max_message_size": 10_000,
         "timeout": 5, "data_deadline": 5}])
    server = RunningServer(config, Intake(engine), workers=0)
    yield server
    server.stop()
    engine.dispose()


def run_session(server, protocol: str, steps) -> None:
    s = Session(server.port_for(protocol))
    assert s.reply() == 220
    accepted = 0
    for kind, data in steps:
        if kind == "line":
            code = s.send(data + b"\r\n")
            if code is None:
                break
            if data.upper().startswith(b"RCPT") and code == 250:
                accepted += 1
            if data.upper().startswith((b"RSET", b"MAIL", b"HELO", b"EHLO", b"LHLO")):
                accepted = 0 if code == 250 or data.upper().startswith(b"RSET") else accepted
            if code == 334:                       # AUTH wants more: abort it
                if s.send(b"*\r\n") is None:
                    break
        else:
            code = s.send(b"DATA\r\n")
            if code is None:
                break
            if code != 354:
                continue
            s.sock.sendall(data + b"\r\n.\r\n")
            replies = [s.reply() for _ in range(max(accepted, 1) if protocol == "lmtp" else 1)]
            if None in replies:
                break
            accepted = 0
    s.sock.close()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(session)
def test_hostile_command_sequences(servers, case):
    protocol, steps = case
    run_session(servers, protocol, steps)


def test_after_the_fuzz_sessions_are_gone_and_memory_bounded(servers):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(30):                   # the worst case of finding 4, many times
        s = Session(servers.port_for("smtp"))
        s.reply()
        s.sock.sendall(b"NOOP " + b"A" * 3_000_000)
        s.sock.close()
    deadline = time.monotonic() + 10
    while servers.server.listeners.live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not servers.server.listeners.live
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"max RSS grew by {grown_mb:.1f} MB")
    assert grown_mb < 64, grown_mb
