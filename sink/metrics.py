"""``/metrics`` and ``/healthz`` (SPEC section 7, ``[metrics]``).

Summed over the processes of the instance by counting in the listener process: every message
a storage worker commits comes back to the listener as an outcome (its id, status, verdict and
the messages it carried), so the listener counts them as it answers - no prometheus-client
multiprocess directory to create, clean up after a kill -9 or lose counts in when a worker is
restarted, and ``[storage] workers = 0`` counts the same way. Gauges that describe the
database (failed and pending messages, the sources' last successes) are read from it at scrape
time (cached for :data:`DB_CACHE_SECONDS`), so every instance sharing it reports the same.

- ``sink_messages_total{channel,verdict}``: every new message row (a carrier ``UNWRAPPED`` and
  each message it carried); verdict ``FAILED`` for a message stored ``failed`` and ``PENDING``
  for one kept by ``suspend --store``; an already-stored resend is not counted, nor what
  ``sink ingest`` / ``replay`` / ``resume`` store (their own processes; the database gauges
  below see their results);
- ``sink_replies_total{code}``: each final reply to a transaction (after DATA; LMTP once per
  recipient) and each ``451`` at MAIL/RCPT while suspended;
- ``sink_reply_seconds``: MAIL FROM to the reply after DATA;
- ``sink_messages_failed``, ``sink_messages_pending``, ``sink_source_last_success_timestamp_seconds
  {source}`` from the database; ``sink_worker_restarts_total``; ``sink_suspended`` (0/1).

``/healthz`` is 200 when every listener accepts, the storage has a worker running (or stores
in this process), the database answered the suspension poll within
:data:`HEALTHY_POLL_AGE` seconds, and the storage has not answered nothing but 4xx for more
than a minute (:meth:`sink.operations.Ops.deferring_problem`: a database file deleted under
us, a full disk, a database that takes connections but no writes - the poll still reads);
otherwise 503 with the reasons, one a line.
"""

from __future__ import annotations

import asyncio
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from sink.db import schema as t
from sink.log import get_logger

log = get_logger("sink.metrics")
DB_CACHE_SECONDS = 2.0
HEALTHY_POLL_AGE = 3.0
REPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The counters the listener updates, in a registry of its own (several apps in one test
    process must not share counts)."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter("sink_messages", "New message rows stored",
                                ("channel", "verdict"), registry=self.registry)
        self.replies = Counter("sink_replies", "Final replies by code", ("code",),
                               registry=self.registry)
        self.reply_seconds = Histogram("sink_reply_seconds", "MAIL FROM to the final reply",
                                       buckets=REPLY_BUCKETS, registry=self.registry)

        # The labelled children, bound once per label value: ``labels()`` validates, locks
        # and builds a key on every call, and these are counted for every message. The label
        # values are few (channels x verdicts, reply codes), so the dicts stay small.
        self._message_children: dict[tuple[str, str], object] = {}
        self._reply_children: dict[str, object] = {}

    def count_outcome(self, channel: str, outcome) -> None:
        """One box's outcome (Delivery or pool.Stored; an exception counts nothing)."""
        if isinstance(outcome, BaseException) or outcome.already_stored:
            return
        key = (channel, _verdict(outcome))
        child = self._message_children.get(key)
        if child is None:
            child = self._message_children[key] = self.messages.labels(*key)
        child.inc()
        for carried in getattr(outcome, "carried", ()) or ():
            self.count_outcome(channel, carried)

    def count_reply(self, reply: str, started: float | None) -> None:
        code = reply[:3]
        child = self._reply_children.get(code)
        if child is None:
            child = self._reply_children[code] = self.replies.labels(code)
        child.inc()
        if started is not None:
            self.reply_seconds.observe(max(0.0, time.perf_counter() - started))


def _verdict(outcome) -> str:
    if outcome.status == "failed":
        return "FAILED"
    if outcome.status == "pending":
        return "PENDING"
    return outcome.verdict or "NONE"


class _DatabaseGauges:
    """The collector of what the database and the running parts say, at scrape time."""

    def __init__(self, engine, app):
        self.engine = engine
        self.app = app
        self._cache: tuple[float, tuple] | None = None
        self._lock = threading.Lock()

    def describe(self):
        return []                   # collected at scrape time only

    def collect(self):
        failed, pending, sources = self._counts()
        yield _gauge("sink_messages_failed", "Messages stored failed", failed)
        yield _gauge("sink_messages_pending", "Messages kept pending by suspend --store",
                     pending)
        last = GaugeMetricFamily("sink_source_last_success_timestamp_seconds",
                                 "Unix time of a source's last successful pass",
                                 labels=("source",))
        for name, when in sources:
            last.add_metric((name,), when)
        yield last
        restarts = CounterMetricFamily("sink_worker_restarts",
                                       "Storage worker processes restarted")
        restarts.add_metric((), getattr(self.app.storage, "restarts", 0))
        yield restarts
        yield _gauge("sink_suspended", "1 while suspended", float(self.app.suspension.active))

    def _counts(self) -> tuple:
        with self._lock:
            now = time.monotonic()
            if self._cache is not None and now - self._cache[0] < DB_CACHE_SECONDS:
                return self._cache[1]
            counts = _database_counts(self.engine)
            self._cache = (now, counts)
            return counts


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _database_counts(engine) -> tuple:
    status = t.messages.c.status
    with engine.connect() as conn:
        rows = dict(conn.execute(select(status, func.count()).where(
            status.in_(("failed", "pending"))).group_by(status)).all())
        sources = [(r.name, r.last_success.timestamp()) for r in conn.execute(
            select(t.source_status.c.name, t.source_status.c.last_success).where(
                t.source_status.c.last_success.is_not(None)))]
    return rows.get("failed", 0), rows.get("pending", 0), sources


def health_problems(app) -> list[str]:
    """Why this instance is not healthy (empty: healthy)."""
    problems = []
    if not app.listeners.servers or not all(s.is_serving() for s in app.listeners.servers):
        problems.append("listeners: not accepting")
    healthy = getattr(app.storage, "healthy", None)
    if healthy is not None and not healthy():
        problems.append("storage: no worker running")
    last = app.suspension.last_read
    if last is None or time.monotonic() - last > HEALTHY_POLL_AGE:
        problems.append("database: not answering")
    deferring = app.ops.deferring_problem()
    if deferring:
        problems.append(deferring)
    return problems


class _QuietHandler(WSGIRequestHandler):
    timeout = 10            # a client that sends nothing holds its thread no longer than this

    def log_message(self, *args):       # scrapes every 15 s are not worth a log line each
        pass


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: a slow client never holds up the next scrape or health check."""
    daemon_threads = True


class MetricsServer:
    """A component: ``/metrics`` and ``/healthz`` on ``address`` from a thread of its own (a
    scrape never waits for the event loop, nor the loop for a scrape)."""

    def __init__(self, config, app, engine):
        self.config = config
        self.app = app
        self.registry = app.metrics.registry
        self.registry.register(_DatabaseGauges(_reader(engine), app))
        self.server: WSGIServer | None = None
        self.thread: threading.Thread | None = None
        self.bound: tuple[str, int] | None = None

    async def start(self) -> None:
        metrics_app = make_wsgi_app(self.registry)

        def route(environ, start_response):
            if environ.get("PATH_INFO") == "/healthz":
                problems = health_problems(self.app)
                status = "503 Service Unavailable" if problems else "200 OK"
                start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
                return [("\n".join(problems) or "ok").encode() + b"\n"]
            if environ.get("PATH_INFO") == "/metrics":
                return metrics_app(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /metrics or /healthz\n"]

        self.server = make_server(self.config.host, self.config.port, route,
                                  server_class=_Server, handler_class=_QuietHandler)
        self.bound = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, name="sink-metrics",
                                       daemon=True)
        self.thread.start()
        log.info("metrics.started", address=f"{self.bound[0]}:{self.bound[1]}")

    async def stop(self) -> None:
        if self.server is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.server.shutdown)
            self.server.server_close()


def _reader(engine):
    from sink.suspension import poll_engine
    return poll_engine(engine)
