"""Running ``sink serve``'s own app (``sink.app.build``: storage workers, the suspension
poller, error mails, metrics) on a loop in a background thread, and the CLI in this process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading

from sink.app import build


class RunningApp:
    def __init__(self, config, engine):
        self.app = build(config, engine)
        self.loop = asyncio.new_event_loop()
        self.ports = self.loop.run_until_complete(self.app.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.ports[0][1]

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.app.stop(grace=10))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def sink_cli(config_path, *args) -> tuple[int, str, str]:
    from sink.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(config_path), *args])
    return code, out.getvalue(), err.getvalue()
