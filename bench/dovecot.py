"""What the benchmark's Dovecot server needs besides starting and stopping it
(:class:`bench.servers.Dovecot` does that): its configuration file, its directories, and the
count of the messages it really wrote.

Dovecot is the delivery agent a mail admin already trusts, so it is the reference every figure
is also given against: Debian's ``dovecot-lmtpd`` delivering over LMTP into one maildir per
benchmark box, with Dovecot's default ``mail_fsync = optimized`` (the message file is fsynced
before it is renamed into ``new/`` and the 250 is sent), Dovecot's default index files, and the
default one-client-per-process ``lmtp`` service.
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import subprocess
from pathlib import Path

DOVECOT = "/usr/sbin/dovecot"
DOVECONF = "/usr/bin/doveconf"
LMTP = "/usr/lib/dovecot/lmtp"          # Debian's dovecot-lmtpd
NOBODY = 65534                          # Dovecot refuses to deliver as root

# The boxes are the passdb (static userdb looks the user up there, so only they are valid
# recipients: anyone else gets 550 like at the sink); nobody ever logs in, the passwords are
# empty. ``mail_fsync`` is Dovecot's default, written out so that the file says what is measured.
CONFIG = """\
protocols = lmtp
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
mail_location = maildir:{root}/mail/%u
mail_fsync = optimized
first_valid_uid = {uid}
lmtp_save_to_detail_mailbox = no
passdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={root}/home/%u
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service anvil {{
  chroot =
}}
"""


def available() -> bool:
    """Dovecot and its LMTP server are installed, and we may start it (it needs root)."""
    return all(os.access(p, os.X_OK) for p in (DOVECOT, DOVECONF, LMTP)) and os.geteuid() == 0


def untraversable_ancestor(path: Path) -> Path | None:
    """The first directory above ``path`` that Dovecot's unprivileged processes (auth runs as
    ``dovecot``, deliveries as ``nobody``) cannot enter, or None."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def prepare(root: Path, port: int, boxes: tuple[str, ...]) -> Path:
    """Write the configuration, the passdb and one empty maildir per box under ``root``;
    return the configuration file."""
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)               # the umask must not take the others' search bit
    (root / "users").write_text("".join(f"{box}::::::\n" for box in boxes))
    os.chmod(root / "users", 0o644)
    for box in boxes:
        for sub in ("cur", "new", "tmp"):
            (root / "mail" / box / sub).mkdir(parents=True, exist_ok=True)
    (root / "home").mkdir()
    for directory, _, _ in os.walk(root / "mail"):
        os.chown(directory, NOBODY, NOBODY)
    os.chown(root / "home", NOBODY, NOBODY)
    config = root / "dovecot.conf"
    config.write_text(CONFIG.format(root=root, port=port, uid=NOBODY))
    return config


def check_config(config: Path) -> str:
    """``doveconf -n``: the settings that differ from Dovecot's defaults; raises with
    Dovecot's own message when the file is wrong (clearer than a master that will not start)."""
    done = subprocess.run([DOVECONF, "-c", str(config), "-n"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"doveconf rejects {config}: {done.stderr.strip()}")
    return done.stdout


def delivered(root: Path) -> int:
    """Messages Dovecot wrote: the files in every box's ``new/`` and ``cur/``."""
    return sum(1 for box in (root / "mail").iterdir() for sub in ("new", "cur")
               for entry in os.scandir(box / sub) if entry.is_file())


def die_with_parent() -> None:
    """For ``preexec_fn``: the master gets SIGTERM when the benchmark dies, so that a killed
    benchmark leaves no Dovecot listening behind it."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)           # PR_SET_PDEATHSIG
