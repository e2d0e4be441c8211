"""Attachment records end to end (issue 17): ingest stores them with the message, `sink show`
lists them, `sink show ID --part N` writes exactly the decoded bytes (differential against the
email package over the whole corpus), check/ingest JSON carries them, a TNEF body reaches the
rules. SQLite and PostgreSQL."""

from __future__ import annotations

import email
import sys
from email.message import Message

import pytest
from sqlalchemy import func, select

from sink.cli import main
from sink.log import configure
from sink.db import schema as t
from sink.db.engine import make_engine
from tests import attachment_corpus as corpus
from tests.attachment_corpus import CORPUS
from tests.test_cli import lines, setup, sink  # noqa: F401 - the CLI fixture and helpers


def _leaves(msg: Message, path: str = ""):
    payload = msg.get_payload()
    if msg.get_content_maintype() == "multipart" and isinstance(payload, list):
        for i, child in enumerate(payload, 1):
            yield from _leaves(child, f"{path}.{i}" if path else str(i))
    else:
        yield path or "1", msg


@pytest.fixture
def in_process():
    """``sink.cli.main`` in this process; afterwards the log goes to the real stderr again
    (main configures it on the captured one, which pytest closes)."""
    yield main
    saved, sys.stderr = sys.stderr, sys.__stderr__
    try:
        configure("warning")
    finally:
        sys.stderr = saved


def _ingest(config, tmp_path, name: str, raw: bytes) -> dict:
    path = tmp_path / f"{name}.eml"
    path.write_bytes(raw)
    [out] = lines(sink(config, "ingest", path, check=True))
    return out


def _url(config) -> str:
    text = config.read_text()
    return text.split('url = "', 1)[1].split('"', 1)[0]


def test_ingest_json_and_records(setup, tmp_path):
    config, _ = setup
    out = _ingest(config, tmp_path, "czech", corpus.czech_names())
    assert out["attachments"] == [
        {"name": "Nabídka služeb – žluťoučký kůň.pdf", "type": "application/pdf", "size": 75123},
        {"name": "Příloha č.2.xlsx", "type": "application/octet-stream", "size": 3000}]
    engine = make_engine(_url(config))
    with engine.connect() as conn:
        rows = conn.execute(select(t.attachments).where(
            t.attachments.c.message_id == out["id"]).order_by(t.attachments.c.position)).all()
        assert [(r.position, r.part, r.inline) for r in rows] == [(1, "2", False), (2, "3", False)]
        # the content is not copied: the raw bytes are the only copy
        assert "content" not in t.attachments.c and len(rows[0].sha256) == 64
    # the same bytes again: already stored, no second set of records
    [again] = lines(sink(config, "ingest", tmp_path / "czech.eml", check=True))
    assert again["already_stored"] is True
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.attachments)).scalar() == 2
    engine.dispose()


def test_check_json_lists_attachments_and_writes_nothing(setup, tmp_path):
    config, mails = setup
    path = tmp_path / "inline.eml"
    path.write_bytes(corpus.inline_images())
    plain, inline = lines(sink(config, "check", mails["in.eml"], path, check=True))
    assert plain["attachments"] == []                   # never absent
    assert inline["attachments"] == [
        {"name": "logo.png", "type": "image/png", "size": 6000},
        {"name": "part-1.2.3.gif", "type": "image/gif", "size": 700},
        {"name": "offer.pdf", "type": "application/pdf", "size": 20000}]
    engine = make_engine(_url(config))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.attachments)).scalar() == 0
    engine.dispose()


def test_show_lists_attachments_with_text_made_visible(setup, tmp_path):
    config, _ = setup
    out = _ingest(config, tmp_path, "names", corpus.hostile_names())
    shown = sink(config, "show", out["id"], check=True).stdout.decode()
    assert "attachments: 6" in shown
    assert "'../../etc/passwd' application/octet-stream 16 bytes" in shown
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\\x1b[31mred\\x07" in shown and "\\u202e" in shown
    inline = _ingest(config, tmp_path, "inline", corpus.inline_images())
    shown = sink(config, "show", inline["id"], check=True).stdout.decode()
    assert "1.2.2    'logo.png' image/png 6000 bytes" in shown
    assert "cid=logo@firma.cz inline" in shown
    nested = _ingest(config, tmp_path, "nested", corpus.nested_rfc822())
    assert "subject='Re: schůzka'" in sink(config, "show", nested["id"], check=True).stdout.decode()


def test_show_part_errors(setup, tmp_path):
    config, _ = setup
    out = _ingest(config, tmp_path, "czech", corpus.czech_names())
    for part, message in (("9", f"message {out['id']}: no part 9"),
                          ("../1", f"message {out['id']}: no part ../1")):
        result = sink(config, "show", out["id"], "--part", part)
        assert result.returncode == 2 and message in result.stderr.decode()
        assert result.stdout == b""
    assert sink(config, "show", 999, "--part", "1").returncode == 2
    assert sink(config, "show", out["id"], "--part", "2", "--raw").returncode == 2


def test_show_part_equals_the_email_package_for_every_part_of_the_corpus(
        setup, tmp_path, in_process, capsysbinary):
    """The differential test: every leaf part of every corpus message, stored, then written by
    `sink show ID --part N`, is exactly what the email package decodes for that part (a nested
    message: the message as the email package writes it back)."""
    config, _ = setup
    checked, paths = 0, []
    for name, build in CORPUS.items():
        paths.append(tmp_path / f"{name}.eml")
        paths[-1].write_bytes(build())
    stored = lines(sink(config, "ingest", *paths, check=True))
    assert len(stored) == len(paths)
    capsysbinary.readouterr()
    for path, out in zip(paths, stored):
        name, raw, message_id = path.stem, path.read_bytes(), out["id"]
        for number, part in _leaves(email.message_from_bytes(raw)):
            assert in_process(["--config", str(config), "show", str(message_id),
                               "--part", number]) == 0
            written = capsysbinary.readouterr().out
            if part.get_content_maintype() == "message":
                assert email.message_from_bytes(written)["From"], (name, number)
            else:
                assert written == (part.get_payload(decode=True) or b""), (name, number)
            checked += 1
    assert checked > 100


def test_tnef_parts_and_body_through_the_cli(setup, tmp_path, in_process, capsysbinary):
    config, _ = setup
    out = _ingest(config, tmp_path, "tnef", corpus.with_tnef("umlaut"))
    assert [a["name"] for a in out["attachments"]] == [
        "TBZ PARIV GmbH.jpg", "image003.jpg", "UmlautAnhang-äüö.txt"]
    capsysbinary.readouterr()
    assert in_process(["--config", str(config), "show", str(out["id"]), "--part", "2/3"]) == 0
    from sink.mail.tnef import unpack
    assert capsysbinary.readouterr().out == unpack(corpus.tnef_sample("umlaut")).files[2].data
    # winmail.dat without a plain part: its RTF body is the activity's text
    rtf = _ingest(config, tmp_path, "rtf", corpus.with_tnef("rtf", text=False))
    assert rtf["verdict"] == "PROCESSED" and rtf["attachments"] == []
    engine = make_engine(_url(config))
    with engine.connect() as conn:
        text = conn.execute(select(t.activities.c.text).where(
            t.activities.c.message_id == rtf["id"])).scalar()
    engine.dispose()
    assert "Greg Allen" in text


def test_broken_tnef_is_stored_and_processed(setup, tmp_path):
    config, _ = setup
    out = _ingest(config, tmp_path, "broken", corpus.broken_tnef())
    assert out["status"] == "processed"
    assert [a["name"] for a in out["attachments"]] == ["winmail.dat", "WINMAIL.DAT"]
    shown = sink(config, "show", out["id"], check=True).stdout.decode()
    assert "(tnef: unreadable; kept whole)" in shown


@pytest.mark.parametrize("kind", ["failed"])
def test_records_are_written_for_a_message_whose_rules_fail(kind, db_url, tmp_path):
    """Attachments are part of the message, not of its decision: a rule that raises still leaves
    them (the message is kept for replay)."""
    from sink.intake import Envelope, Intake
    from tests.conftest import config_for, seeded

    def broken(*args, **kwargs):
        raise RuntimeError("rule bug")
    engine = seeded(db_url)
    intake = Intake(engine, rules=broken)
    box = config_for(db_url).boxes[0]
    [delivery] = intake.deliver(corpus.czech_names(), Envelope("cli", rcpt_tos=(box.address,)),
                                [box])
    assert delivery.status == kind
    with engine.connect() as conn:
        names = conn.execute(select(t.attachments.c.name).where(
            t.attachments.c.message_id == delivery.message_id)).scalars().all()
    engine.dispose()
    assert len(names) == 2


def test_hostile_structure_stored_without_a_database_error(db_url):
    """49 nested levels, each after 150 sibling parts: ~7,400 records with part numbers of
    ~200 characters, stored in the message's transaction (every column holds what it gets)."""
    from sink.intake import Envelope, Intake
    from tests.conftest import config_for, seeded
    levels, siblings = 49, 150
    raw = b"From: a@b.cz\r\nSubject: deep and wide\r\nMIME-Version: 1.0\r\n"
    leaf = b"Content-Type: image/png\r\nContent-ID: <" + b"c" * 600 + b">\r\n\r\nx\r\n"
    for level in range(levels):
        raw += f"Content-Type: multipart/mixed; boundary=l{level}\r\n\r\n".encode()
        raw += (f"--l{level}\r\n".encode() + leaf) * siblings + f"--l{level}\r\n".encode()
    raw += b"Content-Type: application/pdf; name=\"" + "ž".encode() * 400 + b"\"\r\n\r\nend\r\n"
    engine = seeded(db_url)
    box = config_for(db_url).boxes[0]
    [delivery] = Intake(engine).deliver(raw, Envelope("cli", rcpt_tos=(box.address,)), [box])
    with engine.connect() as conn:
        count, longest = conn.execute(select(func.count(), func.max(func.length(
            t.attachments.c.part))).where(t.attachments.c.message_id == delivery.message_id)
        ).one()
        last = conn.execute(select(t.attachments.c.name, t.attachments.c.part).where(
            t.attachments.c.message_id == delivery.message_id).order_by(
            t.attachments.c.position.desc()).limit(1)).one()
    engine.dispose()
    assert count == levels * siblings + 1 and longest > 190
    assert last.name == "ž" * 255 and last.part.count(".") == levels - 1
