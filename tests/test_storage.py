"""Storage guarantees on SQLite and PostgreSQL: schema, durability, concurrency, directory."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, select

from sink.config import parse_config
from sink.db import schema as t
from sink.db.directory_store import DirectoryImportError, import_directory
from sink.db.engine import DurabilityError, check_durability, json_text, make_engine
from sink.db.migrate import schema_is_current
from sink.intake import Envelope, Intake
from tests.support import make_mail

BOX = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))


def rows(engine, table):
    with engine.connect() as conn:
        return conn.execute(select(table)).all()


def test_migrations_create_exactly_the_models(engine):
    assert schema_is_current(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
    assert diff == []


def test_email_activity_type_always_exists(db_url):
    from sink.db.migrate import upgrade
    engine = make_engine(db_url)
    upgrade(engine)
    assert [r.name for r in rows(engine, t.activity_types)] == ["E-mail"]
    engine.dispose()


def test_durable_settings_are_asserted(engine):
    settings = check_durability(engine)
    assert settings.get("synchronous") in ("FULL", "EXTRA") or \
        settings.get("synchronous_commit") not in (None, "off")


def test_sqlite_without_wal_is_refused(tmp_path):
    plain = create_engine(f"sqlite:///{tmp_path}/plain.db")
    with pytest.raises(DurabilityError, match="WAL"):
        check_durability(plain)


@pytest.mark.postgres
def test_postgres_with_synchronous_commit_off_is_refused(pg_available):
    from tests.conftest import PG_ADMIN_URL
    from tests.support import require
    require(pg_available, "PostgreSQL at 127.0.0.1:5432")
    unsafe = create_engine(PG_ADMIN_URL, connect_args={"options": "-c synchronous_commit=off"})
    with pytest.raises(DurabilityError, match="synchronous_commit"):
        check_durability(unsafe)
    unsafe.dispose()


def test_raw_bytes_and_summary_stored(engine):
    raw = make_mail(subject="Zakázka:2023-015", message_id="<sum@test>")
    [delivery] = Intake(engine).deliver(raw, LMTP, [BOX])
    [msg] = rows(engine, t.messages)
    [stored] = rows(engine, t.raw_messages)
    assert stored.content == raw and msg.size == len(raw)
    assert (msg.channel, msg.box, msg.mail_from, msg.rcpt_to) == (
        "lmtp", "crm@firma.cz", "mta@firma.cz", ["crm@firma.cz"])
    assert (msg.sender, msg.to_addrs, msg.subject, msg.message_id) == (
        "jan@acme.cz", ["alice@firma.cz"], "Zakázka:2023-015", "<sum@test>")
    assert (msg.status, msg.verdict, msg.direction) == ("processed", "PROCESSED", "incoming")
    assert msg.trace[0] == {"rule": "duplicate", "outcome": "pass"}
    import hashlib
    assert msg.sha256 == hashlib.sha256(raw).hexdigest()
    [activity] = rows(engine, t.activities)
    assert activity.message_id == delivery.message_id


def test_an_executor_that_fails_leaves_the_message_failed_without_records(engine):
    """The row is written with its decision before the records: when writing them fails, the
    message is kept ``failed`` (no verdict, no direction, no half of its records) for replay."""
    from sink.executor import apply
    from sink.intake.replay import replay

    def apply_half_then_fail(conn, message_id, decision, directory):
        apply(conn, message_id, decision, directory)      # the activity is written ...
        raise ValueError("a bug in the executor")
    raw = make_mail(message_id="<exec@test>")
    [delivery] = Intake(engine, executor=apply_half_then_fail).deliver(raw, LMTP, [BOX])
    [msg] = rows(engine, t.messages)
    assert (delivery.status, msg.status, msg.verdict, msg.direction, msg.trace) == (
        "failed", "failed", None, None, [])
    assert msg.error.startswith("executor: ValueError: a bug in the executor")
    assert rows(engine, t.activities) == [] and rows(engine, t.dedup_keys) == []  # ... undone
    assert [r.content for r in rows(engine, t.raw_messages)] == [raw]
    replayed = replay(Intake(engine), delivery.message_id, [BOX])   # fixed: it records it
    [msg] = rows(engine, t.messages)
    assert (replayed.status, msg.status, msg.verdict, msg.error) == (
        "processed", "processed", "PROCESSED", None)
    assert len(rows(engine, t.activities)) == 1


@pytest.mark.parametrize("same_bytes", [True, False])
def test_concurrent_deliveries_of_one_message_record_it_once(engine, same_bytes):
    """Eight sessions racing with the same message (identical bytes, or forwarded copies with
    the same Message-ID): one message is processed and one activity exists."""
    base = make_mail(message_id="<race@test>")
    copies = [base if same_bytes else f"X-Copy: {i}\r\n".encode() + base for i in range(8)]
    barrier = threading.Barrier(len(copies))
    results, errors = [], []

    def send(raw):
        intake = Intake(engine)
        barrier.wait()
        try:
            results.extend(intake.deliver(raw, LMTP, [BOX]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=send, args=(c,)) for c in copies]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    assert len(results) == 8
    verdicts = sorted(m.verdict for m in rows(engine, t.messages))
    if same_bytes:
        assert verdicts == ["PROCESSED"]
    else:
        assert verdicts == ["DUPLICATE"] * 7 + ["PROCESSED"]
    assert len(rows(engine, t.activities)) == 1


def test_directory_import_is_idempotent_and_updates(engine):
    before = {table.name: len(rows(engine, table)) for table in
              (t.users, t.user_aliases, t.companies, t.company_emails, t.company_domains,
               t.contacts, t.contracts, t.orders, t.tasks, t.activity_types, t.roles)}
    from tests.support import DIRECTORY
    with engine.begin() as conn:
        import_directory(conn, DIRECTORY)
    after = {table.name: len(rows(engine, table)) for table in
             (t.users, t.user_aliases, t.companies, t.company_emails, t.company_domains,
              t.contacts, t.contracts, t.orders, t.tasks, t.activity_types, t.roles)}
    assert after == before
    with engine.begin() as conn:
        import_directory(conn, {"users": [{"email": "Dave@Firma.cz", "name": "David",
                                           "role": "Sales", "aliases": ["d@firma.cz"]}],
                                "activity_types": ["e-mail", "Meeting"]})
    [dave] = [u for u in rows(engine, t.users) if u.email == "dave@firma.cz"]
    assert dave.name == "David" and dave.role_id is not None
    assert {a.address for a in rows(engine, t.user_aliases) if a.user_id == dave.id} == \
        {"d@firma.cz"}
    assert sorted(r.name for r in rows(engine, t.activity_types)) == [
        "Documentation", "E-mail", "Meeting", "Phone call"]


@pytest.mark.parametrize("data, message", [
    ({"users": [{"name": "no e-mail"}]}, r"users\[0\].email: required"),
    ({"users": [{"email": "x@firma.cz", "role": "Nobody"}]}, "unknown role"),
    ({"contracts": [{"number": "1", "kind": "deal"}]}, r"contracts\[0\].kind"),
    ({"people": []}, "people: unknown section"),
    ({"roles": [{"name": "R", "level": "high"}]}, r"roles\[0\].level: expected int"),
])
def test_directory_import_errors_name_the_place(engine, data, message):
    with pytest.raises(DirectoryImportError, match=message):
        with engine.begin() as conn:
            import_directory(conn, data)


def test_directory_changes_reach_a_running_intake(engine):
    intake = Intake(engine)
    raw = make_mail(to=("newbie@firma.cz",))
    [first] = intake.deliver(raw, LMTP, [BOX])
    assert first.verdict == "NOT_PROCESSED"
    with engine.begin() as conn:
        import_directory(conn, {"users": [{"email": "newbie@firma.cz", "name": "New"}]})
    [second] = intake.deliver(make_mail(to=("newbie@firma.cz",), subject="Another"), LMTP, [BOX])
    assert second.verdict == "PROCESSED"


def test_every_migration_keeps_the_data_already_stored(db_url):
    """Upgrade revision by revision from 0001 with mail, raw bytes, an activity linked to a task
    already stored: nothing may be lost on the way (SQLite rebuilds tables to alter them)."""
    from alembic.script import ScriptDirectory
    from sink.db.migrate import alembic_config, upgrade
    engine = make_engine(db_url)
    revisions = [r.revision for r in reversed(list(
        ScriptDirectory.from_config(alembic_config(engine)).walk_revisions()))]
    assert revisions[0] == "0001" and len(revisions) >= 3
    upgrade(engine, "0001")
    with engine.begin() as conn:
        import_directory(conn, {"users": [{"email": "a@firma.cz"}],
                                "tasks": [{"number": "T-1", "subject": "old"}]})
        conn.exec_driver_sql(
            "INSERT INTO messages (uuid, received_at, channel, box, rcpt_to, to_addrs, cc_addrs,"
            " date_header, subject, size, sha256, status, trace) VALUES ('u1',"
            " '2026-11-02 10:00:00', 'cli', 'crm@firma.cz', '[]', '[]', '[]', '', 's', 1, 'x',"
            " 'processed', '[]')")
        conn.exec_driver_sql("INSERT INTO raw_messages (message_id, content) "
                             "SELECT id, 'raw' FROM messages")
        conn.exec_driver_sql(
            "INSERT INTO activities (message_id, direction, responsible_id, type_name, scope,"
            " subject, text, task_id, completed, due) SELECT m.id, 'incoming', u.id, 'E-mail',"
            " 'none', '', '', k.id, true, false FROM messages m, tasks k, users u")
    for revision in revisions[1:]:
        upgrade(engine, revision)
        with engine.connect() as conn:
            counts = [conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
                      for table in ("messages", "raw_messages", "activities", "tasks")]
        assert counts == [1, 1, 1, 1], (revision, counts)
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:    # enforcement is back on for the pooled connection
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_nul_characters_in_headers_and_body_are_stored(engine):
    """NUL is not allowed in a PostgreSQL text column: the parsed fields replace it, the raw
    bytes keep it, and the message is processed (a content problem must never become a 4xx
    that the MTA retries forever)."""
    raw = (b"From: jan\x00x@acme.cz\r\nTo: alice@firma.cz\r\nSubject: nul\x00here\r\n"
           b"Message-ID: <nul\x00@test>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n\r\n"
           b"body with \x00 a NUL\r\n")
    [delivery] = Intake(engine).deliver(raw, LMTP, [BOX])
    assert delivery.status == "processed"
    [msg] = rows(engine, t.messages)
    assert "\x00" not in msg.subject and msg.subject.startswith("nul")
    [stored] = rows(engine, t.raw_messages)
    assert stored.content == raw


def test_a_rolled_back_directory_change_never_leaves_a_stale_snapshot(engine):
    """A transaction that changes the directory and rolls back may have cached a snapshot under
    its version; the next committed change must not reuse that version."""
    from sink.db.directory_store import directory_version
    from sink.intake.directory_cache import DirectoryCache
    cache = DirectoryCache()
    with engine.connect() as conn:
        trans = conn.begin()
        import_directory(conn, {"users": [{"email": "phantom@firma.cz"}]})
        assert cache.get(conn).user("phantom@firma.cz") is not None   # cached, uncommitted
        trans.rollback()
    with engine.begin() as conn:
        import_directory(conn, {"users": [{"email": "real@firma.cz"}]})
    with engine.connect() as conn:
        snapshot = cache.get(conn)
        assert snapshot.version == directory_version(conn)
    assert snapshot.user("real@firma.cz") is not None
    assert snapshot.user("phantom@firma.cz") is None


def test_sqlite_reads_pages_through_a_memory_map(tmp_path):
    """Every connection maps the file (sink.db.engine.SQLITE_MMAP_BYTES): a second storage
    worker's commits no longer cost the other a page-cache refill."""
    from sink.db.engine import SQLITE_MMAP_BYTES, make_engine
    engine = make_engine(f"sqlite:///{tmp_path}/mapped.db")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == SQLITE_MMAP_BYTES > 0
    finally:
        engine.dispose()


def test_a_big_message_is_stored_byte_for_byte_and_rolled_back_with_its_savepoint(engine):
    """Over rows.STREAM_RAW_FROM, SQLite gets the raw bytes through the incremental blob API
    (PostgreSQL as one value): read back exact; a batch that fails leaves no blob behind."""
    import os
    from sink.intake import rows
    box = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
    raw = make_mail(body="big\n", attachments=[(
        "application", "octet-stream", os.urandom(rows.STREAM_RAW_FROM * 2 + 12345), "x.bin")])
    assert len(raw) > rows.STREAM_RAW_FROM
    [delivery] = Intake(engine).deliver(raw, Envelope("lmtp"), [box])
    with engine.connect() as conn:
        stored = conn.execute(select(t.raw_messages.c.content).where(
            t.raw_messages.c.message_id == delivery.message_id)).scalar_one()
    assert stored == raw
    other = make_mail(subject="rolled back", body="b\n", attachments=[(
        "application", "octet-stream", os.urandom(rows.STREAM_RAW_FROM + 1), "y.bin")])
    intake = Intake(engine)
    prepared = intake.prepare(other, Envelope("lmtp"))
    with pytest.raises(RuntimeError):
        with engine.begin() as conn:
            intake.store(conn, prepared, box)
            raise RuntimeError("the batch fails after the message was written")
    with engine.connect() as conn:
        assert conn.execute(select(t.raw_messages.c.message_id)).scalars().all() == \
            [delivery.message_id]


@pytest.mark.postgres
def test_a_big_message_goes_through_copy_in_a_batch_and_leaves_with_its_savepoint(
        pg_engine, monkeypatch):
    """PostgreSQL takes a message over rows.STREAM_RAW_FROM through COPY, in pieces, inside
    the batch (whose small rows are deferred to the flush): stored byte for byte beside a small
    one, and a message whose savepoint is rolled back after its COPY leaves no row behind."""
    import os
    from sink.intake import core, rows
    from sink.storage.batching import commit_batch
    box = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
    intake = Intake(pg_engine)
    big = make_mail(subject="big", body="big\n", attachments=[(
        "application", "octet-stream", os.urandom(rows.STREAM_RAW_FROM * 3 + 777), "x.bin")])
    small = make_mail(subject="small", body="small\n")
    failing = make_mail(subject="fails", body="f\n", attachments=[(
        "application", "octet-stream", os.urandom(rows.STREAM_RAW_FROM + 1), "y.bin")])
    prepared = [intake.prepare(raw, Envelope("lmtp")) for raw in (big, small, failing)]
    real = core.store_attachments

    def store_attachments(conn, message_id, raw, listing=None):
        if raw == failing:                # after its raw bytes went in: the savepoint undoes
            raise RuntimeError("a bug of ours in this one message")
        return real(conn, message_id, raw, listing)
    monkeypatch.setattr(core, "store_attachments", store_attachments)
    copied, copy_raw = [], rows._copy_raw
    monkeypatch.setattr(rows, "_copy_raw", lambda conn, message_id, raw: (
        copied.append(len(raw)), copy_raw(conn, message_id, raw)))
    [[one], [two], [three]] = commit_batch(intake, [(p, [box]) for p in prepared])
    assert isinstance(three, RuntimeError)
    assert copied == [len(big), len(failing)]       # the small one went with the flush
    with pg_engine.connect() as conn:
        stored = dict(conn.execute(select(t.raw_messages.c.message_id,
                                          t.raw_messages.c.content)).all())
    assert stored == {one.message_id: big, two.message_id: small}


def test_json_columns_are_written_by_orjson_and_read_back_the_same(engine):
    """The trace, the recipients and the addresses go through sink.db.engine.json_text on both
    databases (orjson's text: no blank after a comma)."""
    raw = make_mail(subject="Zakázka:2023-016", message_id="<json@test>",
                    to=("Žofie <zofie@firma.cz>", "alice@firma.cz"))
    Intake(engine).deliver(raw, LMTP, [BOX])
    with engine.connect() as conn:
        text_of = conn.exec_driver_sql(
            "SELECT CAST(trace AS TEXT), CAST(to_addrs AS TEXT) FROM messages").one()
    [msg] = rows(engine, t.messages)
    assert '{"rule":"duplicate","outcome":"pass"}' in text_of[0]
    assert text_of[1] == '["zofie@firma.cz","alice@firma.cz"]'
    assert msg.to_addrs == ["zofie@firma.cz", "alice@firma.cz"]
    assert json.loads(text_of[0]) == msg.trace


@settings(max_examples=400, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=12))
def test_json_text_reads_back_as_json_dumps_does(value):
    """orjson where it can, json.dumps where it refuses (lone surrogates, integers beyond 64
    bits): the text always reads back to the value json.dumps' text reads back to. (Not
    for NaN and infinities, which json.dumps writes as tokens JSON does not have.)"""
    assert json.loads(json_text(value)) == json.loads(json.dumps(value))


def test_json_text_falls_back_for_what_orjson_refuses():
    for value in (["lone \udcc3 surrogate"], {"n": 2 ** 80}, {1: "int key"}):
        assert json_text(value) == json.dumps(value)
