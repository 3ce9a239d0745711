"""Soak: 200 clients pipelining mixed commands through keyshard for about a minute while its
backends are killed (SIGKILL) and restarted every few seconds.

What must hold:
- keyshard stays up and never closes a client (no command in the mix closes one: MGET, whose
  failure closes the client as nutcracker does, is left to tests/compat/test_failure_diff.py);
- every client gets exactly one reply per request, in order: each reply has the shape of its
  own request, and a GET answers the unique value its own SET wrote just before, nil, or an
  error (one of the proxy's failure replies);
- after the load, the proxy's open file descriptors and resident memory are back near what
  they were after a warm-up with the same load.

Bounded: `KILLS` kills, one every ~`KILL_EVERY` seconds, then `TAIL_SECONDS` more of load
(about 40 s in all; a slow machine stretches the time, never the number of kills); at most
`MAX_BATCHES` pipelines per client, each client pausing ~`PAUSE` between pipelines.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from keyshard.protocol.redis import CODEC
from tests.support.procs import Keyshard, RedisServer, free_port, pool_yaml
from tests.support.rig import read_until_eof, resp

CLIENTS = 200
DEPTH = 6  # request pairs per pipeline
WARMUP_SECONDS = 4.0
KILLS = 8  # backends killed and restarted, alternating
KILL_EVERY = 4.0
DOWN_FOR = 1.0
TAIL_SECONDS = 5.0  # load after the last restart
MAX_BATCHES = 2000
PAUSE = 0.05  # between a client's pipelines: a steady load that leaves the machine usable
ERRORS = {b"-ERR Connection refused\r\n", b"-ERR Connection reset by peer\r\n",
          b"-ERR unknown\r\n", b"-ERR Connection timed out\r\n", b"-ERR Broken pipe\r\n"}


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stats(proxy: Keyshard) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", proxy.stats_port), timeout=5) as s:
        doc: dict[str, Any] = json.loads(read_until_eof(s, 5))
    return doc["alpha"]


class Load:
    """The clients, their checks and their tallies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = False
        self.sent = 0
        self.replies = 0
        self.errors: dict[bytes, int] = {}
        self.problems: list[str] = []
        self.lost_connections = 0

    def batch(self, cid: int, seq: int, rng: random.Random) -> tuple[bytes, list[Any]]:
        """One pipeline and, per request, what its reply may be."""
        out: list[bytes] = []
        expect: list[Any] = []
        for i in range(DEPTH):
            key = f"c{cid}:{seq}:{i}"
            value = f"v{cid}.{seq}.{i}"
            out.append(resp("SET", key, value, "EX", "60"))
            expect.append((b"+OK\r\n",))
            out.append(resp("GET", key))
            expect.append((b"$%d\r\n%s\r\n" % (len(value), value.encode()), b"$-1\r\n"))
            extra = rng.randrange(5)
            if extra == 0:
                out.append(resp("INCR", f"n{cid}"))
                expect.append(b":")
            elif extra == 1:
                out.append(resp("DEL", key, f"c{cid}:{seq}:x", f"c{cid}:{seq}:y"))
                expect.append(b":")
            elif extra == 2:
                out.append(resp("MSET", f"m{cid}a", value, f"m{cid}b", value))
                expect.append((b"+OK\r\n",))
            elif extra == 3:
                out.append(resp("PING"))
                expect.append((b"+PONG\r\n",))
        return b"".join(out), expect

    def check(self, cid: int, expect: list[Any], got: list[bytes]) -> None:
        if len(got) != len(expect):
            self.problems.append(f"client {cid}: {len(got)} replies for {len(expect)} requests")
            return
        for want, reply in zip(expect, got):
            if reply in ERRORS and want != (b"+PONG\r\n",):
                self.errors[reply] = self.errors.get(reply, 0) + 1
            elif isinstance(want, tuple):
                if reply not in want:
                    self.problems.append(f"client {cid}: {reply[:60]!r}, expected {want}")
            elif not (reply.startswith(want) and reply[1:-2].lstrip(b"-").isdigit()):
                self.problems.append(f"client {cid}: {reply[:60]!r}, expected an integer")

    async def client(self, cid: int) -> None:
        rng = random.Random(cid)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as err:
            self.problems.append(f"client {cid}: connect: {err}")
            return
        parser = CODEC.reply_parser()
        try:
            for seq in range(MAX_BATCHES):
                if self.stop or len(self.problems) > 20:
                    break
                payload, expect = self.batch(cid, seq, rng)
                writer.write(payload)
                self.sent += len(expect)
                got: list[bytes] = []
                while len(got) < len(expect):
                    chunk = await asyncio.wait_for(reader.read(65536), 10)
                    if not chunk:
                        self.lost_connections += 1
                        self.problems.append(f"client {cid}: closed by the proxy")
                        return
                    got += parser.feed(chunk)
                self.replies += len(got)
                self.check(cid, expect, got)
                await asyncio.sleep(PAUSE * rng.uniform(0.5, 1.5))
        except (TimeoutError, OSError) as err:
            self.lost_connections += 1
            self.problems.append(f"client {cid}: {err!r}")
        finally:
            writer.close()

    async def run(self, seconds: float) -> None:
        await self.run_until(asyncio.sleep(seconds), 0.0)

    async def run_until(self, done: Awaitable[Any], tail: float) -> None:
        """Load until `done` is done, then `tail` seconds more."""
        self.stop = False
        clients = [asyncio.ensure_future(self.client(i)) for i in range(CLIENTS)]
        try:
            await done
            await asyncio.sleep(tail)
        finally:
            self.stop = True
            await asyncio.wait_for(asyncio.gather(*clients), 30)


async def chaos(backends: list[RedisServer], started: list[RedisServer]) -> int:
    """Kill a backend and restart it on the same port, alternating, `KILLS` times."""
    kills = 0
    while kills < KILLS:
        await asyncio.sleep(KILL_EVERY - DOWN_FOR)
        i = kills % len(backends)
        backends[i].stop(signal.SIGKILL)
        kills += 1
        await asyncio.sleep(DOWN_FOR)
        fresh = RedisServer(backends[i].port)
        await asyncio.get_running_loop().run_in_executor(None, fresh.start)
        started.append(fresh)
        backends[i] = fresh
    return kills


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def settle(proxy: Keyshard) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and stats(proxy)["client_connections"]:
        time.sleep(0.1)


def test_soak_backends_killed_and_restarted() -> None:
    backends = [RedisServer().start(), RedisServer().start()]
    started = list(backends)
    port = free_port()
    conf = pool_yaml("alpha", port, [f"{b.addr}:1 s{i}" for i, b in enumerate(backends)],
                     redis=True, hash="fnv1a_64", distribution="ketama", timeout=3000,
                     auto_eject_hosts=True, server_failure_limit=3, server_retry_timeout=1000)
    proxy = Keyshard(conf)
    loop = new_loop()
    try:
        proxy.start(port)
        load = Load(port)
        loop.run_until_complete(load.run(WARMUP_SECONDS))
        assert not load.problems, load.problems[:5]
        settle(proxy)
        base_fds, base_rss = fds(proxy.pid), rss_kb(proxy.pid)

        load = Load(port)
        kills = loop.run_until_complete(soak(load, backends, started))
        assert proxy.alive(), proxy.log()[-2000:]
        assert not load.problems, load.problems[:5]
        assert load.replies == load.sent and load.lost_connections == 0
        assert load.errors, "the kills were never seen"
        assert load.replies > 200_000, load.replies

        settle(proxy)
        time.sleep(0.5)
        after_fds, after_rss = fds(proxy.pid), rss_kb(proxy.pid)
        doc = stats(proxy)
        print(f"\nsoak: {load.replies} replies, {kills} kills, errors {load.errors}, "
              f"fds {base_fds} -> {after_fds}, rss {base_rss} -> {after_rss} kB, "
              f"ejects {doc['server_ejects']}")
        assert doc["client_connections"] == 0
        assert abs(after_fds - base_fds) <= 2, (base_fds, after_fds)
        assert after_rss - base_rss < 30 * 1024, (base_rss, after_rss)
        # and it still answers
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(resp("SET", "done", "1") + resp("GET", "done"))
            s.shutdown(socket.SHUT_WR)
            assert read_until_eof(s, 5) == b"+OK\r\n$1\r\n1\r\n"
    finally:
        loop.close()
        proxy.cleanup()
        for b in started:
            b.cleanup()


async def soak(load: Load, backends: list[RedisServer], started: list[RedisServer]) -> int:
    killer = asyncio.ensure_future(chaos(backends, started))
    await load.run_until(killer, TAIL_SECONDS)
    return killer.result()
