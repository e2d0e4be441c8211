"""A private, throw-away Postfix instance and a real ``sink serve`` process, for end-to-end tests.

The Postfix instance is configured from the files a mail administrator copies
(``deploy/postfix/``): every setting of ``main.cf.snippet`` goes into the instance's main.cf as
shipped, with only the configuration directory moved (``/etc/postfix/`` -> the instance's), and
the ``transport`` and ``bcc_maps`` tables are installed as shipped, with only the sink's port
changed (``127.0.0.1:2424`` -> a free loopback port). Everything else in the generated main.cf
keeps the instance private and makes sure nothing ever leaves the machine:

- smtpd listens on one high loopback port (master.cf), nothing on port 25;
- no ``smtp``/``relay`` client service exists in master.cf, and every route except the box's
  transport entry ends in ``discard:`` or ``error:``: mail for the employees' and customers'
  domains is accepted from loopback and thrown away locally;
- its own queue, data directory and log file under the session's temporary directory.

Postfix runs as root (``postfix -c DIR start-fg``); as root, a private configuration directory
needs no ``alternate_config_directories`` entry in /etc/postfix/main.cf (that list only guards
set-gid commands run by other users), so the machine's Postfix configuration is never touched.
"""

from __future__ import annotations

import atexit
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "postfix"
SNIPPET = DEPLOY / "main.cf.snippet"
TABLES = ("transport", "bcc_maps")
DEPLOY_SINK_ADDRESS = "127.0.0.1:2424"      # where the deploy files send the box's copy
DEPLOY_CONFIG_DIR = "/etc/postfix/"

POSTFIX_TOOLS = ("postfix", "postconf", "postmap", "postqueue", "postsuper")
ENV = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"}
ENV.pop("MAIL_CONFIG", None)

T = TypeVar("T")


# ------------------------------------------------------------------------------------ helpers

def tool(name: str) -> str | None:
    found = shutil.which(name, path=ENV["PATH"])
    return found


def postfix_missing() -> str | None:
    """Why a private Postfix cannot run here, or None when it can."""
    missing = [name for name in POSTFIX_TOOLS if tool(name) is None]
    if missing:
        return "missing " + ", ".join(missing)
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no 'postfix' user"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               diagnostics: Callable[[], str] = lambda: "", interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with diagnostics otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n"
                                 f"{diagnostics()}")
        time.sleep(interval)


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text("utf-8", "replace")
    except FileNotFoundError:
        return f"({path.name}: not written)"
    return "\n".join(text.splitlines()[-lines:])


def read_main_cf(path: Path) -> dict[str, str]:
    """``name = value`` settings of a main.cf-format file, in order (Postfix's own syntax:
    ``#`` comment lines and blank lines are ignored, a line starting with whitespace continues
    the previous setting)."""
    settings: dict[str, str] = {}
    key = None
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if key is None:
                raise ValueError(f"{path}:{number}: continuation line without a setting")
            settings[key] += " " + line.strip()
            continue
        match = re.fullmatch(r"([A-Za-z0-9_]+)\s*=\s*(.*?)\s*", line)
        if not match:
            raise ValueError(f"{path}:{number}: not a 'name = value' line: {line!r}")
        key = match[1]
        if key in settings:
            raise ValueError(f"{path}:{number}: {key} is set twice")
        settings[key] = match[2]
    return settings


def _run(args: list[str], *, check: bool = True, timeout: float = 60,
         **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=ENV, capture_output=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}:\n"
                           f"{result.stdout!r}\n{result.stderr!r}")
    return result


# ------------------------------------------------------------------------------------ Postfix

MASTER_CF = """\
# A private test instance: smtpd on one loopback port only, no chroot, no smtp/relay client
# (nothing can be sent anywhere), postlog for maillog_file.
127.0.0.1:{smtp_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """One private Postfix: ``build()``, ``start()``, submit mail, inspect the queue, ``stop()``."""

    def __init__(self, root: Path, sink_port: int):
        self.root = root
        self.conf = root / "conf"
        self.queue_dir = root / "queue"
        self.data_dir = root / "data"
        self.log_file = root / "postfix.log"
        self.out_file = root / "start-fg.out"
        self.smtp_port = free_port()
        self.sink_port = sink_port
        self.snippet = read_main_cf(SNIPPET)
        self.box = self.snippet["always_bcc"]
        self.proc: subprocess.Popen | None = None
        self.hostname = "mx.sinktest.invalid"

    # -------------------------------------------------------------------- configuration
    def instance_settings(self) -> dict[str, str]:
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
            "myhostname": self.hostname,
            "mydomain": "sinktest.invalid",
            "myorigin": "$myhostname",
            "biff": "no",
            "append_dot_mydomain": "no",
            "alias_maps": "",
            "alias_database": "",
            # Fast retries so a deferred copy is retried within a second or two.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }

    def safety_settings(self) -> dict[str, str]:
        """Last in main.cf, so they win: only loopback, and nothing is ever relayed out."""
        return {
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "relay_domains": "",
            "relayhost": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "default_transport": "discard:test instance, never leaves the machine",
            "relay_transport": "discard:test instance, never leaves the machine",
            "local_transport": "error:5.1.1 no local delivery in the test instance",
            "virtual_transport": "error:5.1.1 no virtual delivery in the test instance",
        }

    def deployed_settings(self) -> dict[str, str]:
        """main.cf.snippet as shipped; only the configuration directory is this instance's."""
        return {key: value.replace(DEPLOY_CONFIG_DIR, f"{self.conf}/")
                for key, value in self.snippet.items()}

    def build(self) -> None:
        for directory in (self.conf, self.queue_dir, self.data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        deployed = self.deployed_settings()
        overlap = (set(deployed) & set(self.safety_settings())) | (
            set(deployed) & set(self.instance_settings()))
        if overlap:
            raise AssertionError(f"{SNIPPET} sets {sorted(overlap)}, which the test instance "
                                 "must control itself")
        lines = ["# Generated by tests/postfix_harness.py", "", "# the test instance"]
        lines += [f"{k} = {v}" for k, v in self.instance_settings().items()]
        lines += ["", f"# from {SNIPPET.relative_to(REPO)}"]
        lines += [f"{k} = {v}" for k, v in deployed.items()]
        lines += ["", "# never leave the machine"]
        lines += [f"{k} = {v}" for k, v in self.safety_settings().items()]
        (self.conf / "main.cf").write_text("\n".join(lines) + "\n")
        (self.conf / "master.cf").write_text(MASTER_CF.format(smtp_port=self.smtp_port))

        for name in TABLES:
            text = (DEPLOY / name).read_text("utf-8")
            if name == "transport":
                if DEPLOY_SINK_ADDRESS not in text:
                    raise AssertionError(f"{DEPLOY / name} no longer names {DEPLOY_SINK_ADDRESS}")
                text = text.replace(DEPLOY_SINK_ADDRESS, f"127.0.0.1:{self.sink_port}")
            (self.conf / name).write_text(text)
            _run([tool("postmap"), "-c", str(self.conf), f"hash:{self.conf / name}"])

        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        # Validates the configuration and creates the queue's subdirectories with Postfix's
        # owners and modes (post-install create-missing); unlike set-permissions, it changes
        # nothing outside this instance. Its findings go to the instance's log.
        try:
            _run([tool("postfix"), "-c", str(self.conf), "check"])
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.diagnostics()}") from None

    # -------------------------------------------------------------------- life cycle
    def start(self, timeout: float = 90) -> None:
        with open(self.out_file, "ab") as out:
            self.proc = subprocess.Popen(
                [tool("postfix"), "-c", str(self.conf), "start-fg"], env=ENV,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        atexit.register(self.stop)
        wait_until(lambda: self.proc.poll() is not None or port_open(self.smtp_port), timeout,
                   f"Postfix smtpd on 127.0.0.1:{self.smtp_port}", self.diagnostics)
        if self.proc.poll() is not None:
            raise RuntimeError(f"postfix start-fg exited {self.proc.returncode}\n"
                               f"{self.diagnostics()}")

    def stop(self) -> None:
        """Stop the master and every daemon of this instance; kill what does not stop."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            _run([tool("postfix"), "-c", str(self.conf), "stop"], check=False, timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            for pid in self.daemon_pids():
                _kill(pid, signal.SIGKILL)
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # The daemons exit when their master is gone; make sure none is left running.
        try:
            wait_until(lambda: not self.daemon_pids(), 15, "Postfix daemons to exit")
        except AssertionError:
            for pid in self.daemon_pids():
                _kill(pid, signal.SIGKILL)

    def daemon_pids(self) -> list[int]:
        """Running (not zombie) processes of this instance: they carry MAIL_CONFIG=<conf>."""
        marker = f"MAIL_CONFIG={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if marker in environ and state != "Z":
                pids.append(int(entry.name))
        return pids

    # -------------------------------------------------------------------- mail and queue
    def submit(self, raw: bytes, sender: str, recipients: list[str]) -> str:
        """Send one message to this instance's smtpd; return Postfix's queue id."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as smtp:
            smtp.ehlo("client.sinktest.invalid")
            code, reply = smtp.mail(sender)
            assert code == 250, (code, reply)
            for rcpt in recipients:
                code, reply = smtp.rcpt(rcpt)
                assert code == 250, (rcpt, code, reply)
            code, reply = smtp.data(raw)
            assert code == 250, (code, reply)
        match = re.search(rb"queued as ([0-9A-Za-z]+)", reply)
        assert match, reply
        return match[1].decode()

    def queue(self) -> list[dict]:
        """``postqueue -j``: one dict per queued message."""
        out = _run([tool("postqueue"), "-c", str(self.conf), "-j"]).stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        _run([tool("postqueue"), "-c", str(self.conf), "-f"])

    def purge(self) -> None:
        """Delete every queued message (isolates one test from another's leftovers)."""
        _run([tool("postsuper"), "-c", str(self.conf), "-d", "ALL"])

    def postconf(self, *args: str) -> subprocess.CompletedProcess:
        return _run([tool("postconf"), "-c", str(self.conf), *args])

    def postmap_query(self, key: str, table: str) -> str | None:
        result = _run([tool("postmap"), "-c", str(self.conf), "-q", key,
                       f"hash:{self.conf / table}"], check=False)
        return result.stdout.decode().strip() if result.returncode == 0 else None

    def log_text(self) -> str:
        try:
            return self.log_file.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def delivery_lines(self, queue_id: str, recipient: str) -> list[str]:
        """The log lines of the delivery attempts of one queued message to one recipient."""
        prefix = f"{queue_id}: to=<{recipient}>"
        return [line for line in self.log_text().splitlines() if prefix in line]

    def diagnostics(self) -> str:
        try:
            queue = json.dumps(self.queue(), indent=1)
        except Exception as exc:  # the diagnostics must never hide the original failure
            queue = f"(postqueue failed: {exc})"
        return (f"--- Postfix log ({self.log_file}), last lines:\n{tail(self.log_file)}\n"
                f"--- Postfix queue:\n{queue}\n"
                f"--- postfix start-fg output:\n{tail(self.out_file, 20)}")


@contextmanager
def running_postfix(cls: type = None, prefix: str = "crm-sink-postfix-",
                    keep: Callable[[], bool] = lambda: False):
    """A built and started private Postfix (``cls``: PostfixInstance or a subclass), stopped
    and removed afterwards - its directory kept when ``keep()`` says so (for inspection). Not
    under pytest's tmp_path: that is private to root (0700), and Postfix's daemons, which run
    as the postfix user, must reach their data directory."""
    from tests.support import require
    reason = postfix_missing()
    require(reason is None, f"Debian postfix ({reason})")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    instance = (cls or PostfixInstance)(root, sink_port=free_port())
    try:
        instance.build()
        instance.start()
        yield instance
    finally:
        instance.stop()
        if keep():
            print(f"\nPostfix test instance kept for inspection: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------ the sink

def sink_command() -> list[str]:
    """The ``sink`` console script of the interpreter running the tests."""
    script = Path(sys.executable).parent / "sink"
    if script.exists():
        return [str(script)]
    found = shutil.which("sink")
    return [found] if found else [sys.executable, "-m", "sink"]


class SinkProcess:
    """A real ``sink serve`` with its own TOML config, SQLite database and log file."""

    def __init__(self, root: Path, *, box: str, lmtp_port: int, directory: dict):
        self.root = root
        self.box = box
        self.lmtp_port = lmtp_port
        self.config = root / "sink.toml"
        self.db = root / "sink.db"
        self.log_file = root / "sink.log"
        self.stderr_file = root / "sink.stderr"
        self.directory_file = root / "directory.json"
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.db}"

    def prepare(self) -> None:
        """Write the config, create the schema and import the directory (the sink's CLI)."""
        self.config.write_text(
            "[database]\n"
            f"url = {json.dumps(self.database_url)}\n\n"
            "[log]\n"
            f"file = {json.dumps(str(self.log_file))}\n"
            'level = "info"\n\n'
            "[[listeners]]\n"
            'protocol = "lmtp"\n'
            f'address = "127.0.0.1:{self.lmtp_port}"\n\n'
            "[[boxes]]\n"
            f"address = {json.dumps(self.box)}\n"
            'internal_domains = ["firma.cz"]\n')
        self.directory_file.write_text(json.dumps(self.directory))
        self.cli("db", "upgrade")
        self.cli("directory", "import", str(self.directory_file))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return _run([*sink_command(), "--config", str(self.config), *args], timeout=120)

    def start(self, timeout: float = 60) -> None:
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.stderr_file, "ab") as err:
            self.proc = subprocess.Popen(
                [*sink_command(), "--config", str(self.config), "serve"],
                stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                start_new_session=True)
        atexit.register(self.stop)

        def listening() -> bool:
            if self.proc.poll() is not None:
                return True
            return any(e.get("event") == "listener.started" for e in self.log_events(offset))
        wait_until(listening, timeout, f"sink LMTP listener on 127.0.0.1:{self.lmtp_port}",
                   self.diagnostics)
        if self.proc.poll() is not None:
            raise RuntimeError(f"sink serve exited {self.proc.returncode}\n{self.diagnostics()}")

    def stop(self) -> None:
        """SIGTERM (the sink finishes messages in flight), SIGKILL after 20 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -------------------------------------------------------------------- inspection
    def log_events(self, offset: int = 0) -> list[dict]:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                data = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        events = []
        for line in data.splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def messages(self) -> list[dict]:
        """``sink messages --json``: every stored message, newest first."""
        out = self.cli("messages", "--json", "--limit", "100000").stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def rows(self, message_id: str) -> list[dict]:
        """Stored messages with this Message-ID header, oldest first."""
        return sorted((m for m in self.messages() if m["message_id"] == message_id),
                      key=lambda m: m["id"])

    def raw(self, stored_id: int) -> bytes:
        return self.cli("show", str(stored_id), "--raw").stdout

    def show(self, stored_id: int) -> str:
        return self.cli("show", str(stored_id)).stdout.decode()

    def detail(self, stored_id: int) -> dict:
        """The stored message with its activities, read with SQLAlchemy from the database."""
        from sqlalchemy import create_engine

        from sink.db.queries import message_detail
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return message_detail(conn, stored_id)
        finally:
            engine.dispose()

    def diagnostics(self) -> str:
        return (f"--- sink log ({self.log_file}), last lines:\n{tail(self.log_file, 30)}\n"
                f"--- sink stderr:\n{tail(self.stderr_file, 30)}")
