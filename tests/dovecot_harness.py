"""A private Dovecot 2.3 for the source tests: its own config file (``dovecot -F -c FILE``),
IMAP and POP3 on free loopback ports (plain, STARTTLS with a test CA's certificate, and
implicit TLS), a passwd-file passdb, a static userdb running as ``nobody``, maildirs under a
temporary directory, logs in a file. It stops with the test (``stop()``, atexit) and, should
the test process die, by itself: the master gets SIGTERM when its parent goes
(``PR_SET_PDEATHSIG``).

``oauth_introspection`` adds Dovecot's oauth2 passdb for XOAUTH2/OAUTHBEARER, asking that URL
(over HTTPS, trusting ``ca_file``) whether a bearer token is valid and whose it is.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.support import free_ports
from tests.tlsutil import TestCA, make_test_ca

DOVECOT = "/usr/sbin/dovecot"
NOBODY = 65534


def dovecot_available() -> bool:
    return os.path.exists(DOVECOT) and os.path.exists("/usr/lib/dovecot/imap") \
        and os.path.exists("/usr/lib/dovecot/pop3") and os.geteuid() == 0


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)           # PR_SET_PDEATHSIG


CONFIG = """\
protocols = imap pop3
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth_mechs}
mail_location = maildir:{root}/mail/%u
first_valid_uid = 1
pop3_uidl_format = %08Xu%08Xv
mailbox_idle_check_interval = 1 secs
protocol imap {{
  mail_max_userip_connections = 50
}}
{oauth_passdb}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s}
  }}
}}
service anvil {{
  chroot =
}}
"""

OAUTH_PASSDB = """\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/oauth2.conf
}}
"""

OAUTH_CONF = """\
introspection_mode = post
introspection_url = {url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
tls_ca_cert_file = {ca}
"""


class Dovecot:
    def __init__(self, users: dict[str, str], oauth_introspection: str | None = None,
                 oauth_ca: str | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="sink-dovecot-"))
        os.chmod(self.root, 0o755)          # login processes and `nobody` traverse it
        self.tls: TestCA = make_test_ca(self.root / "tls")
        self.users = dict(users)
        names = ("imap", "imaps", "pop3", "pop3s")
        self.ports = dict(zip(names, free_ports(len(names))))
        (self.root / "passwd").write_text(
            "".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in users.items()))
        for user in users:
            self.maildir(user)
        oauth_passdb = oauth_mechs = ""
        if oauth_introspection:
            # the auth process runs as an unprivileged user: the CA file must be readable
            ca = self.root / "oauth-ca.pem"
            shutil.copyfile(oauth_ca, ca)
            os.chmod(ca, 0o644)
            (self.root / "oauth2.conf").write_text(OAUTH_CONF.format(
                url=oauth_introspection, ca=ca))
            oauth_passdb = OAUTH_PASSDB.format(root=self.root)
            oauth_mechs = " xoauth2 oauthbearer"
        self.config = self.root / "dovecot.conf"
        self.config.write_text(CONFIG.format(
            root=self.root, cert=self.tls.cert_file, key=self.tls.key_file, uid=NOBODY,
            oauth_passdb=oauth_passdb, oauth_mechs=oauth_mechs, **self.ports))
        self.proc: subprocess.Popen | None = None
        self.start()
        atexit.register(self.stop)

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    def start(self) -> None:
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"),
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited {self.proc.returncode}: {self.log_tail()}")
            try:
                for port in self.ports.values():
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"dovecot did not listen: {self.log_tail()}")

    def stop(self) -> None:
        """Stop the master (it stops its children); the files stay until cleanup()."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------------- mailboxes
    def maildir(self, user: str, folder: str | None = None) -> Path:
        """The maildir of ``user`` (or of its ``folder``, Maildir++ ``.Folder``), created."""
        base = self.root / "mail" / user
        path = base / f".{folder}" if folder else base
        for sub in ("", "cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        for p in [self.root / "mail", base, *(path / s for s in ("", "cur", "new", "tmp"))]:
            os.chown(p, NOBODY, NOBODY)
        (self.root / "home").mkdir(exist_ok=True)
        return path

    def drop(self, user: str, raw: bytes, folder: str | None = None) -> Path:
        """A message delivered the way an MDA does: written in tmp/, renamed into new/."""
        path = self.maildir(user, folder)
        name = f"{time.time():.6f}.{uuid.uuid4().hex}.sinktest"
        tmp = path / "tmp" / name
        tmp.write_bytes(raw)
        os.chown(tmp, NOBODY, NOBODY)
        os.rename(tmp, path / "new" / name)
        return path / "new" / name

    def files(self, user: str, folder: str | None = None) -> list[Path]:
        path = self.maildir(user, folder)
        return sorted([*(path / "new").iterdir(), *(path / "cur").iterdir()])

    def contents(self, user: str, folder: str | None = None) -> list[bytes]:
        return [p.read_bytes() for p in self.files(user, folder)]

    def flags(self, user: str, folder: str | None = None) -> list[str]:
        """The maildir flags of each message in cur/ ("S" = \\Seen), by file name."""
        return [p.name.rpartition(":2,")[2] for p in self.files(user, folder)
                if p.parent.name == "cur"]
