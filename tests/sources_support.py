"""Helpers of the source tests: a TOML config with [[sources]], `sink poll`, what was stored."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from sqlalchemy import func, select

from sink.db import schema as t

BOX = "crm@firma.cz"
USER = "crm@firma.cz"
PASSWORD = "s3cret-Password!"


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def write_config(path: Path, db_url: str, sources: list[dict], listen_port: int | None = None,
                 extra: str = "", log_level: str = "warning") -> Path:
    lines = [f"[database]\nurl = {toml_value(db_url)}\n", f'[log]\nlevel = "{log_level}"\n']
    if listen_port is not None:
        lines.append(f'[[listeners]]\nprotocol = "lmtp"\naddress = "127.0.0.1:{listen_port}"\n')
    lines.append(f'[[boxes]]\naddress = "{BOX}"\n')
    for source in sources:
        lines.append("[[sources]]\n" + "".join(f"{k} = {toml_value(v)}\n"
                                             for k, v in source.items()))
    path.write_text("\n".join(lines) + extra)
    return path


def imap_source(dovecot, secret_file: Path, **more) -> dict:
    secret_file.write_text(PASSWORD + "\n")
    return {"kind": "imap", "box": BOX, "host": "127.0.0.1", "port": dovecot.ports["imap"],
            "tls": "none", "user": USER, "password_file": str(secret_file), **more}


def pop3_source(dovecot, secret_file: Path, **more) -> dict:
    secret_file.write_text(PASSWORD + "\n")
    return {"kind": "pop3", "box": BOX, "host": "127.0.0.1", "port": dovecot.ports["pop3"],
            "tls": "none", "user": USER, "password_file": str(secret_file), **more}


def run_poll(config_path: Path, *args: str) -> tuple[int, list[dict]]:
    """`sink poll` in this process; the log configuration it sets (pointing at this test's
    captured stderr, closed after the test) is put back afterwards."""
    import structlog
    from sink.cli import main
    saved = structlog.get_config()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main(["--config", str(config_path), "poll", *args])
    finally:
        structlog.configure(**saved)
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def stored_raws(engine, channel: str | None = None) -> list[bytes]:
    query = (select(t.raw_messages.c.content)
             .join(t.messages, t.messages.c.id == t.raw_messages.c.message_id)
             .where(t.messages.c.parent_id.is_(None)).order_by(t.messages.c.id))
    if channel:
        query = query.where(t.messages.c.channel == channel)
    with engine.connect() as conn:
        return [bytes(r) for r in conn.execute(query).scalars()]


def message_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t.messages)
                            .where(t.messages.c.parent_id.is_(None))).scalar()
