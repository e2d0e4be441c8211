"""The .eml directory: complete regular *.eml files only, then removed; failed/ with a reason;
symlinks, subdirectories and other names left alone; a slow writer never taken half; an
unreadable file (as a real unprivileged user); 10,000 files in one pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


from tests.conftest import seeded
from tests.sources_support import BOX, message_count, run_poll, stored_raws, write_config
from tests.support import make_mail, require

OLD = time.time() - 60


def put(directory: Path, name: str, raw: bytes, old: bool = True) -> Path:
    path = directory / name
    path.write_bytes(raw)
    if old:
        os.utime(path, (OLD, OLD))
    return path


def source(path: Path, **more) -> dict:
    return {"kind": "emldir", "box": BOX, "path": str(path), **more}


def test_complete_eml_files_taken_then_removed_others_left_alone(engine, db_url, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    outside = tmp_path / "secret.eml"
    outside.write_bytes(make_mail(subject="outside, never read"))
    a, b = make_mail(subject="a"), make_mail(subject="b")
    put(spool, "a.eml", a)
    put(spool, "B.EML", b)
    put(spool, "notes.txt", make_mail(subject="txt"))
    put(spool, "part.eml.tmp", make_mail(subject="tmp"))
    (spool / "sub.eml").mkdir()
    (spool / "link.eml").symlink_to(outside)
    big_raw = make_mail(subject="big", body="w" * 4000)
    big = put(spool, "big.eml", big_raw)
    cfg = write_config(tmp_path / "sink.toml", db_url, [source(spool, max_message_size=3000)])
    code, lines = run_poll(cfg)
    assert code == 0, lines
    assert lines == [{"source": 0, "kind": "emldir", "box": BOX, "fetched": 2, "stored": 2,
                      "already_stored": 0, "removed": 2, "skipped": 1, "errors": []}]
    assert sorted(stored_raws(engine, "emldir")) == sorted([a, b])
    left = sorted(p.name for p in spool.iterdir())
    assert left == ["failed", "link.eml", "notes.txt", "part.eml.tmp", "sub.eml"]
    assert (spool / "failed" / "big.eml").read_bytes() == big_raw
    assert "size limit" in (spool / "failed" / "big.eml.reason").read_text()
    assert not big.exists() and outside.exists()


def test_a_file_written_slowly_in_two_parts_is_never_taken_half(engine, db_url, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    raw = make_mail(subject="slow", body="first half\n" * 50 + "second half\n" * 50)
    cfg = write_config(tmp_path / "sink.toml", db_url, [source(spool)])
    with open(spool / "slow.eml", "wb") as f:
        f.write(raw[: len(raw) // 2])
        f.flush()
        assert run_poll(cfg)[1][0]["fetched"] == 0        # just written
        time.sleep(1.2)
        assert run_poll(cfg)[1][0]["fetched"] == 0        # 1.2 s quiet: not yet complete
        f.write(raw[len(raw) // 2:])
        f.flush()
        assert run_poll(cfg)[1][0]["fetched"] == 0
    time.sleep(2.1)
    code, lines = run_poll(cfg)
    assert (lines[0]["fetched"], lines[0]["stored"], lines[0]["removed"]) == (1, 1, 1)
    assert stored_raws(engine) == [raw] and not (spool / "slow.eml").exists()


def test_a_file_renamed_in_is_taken_at_once(engine, db_url, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (tmp_path / "new.eml").write_bytes(raw := make_mail(subject="renamed"))
    time.sleep(0.05)        # the kernel's timestamps are coarse (a few ms): a later tick
    os.rename(tmp_path / "new.eml", spool / "new.eml")      # written a moment ago
    code, lines = run_poll(write_config(tmp_path / "sink.toml", db_url, [source(spool)]))
    assert lines[0]["stored"] == 1 and stored_raws(engine) == [raw]


def test_same_file_twice_is_already_stored_not_a_second_record(engine, db_url, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    raw = make_mail(subject="twice")
    cfg = write_config(tmp_path / "sink.toml", db_url, [source(spool)])
    put(spool, "one.eml", raw)
    assert run_poll(cfg)[1][0]["stored"] == 1
    put(spool, "one-again.eml", raw)      # the crash-between-commit-and-unlink case
    lines = run_poll(cfg)[1]
    assert (lines[0]["already_stored"], lines[0]["removed"]) == (1, 1)
    assert message_count(engine) == 1


def test_an_unreadable_file_goes_to_failed_with_its_reason(engine, db_url, tmp_path):
    """Root reads every file: `sink poll` runs here as root without the capabilities that
    override file permissions (setpriv, util-linux), so the kernel really refuses the read."""
    require(os.geteuid() == 0 and shutil.which("setpriv") is not None,
            "root and setpriv (util-linux)")
    spool = tmp_path / "spool"
    spool.mkdir()
    put(spool, "ok.eml", ok := make_mail(subject="readable"))
    locked = put(spool, "locked.eml", make_mail(subject="locked"))
    os.chmod(locked, 0o000)
    cfg = write_config(tmp_path / "sink.toml", db_url, [source(spool)])
    done = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
         sys.executable, "-m", "sink", "--config", str(cfg), "poll"],
        capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b'"stored": 1' in done.stdout and b'"skipped": 1' in done.stdout
    assert (spool / "failed" / "locked.eml").exists()
    assert "Permission denied" in (spool / "failed" / "locked.eml.reason").read_text()
    assert sorted(p.name for p in spool.iterdir()) == ["failed"]
    assert stored_raws(engine) == [ok]


def test_ten_thousand_files_in_one_pass(tmp_path, capsys):
    spool = tmp_path / "spool"
    spool.mkdir()
    url = f"sqlite:///{tmp_path}/sink.db"
    engine = seeded(url)
    sent = {}
    for i in range(10_000):
        raw = make_mail(subject=f"bulk {i}", message_id=f"<bulk{i}@test>")
        put(spool, f"{i:05d}.eml", raw)
        sent[i] = raw
    cfg = write_config(tmp_path / "sink.toml", url, [source(spool)])
    started = time.monotonic()
    code, lines = run_poll(cfg)
    seconds = time.monotonic() - started
    assert code == 0 and lines[0]["stored"] == 10_000 and lines[0]["removed"] == 10_000
    assert list(spool.iterdir()) == [] and message_count(engine) == 10_000
    engine.dispose()
    with capsys.disabled():
        print(f"\n[emldir] 10,000 files in {seconds:.1f} s: {10_000 / seconds:.0f} messages/s")
