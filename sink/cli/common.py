"""What every command shares: usage errors, the engine, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from sink.config import Config

EXIT_OK, EXIT_TRANSIENT, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad argument; reported as one line and exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other usage error
        raise UsageError(message)


def day(text: str):
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def engine_for(config: Config, *, require_schema: bool = True):
    from sink.db.engine import make_engine
    from sink.db.migrate import schema_is_current
    if require_schema:
        _refuse_missing_sqlite(config.database_url)
    engine = make_engine(config.database_url)
    if require_schema and not schema_is_current(engine):
        raise UsageError("the database schema is not current: run `sink db upgrade` first")
    return engine


def _refuse_missing_sqlite(url: str) -> None:
    """A SQLite file that does not exist yet was never upgraded: say so without connecting,
    which would leave an empty database file (and its directory) behind."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        return                  # make_engine says what is wrong with it, in one line
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).exists():
        raise UsageError(f"no database at {parsed.database}: run `sink db upgrade` first")


def read_files(paths: list[str]) -> list[tuple[str, bytes]]:
    files = []
    for path in paths:
        try:
            files.append((path, Path(path).read_bytes()))
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return files


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(type(value).__name__)


def result_json(file: str | None, box: str, decision=None, **extra) -> dict:
    """The check/ingest/replay JSON object of one message (SPEC section 6)."""
    from sink.pipeline.decision import empty_json
    body = decision.as_json() if decision is not None else empty_json()
    # attachments (SPEC 3) come from the message's bytes, not from the decision: the caller
    # passes them (``attachments=[{"name", "type", "size"}]``); never absent
    return {"file": file, "box": box, **body, "attachments": [], **extra}


def emit_delivery(path: str | None, d, **more) -> None:
    extra = {"id": d.message_id, "status": d.status, **more}
    if d.already_stored:
        extra["already_stored"] = True
    if d.error:
        extra["error"] = d.error
    out = result_json(path, d.box, d.decision, **extra)
    out["verdict"] = d.verdict
    emit(out)
