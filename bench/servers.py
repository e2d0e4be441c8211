"""The servers under test, as context managers that always stop what they started.

- :class:`Bare`: ``python -m bench.bare`` (no-op aiosmtpd LMTP).
- :class:`Sink`: ``sink serve`` with the real pipeline on a fresh database: a new SQLite file
  (WAL, synchronous=FULL: durable) or a new PostgreSQL database (dropped afterwards), migrated
  and filled with the benchmark's directory before the server starts.
- :class:`Dovecot`: a private Dovecot LMTP delivering into one maildir per box, in the run's
  workdir (the disk of the SQLite file); its configuration is in :mod:`bench.dovecot`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench import dovecot, procstat
from bench.corpus import BOXES, world

PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
        return True
    except ImportError:
        return False


def _wait_port(proc: subprocess.Popen, port: int, what: str, log: Path | None,
               timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {port}")


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class _Server:
    name = "server"
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def delivered(self) -> int | None:
        """Messages the server has written where one can count them (None: not countable)."""
        return None


class Bare(_Server):
    name = "bare"

    def __init__(self, workdir: Path, *, uvloop: bool = False):
        self.workdir = workdir
        self.uvloop = uvloop

    def start(self) -> None:
        self.port = free_port()
        log = self.workdir / f"bare.{self.port}.log"
        args = [sys.executable, "-m", "bench.bare", "--port", str(self.port)]
        if self.uvloop:
            args.append("--uvloop")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=out)
        _wait_port(self.proc, self.port, "bare aiosmtpd", log)


class Dovecot(_Server):
    """``dovecot -F -c FILE``: its own base_dir, config, passdb and maildirs under
    ``workdir/dovecot.PORT``; LMTP on a free loopback port. Its CPU is the whole tree of the
    master (config, log, anvil, auth, stats and one ``lmtp`` per session), all children of the
    process started here."""

    name = "dovecot"

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.root: Path | None = None
        self.settings = ""                  # doveconf -n, for the record

    def start(self) -> None:
        if not dovecot.available():
            raise RuntimeError(f"dovecot with its LMTP server ({dovecot.LMTP}, Debian package "
                               "dovecot-lmtpd) is not installed, or this is not root")
        blocked = dovecot.untraversable_ancestor(self.workdir)
        if blocked:
            raise RuntimeError(f"Dovecot's unprivileged processes cannot enter {blocked} "
                               "(it needs the others' search bit, o+x): use another --workdir")
        self.port = free_port()
        self.root = self.workdir / f"dovecot.{self.port}"
        config = dovecot.prepare(self.root, self.port, BOXES)
        self.settings = dovecot.check_config(config)
        log = self.root / "dovecot.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([dovecot.DOVECOT, "-F", "-c", str(config)],
                                         stdout=out, stderr=out,
                                         preexec_fn=dovecot.die_with_parent)
        _wait_port(self.proc, self.port, "dovecot", log)

    def delivered(self) -> int | None:
        return dovecot.delivered(self.root) if self.root else None

    def close(self) -> None:
        """Stop the master, then wait until every process of its tree is gone: the master
        exits before its children always have, and a leftover ``lmtp`` would take CPU from the
        next server of the round."""
        if self.proc is None:
            return
        pids = set(procstat.tree(self.proc.pid)) - {self.proc.pid}
        try:
            super().close()
        finally:
            _reap(pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pids: set[int], timeout: float = 10) -> None:
    """Wait for ``pids`` to exit; kill the ones still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------------- databases

def create_pg_database(name: str) -> str:
    from sqlalchemy import create_engine, text
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(name: str) -> None:
    from sqlalchemy import create_engine, text
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def prepare_database(url: str) -> None:
    """Schema and the benchmark's directory, as `sink db upgrade` + `directory import` do."""
    from sink.db.directory_store import import_directory
    from sink.db.engine import make_engine
    from sink.db.migrate import upgrade
    engine = make_engine(url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            import_directory(conn, world().directory())
    finally:
        engine.dispose()


def write_sink_config(path: Path, url: str, port: int, log_file: Path, level: str = "info",
                      extra: str = "") -> None:
    boxes = "".join(f'\n[[boxes]]\naddress = "{b}"\n' for b in BOXES)
    path.write_text(
        f'[database]\nurl = {json.dumps(url)}\n\n'
        f'[[listeners]]\nprotocol = "lmtp"\naddress = "127.0.0.1:{port}"\n'
        f'{boxes}\n[log]\nlevel = "{level}"\nfile = {json.dumps(str(log_file))}\n{extra}')


# `sink serve` uses uvloop whenever it can import it; this hides it (a benchmark variant).
_WITHOUT_UVLOOP = ("-c", "import runpy, sys; sys.modules['uvloop'] = None; "
                         "runpy.run_module('sink', run_name='__main__')")


class Sink(_Server):
    """``sink serve`` on a fresh database of ``kind`` (sqlite or postgres)."""

    def __init__(self, kind: str, workdir: Path, *, log_level: str = "info", env=None,
                 uvloop: bool = True, name: str | None = None, extra_config: str = "",
                 root: Path | None = None):
        self.kind = kind
        self.root = root or ROOT            # the checkout whose sink runs
        self.name = name or kind
        self.uvloop = uvloop
        self.extra_config = extra_config
        self.workdir = workdir
        self.log_level = log_level
        self.env = env
        self.pg_name: str | None = None
        self.url = ""

    def start(self) -> None:
        self.port = free_port()
        tag = f"{self.kind}.{self.port}"
        if self.kind == "sqlite":
            db = self.workdir / f"{tag}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            self.url = f"sqlite:///{db}"
        else:
            self.pg_name = f"sink_bench_{uuid.uuid4().hex[:10]}"
            self.url = create_pg_database(self.pg_name)
        prepare_database(self.url)
        config = self.workdir / f"{tag}.toml"
        self.log = self.workdir / f"{tag}.log"
        write_sink_config(config, self.url, self.port, self.log, self.log_level,
                          self.extra_config)
        out = self.workdir / f"{tag}.out"
        env = dict(os.environ, **(self.env or {}))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root),
                                                          env.get("PYTHONPATH")]))
        with open(out, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, *(("-m", "sink") if self.uvloop else _WITHOUT_UVLOOP),
                 "--config", str(config), "serve"],
                cwd=self.root, stdout=f, stderr=f, env=env)
        _wait_port(self.proc, self.port, f"sink serve ({self.kind})", out)

    def stored(self) -> dict:
        """How many messages the server committed, by status (after the run, for the report)."""
        from sqlalchemy import func, select
        from sink.db import schema as t
        from sink.db.engine import make_engine
        engine = make_engine(self.url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(select(t.messages.c.status, func.count())
                                    .group_by(t.messages.c.status)).all()
                verdicts = conn.execute(select(t.messages.c.verdict, func.count())
                                        .group_by(t.messages.c.verdict)).all()
        finally:
            engine.dispose()
        return {"status": {s: n for s, n in rows}, "verdict": {str(v): n for v, n in verdicts}}

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.pg_name:
                drop_pg_database(self.pg_name)
                self.pg_name = None
