"""The LMTP load driver: N persistent sessions sending a prepared corpus as fast as the server
answers, as Postfix's LMTP client does: where the LHLO reply offers PIPELINING (Dovecot, the
sink), MAIL, the RCPTs and DATA go in one write and their replies are read after it; elsewhere
(``--lockstep``, or a server that does not offer it) each command waits for its reply.

Runs as its own process (``python -m bench.driver CORPUS.pickle --port P ...``) so that its CPU
is not the server's. It prints ``START`` when the warm-up ends and ``END`` when the measured
window ends (the orchestrator samples the server's /proc counters at those two lines), then one
JSON line with the results. A message counts when its last reply arrives inside the window; its
latency is from writing ``MAIL FROM`` to reading the last ``250`` after the data (one per RCPT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import resource
import sys
import time


class Shared:
    def __init__(self, corpus, warmup: float, duration: float):
        self.corpus = corpus
        self.next = 0
        self.warmup = warmup
        self.duration = duration
        self.t_start = self.t_end = 0.0
        self.latencies: list[float] = []
        self.done_in_window = 0
        self.done_total = 0
        self.codes: dict[str, int] = {}
        self.errors: list[str] = []
        self.exhausted = False
        self.stopping = False
        self.pipelining = False     # a session used PIPELINING

    def take(self):
        if self.stopping or time.perf_counter() >= self.t_end:
            return None
        if self.next >= len(self.corpus):
            self.exhausted = True
            return None
        item = self.corpus[self.next]
        self.next += 1
        return item


async def _reply(reader: asyncio.StreamReader, lines: list | None = None) -> bytes:
    """One (possibly multi-line) reply; returns its last line (``lines``: gets every line)."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if lines is not None:
            lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return line


async def _envelope(reader, writer, shared: Shared, mail_from: bytes, rcpts, pipelining: bool
                    ) -> int:
    """MAIL, RCPTs and DATA: the recipients accepted, 0 when the data is not to be sent."""
    commands = [b"MAIL FROM:<%s>\r\n" % mail_from] + [b"RCPT TO:<%s>\r\n" % r for r in rcpts]
    if pipelining:                  # RFC 2920: the whole group, then every reply in order
        writer.write(b"".join(commands) + b"DATA\r\n")
        replies = [await _reply(reader) for _ in range(len(commands) + 1)]
    else:
        replies = []
        for command in commands:
            writer.write(command)
            replies.append(await _reply(reader))
            if not replies[0].startswith(b"250"):
                break               # MAIL refused: no RCPT
    accepted = sum(1 for line in replies[1:len(commands)] if line.startswith(b"250"))
    for name, line in zip([b"MAIL"] + [b"RCPT"] * len(rcpts), replies[:len(commands)]):
        if not line.startswith(b"250"):
            shared.errors.append(f"{name.decode()} {line[:60]!r}")
    if not pipelining:
        if not accepted or not replies[0].startswith(b"250"):
            writer.write(b"RSET\r\n")
            await _reply(reader)
            return 0
        writer.write(b"DATA\r\n")
        replies.append(await _reply(reader))
    data = replies[-1]
    if not data.startswith(b"354"):
        shared.errors.append(f"DATA {data[:60]!r}")
        return 0
    if not accepted:                # 354 with no recipient: end the empty message
        writer.write(b".\r\n")
        await _reply(reader)
        return 0
    return accepted


async def session(host: str, port: int, shared: Shared, ready: asyncio.Event,
                  lockstep: bool = False) -> None:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        await _reply(reader)
        writer.write(b"LHLO driver.bench\r\n")
        offered: list[bytes] = []
        await _reply(reader, offered)
        pipelining = not lockstep and any(line[4:].strip().upper() == b"PIPELINING"
                                          for line in offered)
        shared.pipelining = shared.pipelining or pipelining
        await ready.wait()
        while (item := shared.take()) is not None:
            mail_from, rcpts, payload = item
            t0 = time.perf_counter()
            accepted = await _envelope(reader, writer, shared, mail_from, rcpts, pipelining)
            if not accepted:
                continue
            writer.write(payload)
            ok = True
            for _ in range(accepted):
                line = await _reply(reader)
                code = line[:3].decode()
                shared.codes[code] = shared.codes.get(code, 0) + 1
                ok = ok and code == "250"
            t1 = time.perf_counter()
            shared.done_total += 1
            if shared.t_start <= t1 <= shared.t_end:
                shared.done_in_window += 1
                if t0 >= shared.t_start and ok:
                    shared.latencies.append(t1 - t0)
            if not ok and len(shared.errors) < 20:
                shared.errors.append(f"reply {line[:80]!r}")
        writer.write(b"QUIT\r\n")
        await writer.drain()
        try:
            await asyncio.wait_for(_reply(reader), 5)
        except (asyncio.TimeoutError, ConnectionError):
            pass
    finally:
        writer.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


async def main_async(args) -> dict:
    with open(args.corpus, "rb") as f:
        corpus = pickle.load(f)
    shared = Shared(corpus, args.warmup, args.duration)
    ready = asyncio.Event()
    shared.t_end = float("inf")
    tasks = [asyncio.create_task(session(args.host, args.port, shared, ready, args.lockstep))
             for _ in range(args.sessions)]
    await asyncio.sleep(0.05)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    shared.t_start = began + args.warmup
    shared.t_end = shared.t_start + args.duration
    ready.set()

    async def markers():
        await asyncio.sleep(max(0.0, shared.t_start - time.perf_counter()))
        print("START", flush=True)
        await asyncio.sleep(max(0.0, shared.t_end - time.perf_counter()))
        print("END", flush=True)

    marker = asyncio.create_task(markers())
    if args.progress:
        async def report():
            while True:
                await asyncio.sleep(1.0)
                print(f"PROGRESS {shared.done_total}", flush=True)
        reporter = asyncio.create_task(report())
    results = await asyncio.gather(*tasks, return_exceptions=True)
    if not marker.done():
        marker.cancel()
        print("END", flush=True)
    if args.progress:
        reporter.cancel()
        print(f"PROGRESS {shared.done_total}", flush=True)
    for r in results:
        if isinstance(r, BaseException):
            shared.errors.append(f"session: {type(r).__name__}: {r}")
    finished = time.perf_counter()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    window = min(shared.t_end, finished) - shared.t_start
    lat = shared.latencies
    return {
        "messages": shared.done_in_window,
        "window_s": round(window, 3),
        "rate": round(shared.done_in_window / window, 1) if window > 0 else 0.0,
        "p50_ms": _ms(percentile(lat, 50)), "p90_ms": _ms(percentile(lat, 90)),
        "p99_ms": _ms(percentile(lat, 99)), "max_ms": _ms(max(lat) if lat else None),
        "sent_total": shared.done_total,
        "codes": shared.codes,
        "errors": shared.errors[:20],
        "exhausted": shared.exhausted,
        "pipelining": shared.pipelining,
        "driver_cpu_s": round((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), 3),
        "driver_wall_s": round(finished - began, 3),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", help="pickle of [(mail_from, rcpts, dot-stuffed payload)]")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--uvloop", action="store_true", help="run the driver on uvloop")
    p.add_argument("--lockstep", action="store_true",
                   help="never pipeline, even where the server offers PIPELINING")
    p.add_argument("--progress", action="store_true",
                   help="print PROGRESS <messages done> every second")
    args = p.parse_args(argv)
    runner = asyncio.run
    if args.uvloop:
        import uvloop
        runner = uvloop.run
    result = runner(main_async(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
