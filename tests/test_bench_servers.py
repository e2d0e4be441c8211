"""The benchmark's servers and reports (bench/): the private Dovecot LMTP every figure is a ratio
to - it delivers what it answers 250 for, refuses what is not a box, and leaves no process
behind - the compare table's ratios, and the profile's parts."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from bench import corpus, dovecot, procstat
from bench.profile import _frame, part_of
from bench.run import (SERVERS, _round_ratio, check_delivered, drive, make_server, md_compare,
                       write_corpus)
from bench.servers import Dovecot
from tests.support import require


@pytest.fixture
def workdir():
    """A scratch directory Dovecot's unprivileged processes can enter (pytest's tmp_path lies
    under a 0700 directory, as bench.run's mkdtemp would without its chmod)."""
    path = Path(tempfile.mkdtemp(prefix="sink-bench-test-"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def need_dovecot() -> None:
    require(dovecot.available(), f"Dovecot LMTP ({dovecot.LMTP}, Debian dovecot-lmtpd) as root")


def _gone(pids) -> bool:
    return not [pid for pid in pids if os.path.exists(f"/proc/{pid}")
                and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def _files(server: Dovecot, box: str) -> list[Path]:
    mail = server.root / "mail" / box
    return [p for sub in ("new", "cur") for p in (mail / sub).iterdir()]


def test_dovecot_writes_one_file_for_every_250_and_stops_everything(workdir):
    need_dovecot()
    one = corpus.build("4k-1", 16, seed=7)
    five = corpus.build("4k-5", 4, seed=7)
    write_corpus(workdir / "corpus.pickle", one + five)
    with make_server("dovecot", workdir, None) as server:
        assert isinstance(server, Dovecot)
        assert "protocols = lmtp" in server.settings
        assert f"port = {server.port}" in server.settings
        result = drive(server, workdir / "corpus.pickle", sessions=4, warmup=0.0,
                       duration=60.0)
        pids = procstat.tree(server.pid)
        port = server.port
        per_box = {box: len(_files(server, box)) for box in corpus.BOXES}
        stored = b"".join(p.read_bytes() for p in _files(server, corpus.BOXES[0]))
    assert result["sent_total"] == 20 and result["errors"] == []
    assert result["codes"] == {"250": 16 + 4 * 5}          # one reply per RCPT, as LMTP says
    assert result["delivered"] == 36 and result["delivered_mismatch"] == 0
    # every recipient its own copy: the first box is in every message, the others in the -5 ones
    assert per_box == {corpus.BOXES[0]: 20, **{box: 4 for box in corpus.BOXES[1:]}}
    for mail in one + five:
        message_id = next(line for line in mail.raw.split(b"\r\n")
                          if line.lower().startswith(b"message-id:")).split(b":", 1)[1].strip()
        assert message_id in stored
    assert len(pids) >= 5                # master, log, config, auth, lmtp at least
    assert _gone(pids) and _refused(port)


@pytest.mark.parametrize("name, pipelined", [("dovecot", True), ("dovecot:lockstep", False)])
def test_the_driver_pipelines_where_the_server_offers_it(workdir, name, pipelined):
    """As Postfix does: Dovecot offers PIPELINING, so MAIL, RCPTs and DATA go in one write and
    every reply is still read and counted; ``:lockstep`` drives it as the rounds before."""
    need_dovecot()
    write_corpus(workdir / "corpus.pickle", corpus.build("4k-1", 8, seed=3)
                 + corpus.build("4k-5", 4, seed=3))
    with make_server(name, workdir, None) as server:
        assert server.lockstep is not pipelined
        result = drive(server, workdir / "corpus.pickle", sessions=2, warmup=0.0,
                       duration=60.0, lockstep=server.lockstep)
    assert result["pipelining"] is pipelined
    assert result["errors"] == [] and result["codes"] == {"250": 8 + 4 * 5}
    assert result["delivered"] == 28 and result["delivered_mismatch"] == 0


def test_dovecot_refuses_a_recipient_that_is_not_a_box(workdir):
    need_dovecot()
    with Dovecot(workdir) as server:
        client = smtplib.LMTP("127.0.0.1", server.port)
        try:
            refused = client.sendmail("jan@acme.cz", [corpus.BOXES[1], "nobody@firma.cz"],
                                      b"Subject: hello\r\n\r\nhello\r\n")
        finally:
            client.quit()
        assert set(refused) == {"nobody@firma.cz"} and refused["nobody@firma.cz"][0] == 550
        assert server.delivered() == 1
        assert len(_files(server, corpus.BOXES[1])) == 1


def test_dovecot_stops_what_it_started_when_the_run_fails(workdir):
    need_dovecot()
    with pytest.raises(RuntimeError, match="the load broke"):
        with Dovecot(workdir) as server:
            pids = procstat.tree(server.pid)
            raise RuntimeError("the load broke")
    assert server.proc is None and _gone(pids)


def test_dovecot_will_not_start_where_its_processes_cannot_enter(workdir):
    need_dovecot()
    closed = workdir / "closed"
    closed.mkdir(mode=0o700)
    os.chmod(closed, 0o700)
    (closed / "inner").mkdir()
    server = Dovecot(closed / "inner")
    with pytest.raises(RuntimeError, match=r"o\+x"):
        server.__enter__()
    assert server.proc is None and not list((closed / "inner").iterdir())


def test_delivered_counts_against_every_250_of_the_load():
    result = {"codes": {"250": 40, "451": 2}}
    check_delivered(result, 40)
    assert (result["delivered"], result["delivered_mismatch"]) == (40, 0)
    check_delivered(result, 38)
    assert result["delivered_mismatch"] == -2       # two 250s without a file


def _row(server, rate, **more):
    return {"profile": "4k-1", "server": server, "rate": rate, "ratio": None, "p50_ms": 10.0,
            "p99_ms": 40.0, "server_cpu_ms": 1.0, "db_cpu_ms": None, "peak_rss_mb": 50.0,
            "non_250": 0, "others_cpu_share": 0.0, "rates": [rate], **more}


def test_compare_ratios_are_taken_inside_each_round_and_old_results_still_render():
    assert SERVERS[0] == "dovecot"
    # the machine was twice as fast in round 2: per-round ratios 0.5 and 0.6, median 0.55
    rounds = [{("dovecot", "4k-1"): {"rate": 800.0}, ("sqlite", "4k-1"): {"rate": 400.0}},
              {("dovecot", "4k-1"): {"rate": 1600.0}, ("sqlite", "4k-1"): {"rate": 960.0}}]
    assert _round_ratio(rounds, "4k-1", "sqlite", "dovecot") == 0.55
    assert _round_ratio(rounds, "4k-1", "sqlite", None) is None
    table = md_compare({"summary": [
        _row("dovecot", 800, delivered=100, delivered_mismatch=0, exhausted=1),
        _row("sqlite", 440, ratio=0.3, ratio_dovecot=0.55, exhausted=0),
        _row("postgres", 300, ratio=0.2)]})                 # a row written before Dovecot
    header, _, dovecot_row, sqlite_row, postgres_row, *notes = table.splitlines()
    # a run that ran out of corpus measured a drain: said under the table, for that row only
    short = [n for n in notes if n.startswith("**Ran out of corpus**")]
    assert len(short) == 1 and short[0].endswith(": dovecot 4k-1 in 1 of 1 runs.")
    assert header.split(" | ")[3:5] == ["× dovecot", "× bare"]
    assert sqlite_row.split(" | ")[3:5] == ["0.55", "0.30"]
    assert postgres_row.split(" | ")[3:5] == ["", "0.20"]
    assert dovecot_row.split(" | ")[3:5] == ["", ""]
    assert "dovecot 4k-1 100 files, one per 250" in notes[-1]


ROOT = "_run_module_as_main (<frozen runpy>:198);main (sink/storage/worker.py:193);" \
       "serve (sink/storage/worker.py:165);_commit (sink/storage/worker.py:117);"
STORE = ROOT + "commit_batch (sink/storage/batching.py:112);store_one (sink/storage/batching.py:90);" \
    "store (sink/intake/core.py:116);_decide (sink/intake/core.py:206);"


@pytest.mark.parametrize("stack, part", [
    (STORE + "_evaluate (sink/intake/core.py:211);evaluate (sink/pipeline/chain.py:90);"
     "incoming (sink/pipeline/activities.py:40);fold (sink/mail/textnorm.py:12)", "rules"),
    (STORE + "_evaluate (sink/intake/core.py:211);evaluate (sink/pipeline/chain.py:90);"
     "open_task (sink/db/records.py:30);execute (sqlalchemy/engine/base.py:1400)", "storage: SQL"),
    (STORE + "_apply (sink/intake/core.py:220);apply (sink/executor.py:44);"
     "_store_activity (sink/executor.py:120)", "storage: the Python"),
    (STORE.replace("sqlalchemy", "x") + "_apply (sink/intake/core.py:220);"
     "execute (/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py:1400)", "storage: SQL"),
    (ROOT + "prepare (sink/intake/core.py:96);parse_message (sink/mail/parse.py:276);"
     "get_content_charset (email/message.py:916)", "parse"),
    ("_bootstrap (threading.py:1002);run (threading.py:982);_worker "
     "(concurrent/futures/thread.py:81);verify (sink/mail/dkim.py:150);"
     "verify (dkim/__init__.py:900)", "DKIM"),
    ("_bootstrap (threading.py:1002);run (threading.py:982);_worker "
     "(concurrent/futures/thread.py:81)", "thread hand-offs"),
    (ROOT + "log_batch (sink/storage/batching.py:133);log_delivery (sink/intake/core.py:172);"
     "log_one (sink/intake/core.py:186);record_counts (sink/pipeline/decision.py:60)", "log lines"),
    ("run (uvloop/__init__.py:92);_handle_client (aiosmtpd/smtp.py:756);"
     "smtp_RCPT (aiosmtpd/smtp.py:1363);addr_spec (email/_header_value_parser.py:438)",
     "protocol"),
    ("value (email/_header_value_parser.py:134)", "parse"),
    # py-spy 0.4 names a method with its class and a nested function with its parents
    (ROOT + "Intake.prepare (sink/intake/core.py:96);parse_and_list (sink/mail/onepass.py:37)",
     "parse"),
    (ROOT + "Intake.log_delivery (sink/intake/core.py:172);Intake.log_one (sink/intake/core.py:186)",
     "log lines"),
    (ROOT + "_commit (sink/storage/worker.py:117);with_dkim (sink/storage/worker.py:134)", "DKIM"),
    (ROOT + "store_one.<locals>.attempt (sink/storage/batching.py:85);"
     "Intake.store (sink/intake/core.py:150)", "storage: the Python"),
])
def test_profile_parts_follow_the_code_layout(stack, part):
    assert part_of(stack.split(";")).startswith(part)


@given(function=st.text(st.characters(blacklist_characters="(;\n"), min_size=1),
       file=st.text(st.characters(blacklist_characters=":();\n"), min_size=1),
       line=st.integers(min_value=0, max_value=10**6))
def test_a_py_spy_frame_splits_into_its_function_and_file(function, file, line):
    assert _frame(f"{function} ({file}:{line})") == (function, file)
