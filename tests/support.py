"""Helpers shared by the tests: building messages, a raw LMTP/SMTP client, components."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import uuid
from email.message import EmailMessage
from email.utils import format_datetime
from datetime import datetime, timezone

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

DIRECTORY = {
    "roles": [{"name": "Management", "level": 1}, {"name": "Sales", "level": 2},
              {"name": "Support", "level": 3}],
    "users": [
        {"email": "alice@firma.cz", "name": "Alice", "role": "Sales",
         "aliases": ["alice.novak@firma-group.com"]},
        {"email": "bob@firma.cz", "name": "Bob", "role": "Management", "aliases": []},
        {"email": "carol@firma.cz", "name": "Carol", "role": "Support"},
        {"email": "dave@firma.cz", "name": "Dave"},
    ],
    "companies": [
        {"name": "ACME", "emails": ["info@acme.cz"], "domains": ["acme.cz"]},
        {"name": "Globex", "emails": ["office@globex.com"], "domains": []},
        {"name": "FreeMail Shop", "emails": ["shop.owner@gmail.com"], "domains": ["gmail.com"]},
    ],
    "contacts": [
        {"email": "jan@acme.cz", "name": "Jan", "company": "ACME"},
        {"email": "eva@globex.com", "name": "Eva", "company": "Globex"},
        {"email": "petr@gmail.com", "name": "Petr"},
        {"email": "vip@partner.cz", "name": "VIP"},
    ],
    "contracts": [{"number": "2023-015", "name": "Web", "kind": "contract"},
                  {"number": "PRJ-9", "name": "Migration", "kind": "project"}],
    "orders": [{"number": "OBJ-77"}],
    "tasks": [{"number": "T-100", "subject": "Install"}],
    "activity_types": ["E-mail", "Documentation", "Phone call"],
}


def require(condition: bool, what: str) -> None:
    """Skip when a real component is missing locally; in CI a missing component is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but is not available", pytrace=False)
    pytest.skip(f"{what} not available")


def have_binary(name: str) -> bool:
    return shutil.which(name) is not None or os.path.exists(f"/usr/sbin/{name}")


def make_mail(*, sender="jan@acme.cz", to=("alice@firma.cz",), cc=(), subject="Hello",
              body="Hello,\nregards", html=None, date=None, message_id=None, headers=None,
              attachments=()) -> bytes:
    """An RFC 5322 message as bytes (CRLF line ends), unique Message-ID unless given."""
    msg = EmailMessage()
    if sender is not None:
        msg["From"] = sender
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = date or format_datetime(datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc))
    msg["Message-ID"] = message_id or f"<{uuid.uuid4().hex}@test>"
    for name, value in (headers or {}).items():
        msg[name] = value
    if html is not None and body is None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    for maintype, subtype, data, filename in attachments:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def dot_stuff(data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)


class MailClient:
    """A deliberately plain LMTP/SMTP client over a real socket, reading raw replies, so tests
    see exactly what an MTA sees (smtplib hides LMTP's per-recipient replies)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        return int(lines[-1][:3]), "\n".join(l[4:] for l in lines)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.sock.sendall((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def hello(self, lmtp: bool = True) -> tuple[int, str]:
        return self.cmd(("LHLO " if lmtp else "EHLO ") + "client.test")

    def send(self, raw: bytes, rcpts=("crm@firma.cz",), mail_from="mta@firma.cz",
             lmtp: bool = True, smtputf8: bool = False) -> list[tuple[int, str]]:
        """MAIL, RCPTs, DATA: returns the RCPT replies followed by the DATA replies."""
        options = " SMTPUTF8" if smtputf8 else ""
        code, text = self.cmd(f"MAIL FROM:<{mail_from}>{options}")
        assert code == 250, (code, text)
        rcpt_replies = [self.cmd(f"RCPT TO:<{r}>") for r in rcpts]
        accepted = sum(1 for c, _ in rcpt_replies if c == 250)
        if not accepted:
            self.cmd("RSET")
            return rcpt_replies
        code, text = self.cmd("DATA")
        assert code == 354, (code, text)
        payload = dot_stuff(raw)
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        self.sock.sendall(payload + b".\r\n")
        replies = [self.reply() for _ in range(accepted if lmtp else 1)]
        return rcpt_replies + replies

    def close(self) -> None:
        try:
            self.cmd("QUIT")
        except OSError:
            pass
        self.sock.close()

    def abort(self) -> None:
        """Hang up without QUIT (the reader made by makefile() holds the socket open too)."""
        self.file.close()
        self.sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different free loopback ports: bound side by side, so the kernel cannot hand
    the same one out twice (one after the other it did: CI saw Dovecot refuse "duplicate
    listener" for IMAP and POP3 on one port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SinkProcess:
    """A real `sink serve` process; stops itself (SIGTERM, then SIGKILL) when closed."""

    def __init__(self, config_path, port: int, log_path=None, new_session: bool = False):
        import subprocess
        import sys
        self.port = port
        self.log_path = log_path or f"{config_path}.{port}.log"
        self.log = open(self.log_path, "ab")
        # new_session: a process group of its own (with its storage workers), as under a
        # service manager that signals the whole group.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sink", "--config", str(config_path), "serve"],
            stdout=self.log, stderr=self.log, start_new_session=new_session)
        try:
            self.wait_listening()
        except BaseException:
            self.kill()                 # never leave a half-started server behind
            raise

    def wait_listening(self, timeout: float = 30) -> None:
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sink serve exited {self.proc.returncode}: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"sink serve did not listen on {self.port}: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with open(self.log_path, "rb") as f:
            return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")

    def stop(self, timeout: float = 20) -> int:
        import signal
        import subprocess
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash, an OOM kill, a power cut of the process)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()


def wait_for(predicate, timeout: float = 20.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (its last answer)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (``sink serve``'s storage workers)."""
    import os
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts as gone: it runs no more code)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def write_config(path, db_url: str, port: int, protocol: str = "lmtp", **box) -> None:
    lines = [f'[database]\nurl = "{db_url}"\n',
             f'[[listeners]]\nprotocol = "{protocol}"\naddress = "127.0.0.1:{port}"\n',
             '[[boxes]]\naddress = "crm@firma.cz"']
    for key, value in box.items():
        lines.append(f"{key} = {value!r}".replace("'", '"').replace("True", "true")
                     .replace("False", "false"))
    path.write_text("\n".join(lines) + "\n")


def dkim_test_key() -> tuple[bytes, bytes]:
    """A fresh RSA key for DKIM tests: (private key PEM, its DNS TXT record)."""
    import base64
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def side_by_side(work, items, timeout: float = 60) -> None:
    """``work(item)`` for every item at once, each in its own thread, all released together
    (a barrier), and joined: what several MTAs or connections do at the same moment."""
    go = threading.Barrier(len(items))

    def run(item):
        go.wait()
        work(item)
    threads = [threading.Thread(target=run, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
