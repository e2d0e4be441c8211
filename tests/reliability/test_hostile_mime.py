"""7. Hostile MIME: generated, mutated and known-pathological messages never crash the sink,
never get a 5xx, are stored byte for byte, and cost a bounded time to parse — so the other
sessions keep their latency while one of them is processed."""

from __future__ import annotations

import hashlib
import random
import statistics
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sink.config import parse_config
from sink.db import schema as t
from sink.intake import Envelope, Intake
from sink.mail.parse import parse_message
from sink.mail.unwrap import unwrap
from tests.conftest import seeded
from tests.reliability.hostile import PATHOLOGICAL
from tests.reliability.load import audit
from tests.reliability.test_byte_exact import CORPUS
from tests.support import MailClient, SinkProcess, free_port, make_mail, write_config

BOX = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))
PARSE_BUDGET = 1.5          # seconds for parse + unwrap of any one message, on a slow CI core


@pytest.fixture(scope="module")
def pathological():
    return {name: make() for name, make in PATHOLOGICAL.items()}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_message_parses_within_budget(name, pathological):
    raw = pathological[name]
    started = time.perf_counter()
    parsed = parse_message(raw)
    unwrap(parsed)
    elapsed = time.perf_counter() - started
    assert elapsed < PARSE_BUDGET, f"{name}: {elapsed:.2f}s"
    # the facts the rules need most survive: who sent it, and what it is called
    assert parsed.sender == "jan@acme.cz", parsed.defects
    assert parsed.subject.startswith(("hostile", "> forwarded", "=?utf-8?b?!!!?=")), \
        parsed.subject[:80]


# ----------------------------------------------------------------------------- generated input

_header_names = st.sampled_from(["From", "To", "Cc", "Subject", "Date", "Message-ID",
                                 "Content-Type", "Content-Transfer-Encoding",
                                 "Content-Disposition", "MIME-Version", "X-MS-Journal-Report",
                                 "Received", "X-Whatever"])
_charsets = st.sampled_from(["utf-8", "iso-8859-2", "windows-1250", "utf-16", "utf-7",
                             "x-unknown", "", "\"", "us-ascii", "koi8-r"])
_encodings = st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-uue", "binary",
                              "bogus", ""])
_types = st.sampled_from(["text/plain", "text/html", "text/calendar", "message/rfc822",
                          "multipart/mixed", "multipart/alternative", "multipart/report",
                          "application/octet-stream", "message/delivery-status", "bogus"])
_junk = st.binary(max_size=300)


@st.composite
def mime_tree(draw, depth=0):
    ctype = draw(_types)
    params = f"; charset={draw(_charsets)}"
    headers = [f"Content-Type: {ctype}{params}".encode(),
               f"Content-Transfer-Encoding: {draw(_encodings)}".encode()]
    headers += [draw(_header_names).encode() + b": " + draw(_junk).replace(b"\n", b" ")
                for _ in range(draw(st.integers(0, 3)))]
    if ctype.startswith("multipart/") and depth < 4:
        boundary = draw(st.sampled_from([b"b", b"b1", b"", b"--", b"\xff", b"a b"]))
        headers[0] += b"; boundary=\"" + boundary + b"\""
        parts = draw(st.lists(mime_tree(depth + 1), max_size=4))
        body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
        if draw(st.booleans()):
            body += b"--" + boundary + b"--\r\n"
    elif ctype == "message/rfc822" and depth < 4:
        body = draw(mime_tree(depth + 1))
    else:
        body = draw(st.one_of(_junk, st.text(max_size=200).map(lambda s: s.encode(
            "utf-8", "surrogatepass"))))
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


@st.composite
def hostile_message(draw):
    top = [b"From: " + draw(st.sampled_from([b"jan@acme.cz", b"", b"<>", b"\"a,b\" <x@y>",
                                              b"=?utf-8?q?J=C3=A1n?= <jan@acme.cz>"])),
           b"To: " + draw(st.sampled_from([b"alice@firma.cz", b"crm@firma.cz, alice@firma.cz",
                                            b"undisclosed-recipients:;", b"@@@"])),
           b"Subject: " + draw(_junk).replace(b"\r", b"").replace(b"\n", b""),
           b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@hypothesis>"]
    return b"\r\n".join(top) + b"\r\n" + draw(mime_tree())


def mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 8)):
        if not data:
            break
        choice = rng.random()
        at = rng.randrange(len(data))
        if choice < 0.3:
            data[at] = rng.randrange(256)                                 # flip a byte
        elif choice < 0.5:
            del data[at:at + rng.randint(1, 40)]                          # cut a piece
        elif choice < 0.7:
            piece = data[at:at + rng.randint(1, 80)]
            data[at:at] = piece * rng.randint(2, 20)                      # repeat a piece
        elif choice < 0.85:
            data[at:at] = rng.choice([b"\r\n--b\r\n", b"\r\n\r\n", b"=?", b"\x00", b";", b"\""])
        else:
            data = data[:at]                                              # truncate
    return bytes(data)


class Tried:
    count = 0


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    engine = seeded(f"sqlite:///{tmp_path_factory.mktemp('hostile')}/sink.db")
    yield engine, Intake(engine)
    engine.dispose()


def check_stored(engine, intake, raw: bytes) -> None:
    parsed = parse_message(raw)             # never raises
    assert parsed is not None
    [delivery] = intake.deliver(raw, LMTP, [BOX])
    assert delivery.status in ("processed", "failed")
    with engine.connect() as conn:
        from sqlalchemy import select
        stored = conn.execute(select(t.raw_messages.c.content).where(
            t.raw_messages.c.message_id == delivery.message_id)).scalar()
    assert bytes(stored) == raw
    # the rules themselves must cope with whatever the parser hands them
    assert delivery.status == "processed", delivery.error
    Tried.count += 1


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_message())
def test_generated_messages_never_crash_and_are_stored(storage, raw):
    check_stored(*storage, raw)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(CORPUS)), st.integers(0, 2 ** 32))
def test_mutated_messages_never_crash_and_are_stored(storage, name, seed):
    raw = mutate(CORPUS[name], random.Random(seed))
    check_stored(*storage, raw + b"\r\nX-Seed: " + str(seed).encode() + b"\r\n")


def test_inputs_tried(figures):
    figures(generated_and_mutated_inputs=Tried.count)
    assert Tried.count >= 200


# ----------------------------------------------------------------------------- latency

@pytest.mark.slow
def test_other_sessions_keep_their_latency_while_pathological_mail_is_processed(
        tmp_path, pathological, figures):
    url = f"sqlite:///{tmp_path}/sink.db"
    engine = seeded(url)
    port = free_port()
    write_config(tmp_path / "sink.toml", url, port)
    sink = SinkProcess(tmp_path / "sink.toml", port)
    stop = threading.Event()
    small_latencies, small_sent, small_ids, errors = [], [], [], []
    hostile_times = {}

    def small_sender(k):
        client = MailClient(port)
        client.hello()
        i = 0
        while not stop.is_set():
            mid = f"<small-{k}-{i}@latency>"
            raw = make_mail(message_id=mid, subject=f"small {k} {i}")
            started = time.monotonic()
            code, text = client.send(raw)[-1]
            small_latencies.append(time.monotonic() - started)
            if code != 250:
                errors.append((mid, code, text))
            else:
                small_sent.append(raw)
                small_ids.append(mid)
            i += 1
            time.sleep(0.02)
        client.close()
    try:
        senders = [threading.Thread(target=small_sender, args=(k,)) for k in range(4)]
        for th in senders:
            th.start()
        time.sleep(1.0)
        baseline = len(small_latencies)
        client = MailClient(port, timeout=120)
        client.hello()
        for name, raw in pathological.items():
            started = time.monotonic()
            code, text = client.send(raw)[-1]
            hostile_times[name] = round(time.monotonic() - started, 2)
            assert code == 250, (name, code, text)
        client.close()
        stop.set()
        for th in senders:
            th.join(60)
    finally:
        stop.set()
        sink.stop()
    during = sorted(small_latencies[baseline:])
    p99 = during[int(len(during) * 0.99) - 1] if during else None
    result = audit(engine, small_sent, small_ids)
    stored = {}
    with engine.connect() as conn:
        from sqlalchemy import select
        for row in conn.execute(select(t.messages.c.sha256, t.messages.c.status)):
            stored[row.sha256] = row.status
    engine.dispose()
    figures(pathological=len(hostile_times), pathological_seconds=hostile_times,
            small_messages=len(small_latencies), small_during=len(during),
            small_p50=round(statistics.median(during), 3) if during else None,
            small_p99=round(p99, 3) if p99 else None,
            small_max=round(max(during), 3) if during else None)
    assert errors == []
    assert during and p99 < 2.0, f"p99 {p99:.2f}s while pathological mail was processed"
    assert max(hostile_times.values()) < 20, hostile_times
    for name, raw in pathological.items():
        assert stored.get(hashlib.sha256(raw).hexdigest()) == "processed", name
    assert result["lost"] == [] and result["duplicated"] == [] and result["damaged"] == []
