"""Issue 12 end to end: a real Postfix writes the bounces, a real ``sink serve`` reads them.

A private Postfix (tests/postfix_harness.py, configured from deploy/postfix/) refuses mail for
three test domains for good, as a remote server would - the mailbox does not exist (5.1.1),
the mailbox is full (5.2.2), our IP is on a blacklist (5.7.1) - and sends its delivery status
notifications back to the envelope sender: the box itself (Postfix gives its own bounces no
always_bcc copy), so they reach the sink over LMTP as a bounce to the box does in production. Only the dead mailbox is flagged; all three are recorded as bounces."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import create_engine, select

from sink.db import schema as t
from tests.postfix_harness import (PostfixInstance, SinkProcess, _run,
                                   running_postfix, tool, wait_until)
from tests.support import DIRECTORY, make_mail

TIMEOUT = 60
REFUSALS = {
    "gone.example": "error:5.1.1 <nobody@gone.example>: Recipient address rejected: User unknown",
    "full.example": "error:5.2.2 Mailbox full",
    "listed.example": "error:5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
                      "zen.spamhaus.org",
}


class RefusingPostfix(PostfixInstance):
    """The harness's Postfix with one transport entry per test domain that refuses for good,
    after accepting the mail (as a relay does: the refusal comes from the next hop)."""

    def instance_settings(self) -> dict[str, str]:
        return {**super().instance_settings(), "smtpd_reject_unlisted_recipient": "no"}

    def build(self) -> None:
        super().build()
        transport = self.conf / "transport"
        extra = "".join(f"{domain} {how}\n" for domain, how in REFUSALS.items())
        transport.write_text(transport.read_text("utf-8") + extra)
        _run([tool("postmap"), "-c", str(self.conf), f"hash:{transport}"])


@pytest.fixture(scope="module")
def postfix(request):
    with running_postfix(RefusingPostfix, prefix="crm-sink-bounces-") as instance:
        yield instance


@pytest.fixture
def sink(postfix, tmp_path):
    postfix.purge()
    process = SinkProcess(tmp_path, box=postfix.box, lmtp_port=postfix.sink_port,
                          directory=DIRECTORY)
    try:
        process.prepare()
        yield process
    finally:
        process.stop()


def stored(sink: SinkProcess):
    engine = create_engine(sink.database_url)
    try:
        with engine.connect() as conn:
            bounces = conn.execute(select(t.bounces.c.email, t.bounces.c.kind,
                                          t.bounces.c.status)).all()
            forbidden = conn.execute(select(t.forbidden_addresses.c.email,
                                            t.forbidden_addresses.c.type)).all()
            verdicts = conn.execute(select(t.messages.c.sender, t.messages.c.verdict)).all()
        return sorted(bounces), sorted(forbidden), verdicts
    finally:
        engine.dispose()


@pytest.mark.postfix
def test_postfix_bounces_are_read_hard_and_soft_and_only_the_dead_mailbox_flags(postfix, sink):
    why = lambda: f"{postfix.diagnostics()}\n{sink.diagnostics()}"     # noqa: E731
    sink.start()
    for count, domain in enumerate(REFUSALS, 1):
        raw = make_mail(sender="Alice <alice@firma.cz>", to=(f"nobody@{domain}",),
                        subject=f"Offer {uuid.uuid4().hex[:8]}", body="Hello,\nthe offer.")
        postfix.submit(raw, postfix.box, [f"nobody@{domain}"])
        wait_until(lambda: len(stored(sink)[0]) >= count, TIMEOUT, f"bounce record {count}", why)
        # Postfix's bounces differ from each other only in Message-ID and body: within one
        # second they share SPEC 5 step 1's key (date, sender, recipients, subject)
        time.sleep(1.1)
    bounces, forbidden, verdicts = stored(sink)
    assert bounces == [("nobody@full.example", "soft", "5.2.2"),
                       ("nobody@gone.example", "hard", "5.1.1"),
                       ("nobody@listed.example", "soft", "5.7.1")], why()
    assert forbidden == [("nobody@gone.example", "broken")], why()
    # the reports come from MAILER-DAEMON and are never SPAM
    assert all(verdict != "SPAM" for _, verdict in verdicts), verdicts
