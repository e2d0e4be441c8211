"""The floor: a no-op aiosmtpd LMTP server.

Same aiosmtpd class, options and event loop as ``sink serve`` (uvloop when it is installed and
``--uvloop`` is given, as the sink does), a handler that accepts every RCPT and answers every
DATA with one ``250`` per recipient without looking at the bytes. It offers PIPELINING, as the
sink and Dovecot do, so the driver sends it the same pipelined load (aiosmtpd reads a
pipelined group as it reads any other; it answers each command with a write of its own).
Nothing an aiosmtpd-based server does can be cheaper than this, so ``sink / bare`` is the share
of the reachable rate.

``python -m bench.bare --port P`` runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiosmtpd.lmtp import LMTP


class NoopHandler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        return "\r\n".join("250 2.0.0 Ok" for _ in envelope.rcpt_tos)


async def serve(host: str, port: int, max_size: int) -> None:
    loop = asyncio.get_running_loop()
    handler = NoopHandler()
    protocol = type("BareLMTP", (LMTP,), {"line_length_limit": max_size + 1024})
    server = await loop.create_server(
        lambda: protocol(handler, data_size_limit=max_size, enable_SMTPUTF8=True,
                         decode_data=False, ident="bare", timeout=300),
        host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("LISTENING", flush=True)
    await stop.wait()
    server.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="no-op aiosmtpd LMTP server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-size", type=int, default=64 * 1024 * 1024)
    p.add_argument("--uvloop", action="store_true")
    args = p.parse_args(argv)
    import logging
    logging.getLogger("mail.log").setLevel(logging.WARNING)   # as sink.log.configure does
    runner = asyncio.run
    if args.uvloop:
        import uvloop
        runner = uvloop.run
    runner(serve(args.host, args.port, args.max_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
