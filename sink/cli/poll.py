"""``sink poll [--source N]``: one pass of every source (or of source N) now, one JSON line per
source (SPEC 2.2), with storage in this process. Exit 0 when every pass ran; 1 when a source
failed (its reason is in ``errors``)."""

from __future__ import annotations

import asyncio

from sink.cli.common import EXIT_OK, EXIT_TRANSIENT, UsageError, emit, engine_for
from sink.config import Config


def register(sub) -> None:
    cmd = sub.add_parser("poll", help="fetch from every [[sources]] entry once, now")
    cmd.add_argument("--source", type=int, metavar="N",
                     help="only source N (counted from 0, in config order)")
    cmd.set_defaults(func=cmd_poll)


def cmd_poll(config: Config, args) -> int:
    if not config.sources:
        raise UsageError("poll: no [[sources]] in the config")
    if args.source is not None and not 0 <= args.source < len(config.sources):
        raise UsageError(f"--source {args.source}: expected 0 to {len(config.sources) - 1}")
    chosen = [s for s in config.sources if args.source in (None, s.index)]
    engine = engine_for(config)
    failed = asyncio.run(_poll(config, engine, chosen))
    return EXIT_TRANSIENT if failed else EXIT_OK


async def _poll(config: Config, engine, chosen) -> bool:
    from sink.sources.poller import PassResult, describe_error, make_worker, token_sources
    from sink.sources.state import Lease
    from sink.storage import make_storage
    storage = make_storage(config, engine, workers=0)
    await storage.start()
    tokens = token_sources(config)
    failed = False
    try:
        for source in chosen:
            worker = make_worker(source, config, storage, engine, tokens.get(source.oauth))
            lease = Lease(engine, source.key)
            try:
                if not await worker.call(lease.acquire):
                    result = PassResult(errors=["worked by another instance right now"])
                else:
                    result = await worker.run_pass()
            except Exception as exc:
                result = PassResult(errors=[describe_error(exc)])
            finally:
                await worker.close()
                await worker.call(lease.release)
                worker.shutdown()
            failed = failed or bool(result.errors)
            emit(result.as_json(source))
    finally:
        await storage.close()
    return failed
