"""ENHANCEDSTATUSCODES (RFC 2034; RFC 2033 5: an LMTP server MUST implement it): once the
client said LHLO or EHLO, every 2xx, 4xx and 5xx reply - aiosmtpd's own as well as ours -
carries an RFC 3463 status code; the greeting and the hello's reply do not need one."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, strategies as st

from sink.intake import Intake
from sink.sources.replies import with_status_code
from tests.conftest import RunningServer, config_for, seeded
from tests.support import MailClient, make_mail

STATUS = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


@pytest.fixture
def server(tmp_path):
    engine = seeded(f"sqlite:///{tmp_path}/codes.db")
    config = config_for(str(engine.url), listeners=[
        {"protocol": "lmtp", "address": "127.0.0.1:0"},
        {"protocol": "smtp", "address": "127.0.0.1:0"}])
    running = RunningServer(config, Intake(engine), workers=0)
    yield running
    running.stop()
    engine.dispose()


def lines_of(client: MailClient, command: bytes) -> list[str]:
    client.sock.sendall(command + b"\r\n")
    lines = []
    while True:
        line = client.file.readline().decode().rstrip("\r\n")
        lines.append(line)
        if line[3:4] != "-":
            return lines


@pytest.mark.parametrize("lmtp", [True, False])
def test_every_reply_after_the_hello_has_a_status_code(server, lmtp):
    client = MailClient(server.lmtp_port if lmtp else server.smtp_port)
    hello = lines_of(client, b"LHLO client.test" if lmtp else b"EHLO client.test")
    assert "ENHANCEDSTATUSCODES" in [line[4:] for line in hello]
    commands = [b"NOOP", b"RSET", b"HELP", b"VRFY <alice@firma.cz>", b"EXPN staff", b"BOGUS",
                b"MAIL", b"RCPT TO:<crm@firma.cz>", b"DATA", b"MAIL FROM:<mta@firma.cz>",
                b"MAIL FROM:<mta@firma.cz>", b"RCPT TO:<nobody@firma.cz>",
                b"RCPT TO:<crm@firma.cz>", b"x" * 5000]
    replies = [(command[:30], lines_of(client, command)) for command in commands]
    assert lines_of(client, b"DATA")[0].startswith("354 ")
    replies.append((b"(data)", lines_of(client, make_mail() + b".")))
    replies.append((b"QUIT", lines_of(client, b"QUIT")))
    missing = [(command, lines) for command, lines in replies
               if not all(STATUS.match(line) for line in lines)]
    assert not missing, missing
    # and the codes say what happened
    first = {command: lines[0] for command, lines in reversed(replies)}
    assert first[b"MAIL FROM:<mta@firma.cz>"].startswith("250 2.1.0")
    assert replies[10][1][0].startswith("503 5.5.1")            # nested MAIL
    assert first[b"BOGUS"].startswith("500 5.5.2")
    assert first[b"MAIL"].startswith("501 5.5.4")
    assert first[b"QUIT"].startswith("221 2.0.0")


def test_the_greeting_and_a_plain_helo_session_are_left_alone(server):
    client = MailClient(server.smtp_port)
    assert not STATUS.match(f"220 {client.greeting[1]}")
    assert lines_of(client, b"HELO client.test")[0].startswith("250 ")
    assert lines_of(client, b"NOOP") == ["250 OK"]      # no EHLO: the client asked for none
    client.close()


reply_lines = st.tuples(
    st.sampled_from(["220", "221", "235", "250", "252", "334", "354", "421", "451", "452",
                     "500", "501", "502", "503", "530", "550", "552", "553", "554", "555"]),
    st.sampled_from([" ", "-"]),
    st.one_of(st.just(""), st.just("2.1.5 OK"), st.just("5.1.1 <x@y>: no"),
              st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                      max_size=40)))


@given(st.lists(reply_lines, min_size=1, max_size=5))
def test_status_codes_are_added_once_and_change_nothing_else(parts):
    reply = "\r\n".join(f"{code}{sep}{text}".rstrip(" ") for code, sep, text in parts)
    coded = with_status_code(reply)
    assert with_status_code(coded) == coded                      # once
    before, after = reply.split("\r\n"), coded.split("\r\n")
    assert len(before) == len(after)
    for old, new in zip(before, after):
        if old[:1] == "3":
            assert new == old                                     # 3xx: no code (RFC 2034)
            continue
        assert STATUS.match(new), new
        if STATUS.match(old):
            assert new == old
            continue
        # the code, its separator, then the status code inserted before the text as it was
        text = new[4:].partition(" ")[2]
        assert (new[:4] + text).rstrip(" ") == old, (old, new)
