"""structlog JSON lines for operations: one object a line, ISO timestamps, never a body or a
secret (events carry addresses, counts, sizes and durations only)."""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure(level: str = "info", file: str | None = None) -> None:
    stream = open(file, "a", buffering=1, encoding="utf-8") if file else sys.stderr
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # aiosmtpd logs every command at INFO through stdlib logging; only its warnings matter.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def get_logger(name: str = "sink"):
    return structlog.get_logger(name)
