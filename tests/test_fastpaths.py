"""The fast paths of the hot loop give exactly what the plain code gives.

``fold`` (every keyword and phrase comparison) is checked against its reference definition:
``re.sub(r"\\s+", " ", unidecode(NFKC(text)).casefold())`` for non-ASCII text.
"""

from __future__ import annotations

import re
import unicodedata
import warnings

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st
from unidecode import unidecode

from sink.mail.textnorm import fold
from tests.support import make_mail

_SPACES = re.compile(r"\s+")


def reference_fold(text: str) -> str:
    if not text:
        return ""
    if not text.isascii():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # unidecode warns about lone surrogates
            text = unidecode(unicodedata.normalize("NFKC", text))
    return _SPACES.sub(" ", text.casefold())


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(), max_size=300))
def test_fold_equals_its_definition(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fold(text) == reference_fold(text)


def test_fold_examples():
    cases = ["ZAKÁZKA: 2023-015", " \t Nový\u00a0úkol:\n\nDetails ", "北京 ", "\u2028x\u3000y",
             "Straße", "ǅemal", "", " ", "\n", "ａｂｃ", "x" * 300 + " Ž " + "y" * 300,
             "mixed\udce9surrogate"]
    for text in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert fold(text) == reference_fold(text), text
    assert fold("ZAKÁZKA:") == fold("zakazka:")


# ------------------------------------------------------------------ sink.db.fastpath

def _message_row(**overrides):
    import uuid
    from datetime import datetime, timezone
    row = dict(uuid=str(uuid.uuid4()), received_at=datetime(2026, 11, 2, 10, 0, 5, 123456,
                                                             tzinfo=timezone.utc),
               channel="lmtp", box="crm@firma.cz", mail_from=None, rcpt_to=["crm@firma.cz"],
               sender="jan@acme.cz", to_addrs=["alice@firma.cz", "Žluťoučký@kůň.cz"],
               cc_addrs=[], message_id="<m@x>", size=3, sha256="ab" * 32, status="pending",
               trace=[{"rule": "duplicate", "outcome": "pass"}])
    row.update(overrides)
    return row


def test_fast_statements_store_what_core_stores(engine):
    """Rows written through sink.db.fastpath read back exactly like rows written with
    Connection.execute (JSON, timestamps, defaults, bytes, booleans), on both databases."""
    from sqlalchemy import bindparam, insert, select, update
    from sink.db import schema as t
    from sink.db.fastpath import Fast
    keys = tuple(_message_row())
    fast_insert = Fast(insert(t.messages), keys)
    fast_update = Fast(update(t.messages).where(t.messages.c.id == bindparam("pk")),
                       ("status", "trace"))
    fast_raw = Fast(insert(t.raw_messages), ("message_id", "content"))
    fast_select = Fast(select(t.messages.c.id, t.messages.c.status).where(
        t.messages.c.sha256 == bindparam("sha")))
    with engine.begin() as conn:
        fast_id = fast_insert.insert(conn, _message_row(sha256="f" * 64))
        core_id = conn.execute(insert(t.messages), _message_row(sha256="c" * 64)
                               ).inserted_primary_key[0]
        for pk in (fast_id, core_id):
            fast_update.execute(conn, {"pk": pk, "status": "processed",
                                       "trace": [{"rule": "x", "detail": "ž"}]})
        fast_raw.execute(conn, {"message_id": fast_id, "content": b"\x00\xff\r\n."})
        assert fast_select.first(conn, {"sha": "f" * 64}) == (fast_id, "processed")
        assert fast_select.first(conn, {"sha": "0" * 64}) is None
    with engine.connect() as conn:
        rows = {r.id: dict(r._mapping) for r in conn.execute(select(t.messages))}
        raw = conn.execute(select(t.raw_messages.c.content)).scalar()
    fast, core = rows[fast_id], rows[core_id]
    differ = {k for k in fast if fast[k] != core[k]}
    assert differ == {"id", "uuid", "sha256"}
    assert fast["date_header"] == "" and fast["trace"] == [{"rule": "x", "detail": "ž"}]
    assert raw == b"\x00\xff\r\n."


def test_a_row_bound_ahead_is_stored_as_the_same_row_inserted_at_once(engine):
    """Fast.bind (values bound before the write lock, as the rules deciding ahead do for the
    message row) then insert_bound stores what insert stores; a row bound for another
    statement or database is refused, never sent."""
    from sqlalchemy import insert, select
    from sink.db import schema as t
    from sink.db.fastpath import Bound, Fast
    keys = tuple(_message_row())
    fast_insert = Fast(insert(t.messages), keys)
    other = Fast(insert(t.messages), keys)
    with engine.begin() as conn:
        bound = fast_insert.bind(conn, _message_row(sha256="b" * 64, trace=[{"rule": "ž"}]))
        now_id = fast_insert.insert(conn, _message_row(sha256="n" * 64, trace=[{"rule": "ž"}]))
        ahead_id = fast_insert.insert_bound(conn, bound)
        with pytest.raises(ValueError):
            other.insert_bound(conn, bound)
        with pytest.raises(ValueError):
            fast_insert.insert_bound(conn, Bound(fast_insert, "another", bound.values))
    with engine.connect() as conn:
        rows = {r.id: dict(r._mapping) for r in conn.execute(select(t.messages))}
    assert len(rows) == 2
    differ = {k for k in rows[ahead_id] if rows[ahead_id][k] != rows[now_id][k]}
    assert differ == {"id", "uuid", "sha256"} and rows[ahead_id]["trace"] == [{"rule": "ž"}]


def test_fast_statement_errors_are_sqlalchemy_errors_and_savepoints_undo(engine):
    from sqlalchemy import exc as sa_exc
    from sqlalchemy import func, insert, select
    from sink.db import fastpath, schema as t
    from sink.db.fastpath import Fast
    fast_insert = Fast(insert(t.messages), tuple(_message_row()))
    with engine.begin() as conn:
        fast_insert.insert(conn, _message_row())
        outer = fastpath.savepoint(conn, "sink_test")
        fast_insert.insert(conn, _message_row(sha256="1" * 64))
        try:
            fast_insert.insert(conn, _message_row())          # same (box, sha256)
        except sa_exc.IntegrityError:
            fastpath.rollback_to(conn, "sink_test", outer, release=True)
        else:
            raise AssertionError("no IntegrityError")
        fast_insert.insert(conn, _message_row(sha256="2" * 64))   # the transaction goes on
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.messages)).scalar() == 2


def test_fast_statements_with_their_own_values_and_missing_ones(engine):
    """A statement's own values (a literal, a LIMIT) are bound as Core binds them; a value the
    caller must give and did not is an error naming it, never a NULL."""
    import pytest
    from sqlalchemy import bindparam, exc as sa_exc, insert, select
    from sink.db import schema as t
    from sink.db.fastpath import Fast
    insert_fast = Fast(insert(t.messages), tuple(_message_row()))
    newest = select(t.messages.c.id).where(t.messages.c.box == bindparam("box"),
                                           t.messages.c.status == "processed"
                                           ).order_by(t.messages.c.id.desc()).limit(1)
    with engine.begin() as conn:
        ids = [insert_fast.insert(conn, _message_row(sha256=f"{i}" * 64, status=status))
               for i, status in enumerate(("processed", "processed", "pending"))]
        core = conn.execute(newest, {"box": "crm@firma.cz"}).first()
        assert Fast(newest).first(conn, {"box": "crm@firma.cz"}) == tuple(core) == (ids[1],)
        incomplete = _message_row(sha256="9" * 64)
        del incomplete["channel"]
        with pytest.raises(sa_exc.InvalidRequestError, match="channel"):
            insert_fast.insert(conn, incomplete)


# ------------------------------------------------------------------ sink.mail.opaque

def _summary(parsed):
    return (parsed.sender, parsed.to, parsed.cc, parsed.subject, parsed.body_text, parsed.html,
            parsed.message_id, parsed.date, parsed.content_type)


def test_opaque_attachment_bodies_are_not_parsed_and_nothing_the_rules_read_changes():
    import email
    from sink.mail.parse import _POLICY, parse_message
    from sink.mail.opaque import without_opaque_bodies
    pdf = bytes(range(256)) * 200
    raw = make_mail(body="Offer attached, Zakázka: 2023-015", html="<p>Offer</p>",
                    attachments=[("application", "pdf", pdf, "offer.pdf"),
                                 ("image", "png", pdf, "logo.png"),
                                 ("text", "calendar", b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
                                  "invite.ics")])
    lean = without_opaque_bodies(raw)
    assert len(lean) < len(raw) - 2 * len(pdf)
    full = email.message_from_bytes(raw, policy=_POLICY)
    kept = email.message_from_bytes(lean, policy=_POLICY)
    assert [p.get_content_type() for p in full.walk()] == \
        [p.get_content_type() for p in kept.walk()]
    payloads = {p.get_content_type(): p.get_payload(decode=True) for p in kept.walk()
                if not p.is_multipart()}
    assert payloads["application/pdf"] == b"" and payloads["image/png"] == b""
    assert b"VCALENDAR" in payloads["text/calendar"]
    assert _summary(parse_message(raw)) == _summary(parse_message(lean))


def test_messages_that_carry_messages_or_keep_text_are_parsed_whole():
    from sink.mail.opaque import without_opaque_bodies
    blob = bytes(range(256)) * 100
    cases = [
        # an attached .eml, as octet-stream: unwrapping needs it
        make_mail(attachments=[("application", "octet-stream", blob, "forwarded.eml")]),
        # base64 text and calendars are read by the rules
        make_mail(attachments=[("text", "plain", blob.hex().encode(), "notes.txt")]),
        make_mail(attachments=[("application", "ics", blob, "invite.ics")]),
        make_mail(attachments=[("application", "octet-stream", blob, "data.bin")]),
    ]
    for raw in cases:
        assert without_opaque_bodies(raw) is raw
    inner = make_mail(attachments=[("application", "pdf", blob, "inner.pdf")])
    wrapper = (b"From: a@b.cz\r\nTo: c@d.cz\r\nSubject: > fwd\r\nMIME-Version: 1.0\r\n"
               b'Content-Type: multipart/mixed; boundary="X"\r\n\r\n--X\r\n'
               b"Content-Type: text/plain\r\n\r\nsee attached\r\n--X\r\n"
               b"Content-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--X--\r\n")
    assert without_opaque_bodies(wrapper) is wrapper


def test_the_benchmark_corpus_parses_the_same_with_and_without_opaque_bodies():
    from bench import corpus
    from sink.mail import parse as mailparse
    from sink.mail.opaque import without_opaque_bodies
    for mail in corpus.build("100k-1", 40, seed=3):
        lean = mailparse.parse_message(mail.raw)
        original = mailparse.without_opaque_bodies
        try:
            mailparse.without_opaque_bodies = lambda raw: raw
            whole = mailparse.parse_message(mail.raw)
        finally:
            mailparse.without_opaque_bodies = original
        assert _summary(lean) == _summary(whole)
        shrunk = len(without_opaque_bodies(mail.raw)) < len(mail.raw)
        assert shrunk == (b"message/rfc822" not in mail.raw)   # bounces carry the original


def test_the_thread_lookup_goes_by_the_message_id_index(tmp_path):
    """A reply's thread question must not walk every processed message (SQLite's planner
    preferred the (status, id) index for the ORDER BY: a scan of the whole table per reply)."""
    from sink.db.engine import make_engine
    from sink.db.migrate import upgrade
    from sink.db.records import _THREAD_MESSAGE
    engine = make_engine(f"sqlite:///{tmp_path}/plan.db")
    try:
        upgrade(engine)
        with engine.connect() as conn:
            compiled = _THREAD_MESSAGE._compiled(conn)
            params = _THREAD_MESSAGE._bind(compiled, {"message_id": "<x@y>",
                                                      "box": "crm@firma.cz"})
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + compiled.sql, params))
        assert "ix_messages_message_id" in plan, plan
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_lookups_of_every_message_use_their_whole_index_on_a_new_postgres(pg_engine):
    """PostgreSQL plans a prepared statement once (psycopg prepares after 5 runs, the server
    keeps a generic plan after 5 more) and, on a new database without statistics, picked any
    index that began with ``box``: "already stored?", "seen this dedup key?" and the thread
    lookup each scanned every row of the box, for the connection's life. The plan PostgreSQL
    settles on (auto_explain's, as the statement runs on the fast path) must use the index
    that fits all the equalities."""
    from sink.db.records import _THREAD_MESSAGE
    from sink.intake.rows import SEEN_KEYS, STORED
    plans: list[str] = []
    with pg_engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        dbapi.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        for sql in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                    "SET auto_explain.log_level = notice"):
            conn.exec_driver_sql(sql)
        box = "crm@firma.cz"
        for fast, params, index, columns in (
                (STORED, {"box": box, "sha256": "0" * 64}, "uq_messages_box_sha256",
                 ("box", "sha256")),
                (SEEN_KEYS, {"box": box, "kind1": "mid", "digest1": "a", "kind2": "sub",
                             "digest2": "b"}, "pk_dedup_keys", ("box", "kind", "digest")),
                (_THREAD_MESSAGE, {"message_id": "<x@y>", "box": box},
                 "ix_messages_message_id_box", ("message_id", "box"))):
            for _ in range(12):
                plans.clear()
                assert fast.first(conn, params) is None
            plan = plans[-1]
            assert f"using {index}" in plan, plan
            conditions = [line for line in plan.splitlines() if "Index Cond" in line]
            assert conditions and all(all(f"({c})" in line for c in columns)
                                      for line in conditions), plan
        conn.rollback()
