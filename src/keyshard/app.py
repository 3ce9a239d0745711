"""The running proxy: builds pool runtimes and listeners on one event loop, stops on a signal.

Rule 1: uvloop is used when importable, plain asyncio otherwise.
Rule 2: SIGINT and SIGTERM stop gracefully: stop accepting, give in-flight requests up to
        `STOP_GRACE` seconds, close everything, exit 0.
Rule 3: start-up failures (a port in use) are one clear line on the log and exit code 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

from keyshard import __version__
from keyshard.net.listener import ListenError, listen
from keyshard.net.runtime import PoolRuntime
from keyshard.net.writer import Flusher

if TYPE_CHECKING:
    from keyshard.config import PoolConf

log = logging.getLogger("keyshard")

STOP_GRACE = 5.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Proxy:
    """Every pool of one config on one loop."""

    def __init__(self, options: Any, pools: list[PoolConf], loop: asyncio.AbstractEventLoop):
        self.options = options
        self.loop = loop
        self.flusher = Flusher(loop)
        mbuf = getattr(options, "mbuf_size", 16384)
        self.runtimes = [PoolRuntime(conf, loop, self.flusher, mbuf) for conf in pools]
        self.listeners: list[asyncio.AbstractServer] = []
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        for runtime in self.runtimes:
            self.listeners.append(await listen(runtime))
            if runtime.conf.preconnect:
                runtime.preconnect()

    async def serve(self) -> None:
        await self.start()
        await self.stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        for server in self.listeners:
            server.close()
        deadline = self.loop.time() + STOP_GRACE
        while self.loop.time() < deadline and any(
            c.queue for r in self.runtimes for c in r.clients
        ):
            await asyncio.sleep(0.01)
        for runtime in self.runtimes:
            for client in list(runtime.clients):
                client.close()
            runtime.close()
        await asyncio.sleep(0)

    def stop(self, signame: str) -> None:
        log.warning("signal %s received, exiting", signame)
        self.stopping.set()


def run(options: Any, pools: list[PoolConf]) -> int:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    proxy = Proxy(options, pools, loop)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, proxy.stop, sig.name)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    log.warning("keyshard-%s started", __version__)
    try:
        loop.run_until_complete(proxy.serve())
    except ListenError as err:
        log.error("%s", err)
        print(f"keyshard: {err}", flush=True)
        return 1
    finally:
        loop.close()
    log.warning("done, keyshard done")
    return 0
