"""Issue 13 finding 1 and SPEC 2.3: carriers are unwrapped only when trusted; DKIM results from
dkimpy (keys made here, DNS injected) and from trusted Authentication-Results only."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import dkim as dkimpy
import pytest
from hypothesis import given, settings, strategies as st
from sqlalchemy import select

from sink.config import parse_config
from sink.db import schema as t
from sink.intake import Envelope, Intake
from sink.mail import dkim
from sink.mail.parse import parse_message
from sink.mail.trust import for_box, trusted
from sink.mail.unwrap import unwrap
from tests.conftest import config_for
from tests.support import dkim_test_key, MailClient, make_mail


def carrier(sender: str, subject: str, inner: list[bytes], headers=None) -> bytes:
    outer = EmailMessage()
    outer["From"] = sender
    outer["To"] = "alice@firma.cz"
    outer["Subject"] = subject
    for name, value in (headers or {}).items():
        outer[name] = value
    outer.set_content("see attached")
    for i, raw in enumerate(inner):
        outer.add_attachment(email.message_from_bytes(raw, policy=email.policy.default),
                             filename=f"m{i}.eml")
    return outer.as_bytes(policy=outer.policy.clone(linesep="\r\n"))


def attack(sender="stranger@evil.example", headers=None) -> bytes:
    """Finding 1: a stranger's wrapper carrying a forged opt-out and a forged activity."""
    return carrier(sender, "> fyi", [
        make_mail(sender="vip@partner.cz", to=("alice@firma.cz",), subject="do not send"),
        make_mail(sender="bob@firma.cz", to=("jan@acme.cz",), subject="Contract:2023-015",
                  body="about contract 2023-015")], headers=headers)


def flags_of(engine, email_address):
    with engine.connect() as conn:
        return conn.execute(select(t.contacts.c.allow_emails, t.contacts.c.allow_bulk_emails)
                            .where(t.contacts.c.email == email_address)).one()


def bob_contract_activities(engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(
            select(t.activities.c.id).join(t.users, t.users.c.id == t.activities.c.responsible_id)
            .join(t.contracts, t.contracts.c.id == t.activities.c.contract_id)
            .where(t.users.c.email == "bob@firma.cz", t.contracts.c.number == "2023-015")
        ).all())


def stored(engine):
    with engine.connect() as conn:
        return conn.execute(select(t.messages).order_by(t.messages.c.id)).all()


@pytest.mark.parametrize("sender", ["stranger@evil.example", "alice@firma.cz"])
def test_finding1_forged_wrapper_over_lmtp_changes_nothing(engine, db_url, start_server,
                                                           sender):
    """End to end over a live LMTP listener: the stranger's wrapper (and one with a forged
    From of a real user but no authentication) is stored as one ordinary message."""
    config = config_for(db_url, listeners=[{"protocol": "lmtp", "address": "127.0.0.1:0"}])
    server = start_server(cfg=config)
    client = MailClient(server.lmtp_port)
    client.hello()
    [_, (code, text)] = client.send(attack(sender))
    client.close()
    assert code == 250, text
    assert flags_of(engine, "vip@partner.cz") == (True, True)
    assert bob_contract_activities(engine) == 0
    [row] = stored(engine)
    assert row.verdict != "UNWRAPPED" and row.parent_id is None and row.dkim == "none"
    [note] = [e for e in row.trace if e["rule"] == "unwrap"]
    assert note["outcome"] == "skip" and "not trusted" in note["detail"]


def test_authenticated_user_wrapper_is_unwrapped(engine):
    box = parse_config({"boxes": [{"address": "crm@firma.cz",
                                   "trusted_authserv_ids": ["mx.firma.cz"]}]}).boxes[0]
    raw = attack("alice@firma.cz", {"Authentication-Results":
                                    "mx.firma.cz; dkim=pass header.d=firma.cz"})
    [delivery] = Intake(engine).deliver(raw, Envelope("lmtp", "mta@firma.cz"), [box])
    assert delivery.verdict == "UNWRAPPED" and len(delivery.carried) == 2
    assert bob_contract_activities(engine) == 1
    assert stored(engine)[0].dkim == "pass"


def test_a_wrappers_number_links_every_message_it_carries(engine):
    """SPEC 2.3 / seed 004: "> @CREATOR #NUMBER subject" links every carried message to the
    task or ticket NUMBER (found in review: it linked none). The carried messages name no
    number themselves."""
    from sink.mail.unwrap import wrapper_number
    assert wrapper_number("> @E-mails #10009555 log file with exception") == "10009555"
    assert wrapper_number("> #T-100 no creator") == "T-100"
    assert wrapper_number("> @E-mails log file") is None
    assert wrapper_number("Re: > @x #5") is None
    box = parse_config({"boxes": [{"address": "crm@firma.cz",
                                   "trusted_authserv_ids": ["mx.firma.cz"]}]}).boxes[0]
    carried = [make_mail(sender="jan@acme.cz", to=("alice@firma.cz",), subject=f"login {i}")
               for i in range(2)]
    raw = carrier("alice@firma.cz", "> @alice #T-100 customer mail", carried, headers={
        "Authentication-Results": "mx.firma.cz; dkim=pass header.d=firma.cz"})
    [delivery] = Intake(engine).deliver(raw, Envelope("lmtp", "mta@firma.cz"), [box])
    assert delivery.verdict == "UNWRAPPED" and len(delivery.carried) == 2
    with engine.connect() as conn:
        linked = conn.execute(select(t.tasks.c.number).join(
            t.activities, t.activities.c.task_id == t.tasks.c.id)).scalars().all()
    assert linked == ["T-100", "T-100"]


def test_check_and_ingest_say_why_a_carrier_was_not_unwrapped(engine):
    """Found in review: the trace entry was stored (sink show had it) but the check and
    ingest JSON started at the rules', so `sink check` could not tell why."""
    box = box_with()
    raw = attack("stranger@evil.example")
    [checked] = Intake(engine).evaluate_only(raw, box, Envelope("lmtp", "mta@firma.cz"))
    [delivery] = Intake(engine).deliver(raw, Envelope("lmtp", "mta@firma.cz"), [box])
    for trace in (checked.trace, delivery.decision.trace):
        assert (trace[0].rule, trace[0].outcome) == ("unwrap", "skip")
        assert "not a directory user" in trace[0].detail
    assert delivery.decision.as_json()["trace"][0]["rule"] == "unwrap"
    assert [e["rule"] for e in stored(engine)[0].trace][:2] == ["unwrap", "duplicate"]


def test_untrusted_authserv_id_does_not_authenticate(engine):
    box = parse_config({"boxes": [{"address": "crm@firma.cz",
                                   "trusted_authserv_ids": ["mx.firma.cz"]}]}).boxes[0]
    raw = attack("alice@firma.cz", {"Authentication-Results":
                                    "evil.example; dkim=pass header.d=firma.cz"})
    [delivery] = Intake(engine).deliver(raw, Envelope("lmtp", "mta@firma.cz"), [box])
    assert delivery.verdict != "UNWRAPPED" and bob_contract_activities(engine) == 0
    assert stored(engine)[0].dkim == "none"


def journal(sender: str) -> bytes:
    original = make_mail(sender="vip@partner.cz", to=("alice@firma.cz",), subject="do not send")
    return carrier(sender, "journal", [original], headers={"X-MS-Journal-Report": ""})


def box_with(**keys):
    return parse_config({"boxes": [{"address": "crm@firma.cz", **keys}]}).boxes[0]


def test_journal_report_only_from_journal_senders(directory):
    raw = journal("journal@firma.cz")
    parsed = parse_message(raw)
    carried = unwrap(parsed)
    assert carried.kind == "journal"
    assert trusted("journal", parsed, box_with(), directory, False)[0] is False
    assert trusted("journal", parsed, box_with(journal_senders=["journal@firma.cz"]),
                   directory, False)[0] is True
    # the envelope sender counts too, and a forged From elsewhere does not
    box = box_with(journal_senders=["exchange@firma.cz"])
    assert trusted("journal", parsed, box, directory, False, "Exchange@firma.cz")[0] is True
    assert trusted("journal", parsed, box, directory, False, "x@evil.example")[0] is False


def test_a_forged_journal_report_cannot_vouch_for_what_it_carries(engine):
    """Found in review: a stranger's 'journal report' (its From is the journal sender, known
    to anyone) carrying an opt-out with a forged Authentication-Results of our own MTA. No MTA
    removes headers inside an attachment: that header is the stranger's word. Unwrapped (SPEC
    2.3), but its content is unauthenticated, so the opt-out changes nothing."""
    sender = "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@firma.cz"
    box = box_with(journal_senders=[sender], trusted_authserv_ids=["mx.firma.cz"],
                   authenticated_side_effects=True)
    inner = b"Authentication-Results: mx.firma.cz; dkim=pass header.d=partner.cz\r\n" + \
        make_mail(sender="vip@partner.cz", to=("alice@firma.cz",), subject="nechci")
    raw = carrier(f"Microsoft Exchange <{sender}>", "journal", [inner],
                  headers={"X-MS-Journal-Report": ""})
    stranger = Envelope("smtp", "attacker@evil.example", ("crm@firma.cz",))
    [delivery] = Intake(engine).deliver(raw, stranger, [box])
    assert delivery.verdict == "UNWRAPPED" and len(delivery.carried) == 1
    assert flags_of(engine, "vip@partner.cz") == (True, True)
    outer = [r for r in stored(engine) if r.id == delivery.message_id][0]
    [unwrap_entry] = [e for e in outer.trace if e["rule"] == "unwrap"]
    assert "not authenticated, so neither is what it carries" in unwrap_entry["detail"]
    # such a report vouched for by our MTA: what it carries is believed
    inner = b"Authentication-Results: mx.firma.cz; dkim=pass header.d=partner.cz\r\n" + \
        make_mail(sender="vip@partner.cz", to=("alice@firma.cz",), subject="nechci, opravdu")
    raw = carrier(f"Microsoft Exchange <{sender}>", "journal 2", [inner], headers={
        "X-MS-Journal-Report": "",
        "Authentication-Results": "mx.firma.cz; dkim=pass header.d=firma.cz"})
    Intake(engine).deliver(raw, stranger, [box])
    assert flags_of(engine, "vip@partner.cz") == (False, False)


def test_pec_only_when_the_box_says_so(directory):
    parsed = parse_message(make_mail())
    assert trusted("pec", parsed, box_with(), directory, True)[0] is False
    assert trusted("pec", parsed, box_with(pec=True), directory, False)[0] is True


def test_optout_needs_authentication_when_the_box_says_so(engine):
    raw = make_mail(sender="jan@acme.cz", subject="do not send")
    box = box_with(authenticated_side_effects=True)
    [delivery] = Intake(engine).deliver(raw, Envelope("lmtp"), [box])
    assert flags_of(engine, "jan@acme.cz") == (True, True)
    [entry] = [e for e in delivery.decision.trace if e.rule == "opt-out"] or \
        [e for e in delivery.decision.trace if "opt" in e.rule]
    assert entry.outcome == "skip" and "not authenticated" in entry.detail
    # the same with a trusted Authentication-Results: the opt-out happens
    box = box_with(authenticated_side_effects=True, trusted_authserv_ids=["mx.firma.cz"])
    raw = make_mail(sender="jan@acme.cz", subject="please do not send", headers={
        "Authentication-Results": "mx.firma.cz; dkim=pass header.d=acme.cz"})
    Intake(engine).deliver(raw, Envelope("lmtp"), [box])
    assert flags_of(engine, "jan@acme.cz") == (False, False)


# ------------------------------------------------------------------------------------ DKIM

@pytest.fixture(scope="module")
def key():
    return dkim_test_key()


def signed(pem: bytes, domain: bytes = b"acme.cz", sender="jan@acme.cz") -> bytes:
    raw = make_mail(sender=sender, subject="signed")
    signature = dkimpy.sign(raw, b"sel", domain, pem, include_headers=[b"from", b"subject"])
    return signature + raw


def dns_for(record: bytes, asked: list | None = None):
    def lookup(name, timeout=5):
        if asked is not None:
            asked.append((name, timeout))
        return record if name in (b"sel._domainkey.acme.cz.", "sel._domainkey.acme.cz.") \
            else None
    return lookup


def test_dkim_pass_with_a_key_made_here(key):
    pem, record = key
    asked = []
    assert dkim.verify(signed(pem), "acme.cz", dnsfunc=dns_for(record, asked)) == "pass"
    assert asked and all(timeout == 2.0 for _, timeout in asked)


def test_dkim_fail_when_altered_or_not_aligned(key):
    pem, record = key
    raw = signed(pem).replace(b"Subject: signed", b"Subject: changed")
    assert dkim.verify(raw, "acme.cz", dnsfunc=dns_for(record)) == "fail"
    # a valid signature of acme.cz on a From of another domain authenticates nobody
    assert dkim.verify(signed(pem, sender="boss@firma.cz"), "firma.cz",
                       dnsfunc=dns_for(record)) == "fail"


def test_dkim_none_and_temperror(key):
    pem, _ = key
    assert dkim.verify(make_mail(), "acme.cz") == "none"

    def broken(name, timeout=5):
        raise TimeoutError("DNS did not answer")
    assert dkim.verify(signed(pem), "acme.cz", dnsfunc=broken) == "temperror"


def test_verify_many_runs_side_by_side_within_a_bound(key):
    import time
    pem, record = key

    def slow(name, timeout=5):
        time.sleep(0.5)
        return record
    items = [(signed(pem), "acme.cz") for _ in range(8)] + [(make_mail(), "acme.cz")]
    began = time.monotonic()
    results = dkim.verify_many(items, dnsfunc=slow)
    assert results == ["pass"] * 8 + ["none"]
    assert time.monotonic() - began < 2.5            # not 8 x 0.5 s one after another

    def stuck(name, timeout=5):
        time.sleep(3)
        return record
    began = time.monotonic()
    assert dkim.verify_many(items[:2], dnsfunc=stuck, bound=0.5) == ["temperror"] * 2
    assert time.monotonic() - began < 1.5


def test_authentication_results_trusted_and_untrusted():
    header = "mx.firma.cz; spf=pass smtp.mailfrom=acme.cz; dkim=pass header.d=acme.cz"
    assert dkim.from_authentication_results([header], ["mx.firma.cz"], "acme.cz") == "pass"
    assert dkim.from_authentication_results([header], ["other.cz"], "acme.cz") is None
    assert dkim.from_authentication_results([header], ["mx.firma.cz"], "firma.cz") == "fail"
    assert dkim.from_authentication_results(["mx.firma.cz; dkim=temperror"], ["mx.firma.cz"],
                                            "acme.cz") == "temperror"
    assert dkim.from_authentication_results(["garbage ;;; ="], ["mx.firma.cz"], "a.cz") is None


def test_dkim_result_is_stored_and_shown(engine, key, monkeypatch):
    pem, record = key
    monkeypatch.setattr(dkim.dnsplug, "get_txt", dns_for(record))
    [delivery] = Intake(engine).deliver(signed(pem), Envelope("cli"), [box_with()])
    assert stored(engine)[0].dkim == "pass"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=4), st.text(max_size=30))
def test_authentication_results_parser_never_raises(headers, domain):
    result = dkim.from_authentication_results(headers, ["mx.firma.cz"], domain)
    assert result in (None, "pass", "fail", "none", "temperror")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600))
def test_dkim_verify_never_raises_on_hostile_bytes(raw):
    lookup = dns_for(b"v=DKIM1; p=")
    assert dkim.verify(b"DKIM-Signature: " + raw, "a.cz", dnsfunc=lookup) in (
        "pass", "fail", "none", "temperror")


def test_the_resolver_is_asked_once_per_key_and_a_failure_is_remembered_briefly(key):
    """Every DKIM lookup is on a message's way to its 250: a selector's key is asked for once
    (KEY_TTL), and a resolver that does not answer costs one timeout per key every MISS_TTL,
    not one per message (without this a DNS outage made 26 msgs/s of 860)."""
    pem, record = key
    now = [0.0]
    asked, down = [], [False]

    def resolve(name, timeout):
        asked.append(name)
        if down[0]:
            raise TimeoutError("DNS did not answer")
        return record if b"sel._domainkey.acme.cz" in name else None
    cache = dkim._KeyCache(resolve, clock=lambda: now[0])
    for _ in range(5):
        assert dkim.verify(signed(pem), "acme.cz", dnsfunc=cache) == "pass"
    assert len(asked) == 1
    now[0] += dkim.KEY_TTL + 1
    down[0] = True
    for _ in range(5):
        assert dkim.verify(signed(pem), "acme.cz", dnsfunc=cache) == "temperror"
    assert len(asked) == 2                          # the failure is remembered ...
    now[0] += dkim.MISS_TTL + 1
    down[0] = False
    assert dkim.verify(signed(pem), "acme.cz", dnsfunc=cache) == "pass"
    assert len(asked) == 3                          # ... for MISS_TTL only
