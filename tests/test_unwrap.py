"""SPEC 2.3: journal reports, wrapper messages and PEC envelopes carry the messages to process."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from sink.mail.parse import parse_message
from sink.mail.unwrap import JOURNAL, PEC, WRAPPER, unwrap
from tests.support import make_mail


def envelope(subject, inner: list[bytes], headers=None, text="See attached.",
             as_eml_file=False, names=None, sender="journal@firma.cz") -> bytes:
    outer = EmailMessage()
    outer["From"] = sender
    outer["To"] = "crm@firma.cz"
    outer["Subject"] = subject
    outer["Message-ID"] = "<outer@test>"
    for name, value in (headers or {}).items():
        outer[name] = value
    outer.set_content(text)
    for i, raw in enumerate(inner):
        name = (names or [f"mail{i}.eml"] * len(inner))[i]
        if as_eml_file:
            outer.add_attachment(raw, maintype="application", subtype="octet-stream",
                                 filename=name)
        else:
            inner_msg = email.message_from_bytes(raw, policy=email.policy.default)
            outer.add_attachment(inner_msg, filename=name)          # message/rfc822
    return outer.as_bytes(policy=outer.policy.clone(linesep="\r\n"))


def test_journal_report_uses_its_envelope_including_bcc():
    original = make_mail(sender="alice@firma.cz", to=("jan@acme.cz",), subject="Offer",
                         message_id="<orig@test>")
    report = ("Sender: alice@firma.cz\r\nSubject: Offer\r\nMessage-Id: <orig@test>\r\n"
              "To: jan@acme.cz\r\nBcc: bob@firma.cz\r\n"
              "To: sales@firma.cz, Expanded: team@firma.cz\r\n")
    raw = envelope("Offer", [original], headers={"X-MS-Journal-Report": ""}, text=report)
    result = unwrap(parse_message(raw))
    assert result.kind == JOURNAL and len(result.inner) == 1
    inner = result.inner[0].parsed
    assert inner.message_id == "<orig@test>" and inner.subject == "Offer"
    assert inner.sender == "alice@firma.cz"
    assert inner.to == ("jan@acme.cz", "sales@firma.cz")
    assert inner.bcc == ("bob@firma.cz",)
    assert "bob@firma.cz" in inner.recipients


def test_wrapper_yields_every_attached_mail_in_order():
    mails = [make_mail(subject=f"inner {i}", message_id=f"<w{i}@test>") for i in range(3)]
    raw = envelope("> @E-mails #10009555 log file", mails)
    result = unwrap(parse_message(raw))
    assert result.kind == WRAPPER
    assert [i.parsed.subject for i in result.inner] == ["inner 0", "inner 1", "inner 2"]


def test_wrapper_with_eml_files_keeps_their_exact_bytes():
    mails = [make_mail(subject=f"file {i}") for i in range(2)]
    raw = envelope("> import", mails, as_eml_file=True)
    result = unwrap(parse_message(raw))
    assert [i.raw for i in result.inner] == mails


def test_pec_processes_postacert_only():
    original = make_mail(sender="cliente@pec.it", subject="Fattura", message_id="<pec@test>")
    other = make_mail(subject="not this one")
    raw = envelope("POSTA CERTIFICATA: Fattura", [other, original],
                   headers={"X-Trasporto": "posta-certificata"},
                   names=["other.eml", "postacert.eml"])
    result = unwrap(parse_message(raw))
    assert result.kind == PEC
    assert [i.parsed.message_id for i in result.inner] == ["<pec@test>"]


def test_ordinary_mail_with_a_forwarded_attachment_is_not_unwrapped():
    raw = envelope("Fwd: your question", [make_mail()])
    assert unwrap(parse_message(raw)) is None
    assert unwrap(parse_message(make_mail(subject=">no space"))) is None


def test_nested_messages_inside_an_attachment_are_not_carried_separately():
    innermost = make_mail(subject="innermost")
    middle = envelope("Fwd: middle", [innermost])
    raw = envelope("> wrapper", [middle])
    result = unwrap(parse_message(raw))
    assert [i.parsed.subject for i in result.inner] == ["Fwd: middle"]


def test_wrapper_without_attachments_is_processed_as_itself():
    assert unwrap(parse_message(make_mail(subject="> nothing attached"))) is None


# ------------------------------------------------------------------------- through the intake

def _journal(original: bytes, report: str) -> bytes:
    return envelope("journal", [original], headers={"X-MS-Journal-Report": ""}, text=report)


def test_journal_report_is_stored_with_its_original_as_a_child(engine):
    from sqlalchemy import select
    from sink.config import parse_config
    from sink.db import schema as t
    from sink.intake import Envelope, Intake
    box = parse_config({"boxes": [{"address": "crm@firma.cz",
                                   "journal_senders": ["journal@firma.cz"]}]}).boxes[0]
    original = make_mail(sender="jan@acme.cz", to=("info@acme.cz",), subject="Question",
                         message_id="<j1@test>")
    # the original's headers name nobody at firma.cz: only the journal envelope's Bcc does
    raw = _journal(original, "Sender: jan@acme.cz\r\nTo: info@acme.cz\r\nBcc: bob@firma.cz\r\n")
    intake = Intake(engine)
    [delivery] = intake.deliver(raw, Envelope("smtp", "journal@firma.cz", ("crm@firma.cz",)),
                                [box])
    assert delivery.verdict == "UNWRAPPED"
    [child] = delivery.carried
    assert child.verdict == "PROCESSED"
    assert [a.responsible for a in child.decision.activities] == ["bob@firma.cz"]
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(t.messages))}
        raws = {r.message_id: r.content for r in conn.execute(select(t.raw_messages))}
    assert rows[child.message_id].parent_id == delivery.message_id
    assert rows[delivery.message_id].trace[0]["rule"] == "unwrap"
    assert raws[delivery.message_id] == raw                 # the report itself, byte for byte
    assert b"<j1@test>" in raws[child.message_id]
    # the MTA resends the report: nothing new
    [again] = intake.deliver(raw, Envelope("smtp"), [box])
    assert again.already_stored and again.message_id == delivery.message_id


def test_check_and_ingest_print_one_object_per_carried_message(tmp_path):
    import json
    from tests.test_cli import sink, lines
    from tests.support import DIRECTORY
    config = tmp_path / "sink.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/s.db"\n'
                      '[[boxes]]\naddress = "crm@firma.cz"\n'
                      'trusted_authserv_ids = ["mx.firma.cz"]\n')
    (tmp_path / "d.json").write_text(json.dumps(DIRECTORY))
    sink(config, "db", "upgrade", check=True)
    sink(config, "directory", "import", tmp_path / "d.json", check=True)
    wrapper = tmp_path / "wrapper.eml"
    # a wrapper is unwrapped only from an authenticated directory user (SPEC 2.3)
    wrapper.write_bytes(envelope("> @E-mails two", [
        make_mail(subject="first", to=("alice@firma.cz",)),
        make_mail(subject="second", to=("bob@firma.cz",))], sender="alice@firma.cz",
        headers={"Authentication-Results": "mx.firma.cz; dkim=pass header.d=firma.cz"}))
    checked = lines(sink(config, "check", wrapper, check=True))
    assert [c["activities"][0]["responsible"] for c in checked] == ["alice@firma.cz",
                                                                   "bob@firma.cz"]
    assert all(c["file"] == str(wrapper) for c in checked)
    ingested = lines(sink(config, "ingest", wrapper, check=True))
    assert [i["verdict"] for i in ingested] == ["PROCESSED", "PROCESSED"]
    listed = lines(sink(config, "messages", "--json", check=True))
    assert sorted(m["verdict"] for m in listed) == ["PROCESSED", "PROCESSED", "UNWRAPPED"]
    outer = next(m for m in listed if m["verdict"] == "UNWRAPPED")
    shown = sink(config, "show", outer["id"], check=True).stdout.decode()
    assert "carried:" in shown and "unwrap" in shown
