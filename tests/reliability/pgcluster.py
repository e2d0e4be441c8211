"""A private PostgreSQL cluster for tests that stop, crash or misconfigure the database server
(the shared one at 127.0.0.1:5432 serves other tests at the same time and is never touched).

Debian's binaries, run as the ``postgres`` OS user (initdb refuses root), data in a fresh
directory under /tmp, listening on a free loopback port; :meth:`destroy` stops the server and
removes everything, also when the test failed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

from sqlalchemy import create_engine, text


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def available() -> bool:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return os.geteuid() == 0 and _bindir() is not None and shutil.which("runuser") is not None


class PrivateCluster:
    def __init__(self, port: int, *, settings: dict[str, str] | None = None):
        self.port = port
        self.settings = dict(settings or {})
        self.bindir = _bindir()
        self.user = pwd.getpwnam("postgres")
        self.root = tempfile.mkdtemp(prefix="sink-pg-")
        os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        os.chmod(self.root, 0o700)
        self.data = os.path.join(self.root, "data")
        self.logfile = os.path.join(self.root, "server.log")
        try:
            self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync",
                      "-E", "UTF8", "--locale=C")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _run(self, tool: str, *args: str, check: bool = True, timeout: float = 120):
        command = ["runuser", "-u", "postgres", "--", os.path.join(self.bindir, tool), *args]
        result = subprocess.run(command, capture_output=True, timeout=timeout, cwd=self.root)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): "
                               f"{result.stderr.decode(errors='replace')[-2000:]}\n"
                               f"{self.log_tail()}")
        return result

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.logfile, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        options = [f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1"]
        options += [f"-c {k}={v}" for k, v in self.settings.items()]
        self._run("pg_ctl", "-D", self.data, "-l", self.logfile, "-o", " ".join(options),
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate`` is a crash as far as the data is concerned: no checkpoint, crash
        recovery from the WAL at the next start."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", self.data, "status", check=False).returncode == 0

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        admin = create_engine(self.admin_url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.admin_url(name)

    def destroy(self) -> None:
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop",
                          check=False, timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
