"""A newcomer's first hour (issue 14): the README's commands from a clean clone where pip is
refused outside a virtual environment, and what the command line says to someone new."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import make_mail, require
from tests.test_cli import sink

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.S)


def fresh_machine_env(home: Path) -> dict:
    """pip refuses to install outside a virtual environment, as Debian 12's
    externally-managed Python does; no virtual environment of ours is active."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SINK_CONFIG")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env.update(PIP_REQUIRE_VIRTUALENV="true", HOME=str(home))
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A clean clone of this repository's committed state."""
    require(shutil.which("git") is not None, "git")
    target = tmp_path_factory.mktemp("newcomer") / "crm-sink"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True, timeout=120)
    return target


def test_the_first_command_works_from_a_clean_clone_where_pip_needs_a_venv(clone):
    env = fresh_machine_env(clone.parent)
    refused = subprocess.run([shutil.which("python3", path=env["PATH"]), "-m", "pip",
                              "install", "--dry-run", "-e", "."], cwd=clone, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0          # the old first command would fail here
    first = readme_blocks()[0].strip()
    assert first.startswith("python3 -m venv .venv") and first.endswith(" serve"), first
    # `serve` runs until SIGTERM: the same command, ending with a command that ends
    bounded = first.removesuffix(" serve") + " status --json"
    done = subprocess.run(["bash", "-c", bounded], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "database at revision" in done.stdout
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert status["suspended"] is False and status["failed"] == 0
    assert (clone / "var" / "sink.db").stat().st_size > 0
    assert (clone / ".venv" / "bin" / "sink").exists()
    listed = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True,
                            text=True, check=True).stdout
    assert listed == "", listed             # .venv/, var/ and egg-info are git-ignored


def test_ci_run_installs_into_the_venv_too(clone):
    script = (clone / ".ci" / "run").read_text()
    assert "python3 -m venv .venv" in script and "python3 -m pip" not in script
    assert readme_blocks()[1].strip() == "bash .ci/run"
    env = fresh_machine_env(clone.parent)
    env["CI"] = "true"
    done = subprocess.run(["bash", ".ci/run", "tests/test_deploy.py"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tests = len(re.findall(r"^def test_", (clone / "tests" / "test_deploy.py").read_text(),
                           re.M))
    assert tests >= 4 and re.search(rf"\b{tests} passed\b", done.stdout), done.stdout[-2000:]


def test_every_command_is_in_the_readme_list():
    from sink.cli import build_parser
    commands = build_parser()._subparsers._group_actions[0].choices
    listing = README.split("## The command line", 1)[1].split("```", 2)[1]
    for name in commands:       # (`sink passwd` needs no config file)
        assert re.search(rf"^sink (--config F )?{name}\b", listing, re.M), name


def test_sink_alone_lists_the_commands():
    result = sink(None)
    err = result.stderr.decode()
    assert result.returncode == 2
    for name in ("serve", "messages", "export", "replay", "suspend", "status"):
        assert re.search(rf"^\s+{name}\s", err, re.M), (name, err)


def test_serve_help_says_what_serve_does():
    out = sink(None, "serve", "--help").stdout.decode()
    assert "SIGTERM" in out and "db upgrade" in out and "250" in out


@pytest.fixture
def config_file(tmp_path, db_url):
    from tests.conftest import seeded
    seeded(db_url).dispose()
    path = tmp_path / "sink.toml"
    path.write_text(f'[database]\nurl = "{db_url}"\n[[boxes]]\naddress = "crm@firma.cz"\n')
    return path


def test_replay_without_arguments_says_what_to_give(config_file):
    result = sink(config_file, "replay")
    err = result.stderr.decode()
    assert result.returncode == 2 and "not both" not in err
    assert "give message IDs" in err and "--all-failed" in err
    both = sink(config_file, "replay", "1", "--all-failed").stderr.decode()
    assert "not both" in both


def test_messages_has_a_header_naming_the_columns(config_file, tmp_path):
    mail = tmp_path / "in.eml"
    mail.write_bytes(make_mail(subject="Hello there"))
    sink(config_file, "ingest", mail, check=True)
    lines = sink(config_file, "messages", check=True).stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "RECEIVED", "(UTC)", "CHANNEL", "STATUS", "VERDICT",
                                "ACT", "SENDER", "SUBJECT"]
    assert "PROCESSED" in lines[1] and "Hello there" in lines[1]
    assert lines[0].index("STATUS") == lines[1].index("processed")
    as_json = sink(config_file, "messages", "--json", check=True).stdout.decode()
    assert as_json.startswith("{")          # no header for programs


def _serve_with(config_file, tmp_path, listener: str) -> tuple[int, list[str]]:
    """`sink serve` with one more [[listeners]] entry; its exit code and the lines of its
    standard error that are not JSON log lines."""
    path = tmp_path / "serve.toml"
    path.write_text(config_file.read_text() + "[[listeners]]\n" + listener)
    result = sink(path, "serve")
    return result.returncode, [line for line in result.stderr.decode().splitlines()
                               if not line.startswith("{")]


def test_serve_names_the_key_of_a_file_or_address_it_cannot_use(config_file, tmp_path):
    """Before: "storage unavailable" (exit 1, as if the database were down, and systemd
    restarted it for ever) or two tracebacks (the users file)."""
    import socket
    import trustme
    server = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    smtp = 'protocol = "smtp"\naddress = "127.0.0.1:0"\n'
    tls = f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    missing = tmp_path / "missing.pem"
    cases = {
        f'tls_cert = "{missing}"\ntls_key = "{key}"\n':
            f"listeners[0].tls_cert / tls_key: not a usable certificate and key ({missing}",
        f'tls_cert = "{key}"\ntls_key = "{cert}"\n':     # swapped
            "listeners[0].tls_cert / tls_key: not a usable certificate and key",
        tls + f'tls_client_ca = "{missing}"\n':
            f"listeners[0].tls_client_ca: not a usable CA file ({missing}",
        tls + f'auth = "required"\nauth_users_file = "{missing}"\n':
            f"listeners[0].auth_users_file: {missing}: cannot read",
    }
    for more, said in cases.items():
        code, err = _serve_with(config_file, tmp_path, smtp + more)
        assert code == 2 and len(err) == 1 and err[0].startswith("sink: error: " + said), \
            (more, code, err)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = _serve_with(config_file, tmp_path,
                                f'protocol = "lmtp"\naddress = "127.0.0.1:{port}"\n')
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"sink: error: listeners[0].address: cannot listen on "
                             f"127.0.0.1:{port} (") and "in use" in err[0]


def test_a_reader_that_stops_early_is_no_storage_failure(config_file, tmp_path):
    """`sink show 1 --raw | head -c 10`: said "storage unavailable" (Broken pipe), exit 1."""
    mail = tmp_path / "in.eml"
    mail.write_bytes(make_mail(body="y" * 400_000))
    sink(config_file, "ingest", mail, check=True)
    for args in (["show", "1", "--raw"], ["show", "1"]):
        proc = subprocess.Popen([sys.executable, "-m", "sink", "--config", str(config_file),
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.read(10)
        proc.stdout.close()                 # the reader goes away, as head does
        err = proc.stderr.read().decode()
        assert proc.wait(60) == 0 and "unavailable" not in err and "Traceback" not in err, err


@pytest.mark.postgres
def test_a_password_with_url_escapes_works_and_is_never_shown(tmp_path, pg_available):
    """SQLAlchemy writes '@', ':', '%' ... of a password as %XX; alembic's ConfigParser took
    that '%' for interpolation: every command failed with a traceback holding the password."""
    import uuid
    from tests.conftest import create_pg_database, drop_pg_database
    require(pg_available, "PostgreSQL at 127.0.0.1:5432")
    name = f"sink_test_{uuid.uuid4().hex[:12]}"
    url = create_pg_database(name)      # trust auth: the password is sent, and not checked
    secret = "S3cr%40t%25-Pa55"         # the password S3cr@t%-Pa55
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\nurl = "{url.replace("postgres@", f"postgres:{secret}@")}"'
                      '\n[[boxes]]\naddress = "crm@firma.cz"\n')
    try:
        for command in (["db", "upgrade"], ["status"], ["messages"]):
            result = sink(config, *command)
            said = (result.stdout + result.stderr).decode()
            assert result.returncode == 0, said
            assert "Pa55" not in said and "Traceback" not in said, said
    finally:
        drop_pg_database(name)


def test_a_never_upgraded_database_is_not_created_by_a_command(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/data/sink.db"\n'
                      '[[boxes]]\naddress = "crm@firma.cz"\n')
    for command in (["messages"], ["status"], ["suspend"]):
        result = sink(config, *command)
        assert result.returncode == 2 and "sink db upgrade" in result.stderr.decode()
    assert not (tmp_path / "data").exists()
    assert sink(config, "db", "upgrade").returncode == 0
    assert (tmp_path / "data" / "sink.db").stat().st_size > 0


def test_postfix_readme_refers_only_to_what_the_repository_has():
    text = (ROOT / "deploy" / "postfix" / "README.md").read_text()
    assert "SPEC" not in text or (ROOT / "SPEC.md").exists()
    for link in re.findall(r"\]\(([^)#]+)", text):
        if not link.startswith("http"):
            assert (ROOT / "deploy" / "postfix" / link).resolve().exists(), link


def run_on_a_terminal(args: list[str]) -> str:
    """``sink ARGS`` with standard output on a pseudo-terminal; what the terminal got."""
    main, other = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sink", *args], stdout=other,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(other)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(60)
    os.close(main)
    return b"".join(chunks).decode("utf-8", "replace")


def test_long_commands_show_progress_on_a_terminal_only(config_file, tmp_path):
    from sink.intake import Envelope, Intake
    from sink.config import load_config
    from sink.db.engine import make_engine
    config = load_config(config_file)
    engine = make_engine(config.database_url)

    def boom(*args, **kwargs):
        raise RuntimeError("broken rule")
    for n in range(5):
        Intake(engine, rules=boom).deliver(make_mail(subject=f"failing {n}"),
                                           Envelope("cli"), config.boxes)
    engine.dispose()
    export = ["--config", str(config_file), "export", str(tmp_path / "out")]
    piped = sink(config_file, *export[2:], check=True).stdout.decode()
    assert piped.count("\n") == 1 and "\x1b" not in piped      # a pipe: the JSON line only
    shown = run_on_a_terminal(export)
    assert "export" in shown and "\x1b[" in shown               # the bar was drawn
    replay = ["--config", str(config_file), "replay", "--all-failed"]
    shown = run_on_a_terminal(replay)
    assert "replay" in shown and "5/5" in shown
    # the JSON lines reach the terminal whole (not wrapped, not coloured) above the bar
    objects = [json.loads(m) for m in re.findall(r'(\{"file".*\})\r?\n', shown)]
    assert [o["replayed"] for o in objects] == [True] * 5
    assert [o["id"] for o in objects] == [1, 2, 3, 4, 5]
