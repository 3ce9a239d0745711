"""Failures through keyshard: timeouts, refused/reset/cut/stalled servers, failure-class
replies, auto-ejection and retry, clients that go away or half-close, real servers stopped
and restarted under load (reference section 9).

The byte-for-byte comparison with nutcracker is tests/compat/test_failure_diff.py; here the
checks are keyshard's own: the error replies, when they come, what the stats say, and that
nothing is left behind.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from keyshard.config import parse_config
from keyshard.net import server as server_module
from keyshard.net.listener import listen
from keyshard.net.runtime import PoolRuntime
from keyshard.net.writer import Flusher
from keyshard.protocol.base import Request
from keyshard.protocol.memcache import CODEC as MEMCACHE
from keyshard.protocol.redis import CODEC as REDIS
from keyshard.protocol.redis_merge import close_on_merge_error
from tests.compat.test_failure_diff import DEAD, LIVE
from tests.support.faults import BlackHole, FaultProxy, Scripted
from tests.support.procs import Keyshard, Memcached, RedisServer, free_port, pool_yaml
from tests.support.rig import read_until_eof, resp

D, D2 = DEAD[:2]  # keys on s1
L, L2 = LIVE[:2]  # keys on s0

REFUSED = b"-ERR Connection refused\r\n"
TIMED_OUT = b"-ERR Connection timed out\r\n"


# -- helpers ---------------------------------------------------------------------------------------

class Proxy:
    """keyshard over `servers` (entries "host:port:weight name")."""

    def __init__(self, servers: list[str], redis: bool = True, **opts: Any) -> None:
        self.port = free_port()
        settings: dict[str, Any] = {"hash": "fnv1a_64", "distribution": "ketama", "redis": redis}
        settings.update(opts)
        self.proc = Keyshard(pool_yaml("alpha", self.port, servers, **settings))
        self.proc.start(self.port)
        self.codec = REDIS if redis else MEMCACHE
        # start() probed the port; that connection is counted (client_eof) when the proxy
        # sees it end, which may be after a test's first stats(): settle it here
        if not wait_for(lambda: self.stats()["client_eof"] >= 1):
            self.proc.cleanup()
            raise RuntimeError("the start-up probe's connection was never counted")

    def stats(self) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.proc.stats_port), timeout=5) as s:
            doc: dict[str, Any] = json.loads(read_until_eof(s, 5))
        return doc["alpha"]

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def ask(self, payload: bytes, count: int, timeout: float = 5.0) -> list[bytes]:
        with self.connect() as sock:
            sock.sendall(payload)
            return read_replies(sock, self.codec, count, timeout)

    def fds(self) -> int:
        return len(list(Path(f"/proc/{self.proc.pid}/fd").iterdir()))

    def close(self) -> None:
        self.proc.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_replies(sock: socket.socket, codec: Any, count: int, timeout: float = 5.0) -> list[bytes]:
    parser = codec.reply_parser()
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        got += parser.feed(chunk)
    return got


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def live(redis_server: RedisServer) -> RedisServer:
    redis_server.client().flushall()
    return redis_server


# -- sans-IO: nutcracker's MGET merge over an error reply -----------------------------------------

def mget() -> Request:
    return Request(b"", 1, b"mget", b"")


@pytest.mark.parametrize(("reply", "keys", "closes"), [
    (b"-ERR boom\r\n", 3, False),  # 5 + 5 + what is left: three reads succeed
    (b"-ERR boom\r\n", 4, True),
    (b"-NOAUTH Authentication required.\r\n", 7, False),
    (b"-NOAUTH Authentication required.\r\n", 8, True),
    (b"+OK\r\n", 1, False),
    (b"+OK\r\n", 2, True),
    (b":12345\r\n", 1, False),  # ':' skipped, 12345 read as a length: takes all
    (b"*2\r\n$1\r\na\r\n$-1\r\n", 2, False),  # well formed: never
    (b"*2\r\n$1\r\na\r\n$-1\r\n", 3, True),  # fewer bulks than keys
])
def test_merge_error_close_follows_nutcracker_reads(reply: bytes, keys: int, closes: bool) -> None:
    ok = b"*1\r\n$1\r\nx\r\n"
    order = [0] + [1] * keys
    assert close_on_merge_error(mget(), order, [ok, reply]) is closes
    assert not close_on_merge_error(Request(b"", 1, b"del", b""), order, [ok, reply])


# -- timeouts --------------------------------------------------------------------------------------

def test_timeout_counts_from_queueing_and_closes_the_whole_connection(live: RedisServer) -> None:
    hole = BlackHole()
    try:
        with Proxy([f"{live.addr}:1 s0", f"127.0.0.1:{hole.port}:1 s1"], timeout=400) as proxy:
            first, second = proxy.connect(), proxy.connect()
            started = time.monotonic()
            first.sendall(resp("GET", D) + resp("GET", L) + resp("GET", D2))
            time.sleep(0.2)
            second.sendall(resp("GET", D))  # queued 0.2 s later on the same connection
            got = read_replies(second, REDIS, 1)
            assert got == [TIMED_OUT]
            # the whole connection closed when the first request expired, at ~0.4 s (the
            # upper bounds leave room for a machine the hypervisor stalls: steal reached 80%)
            assert 0.3 < time.monotonic() - started < 2.0
            assert read_replies(first, REDIS, 3) == [TIMED_OUT, b"$-1\r\n", TIMED_OUT]
            # the next request opens a new connection and gets a full timeout of its own
            started = time.monotonic()
            assert proxy.ask(resp("GET", D), 1) == [TIMED_OUT]
            assert 0.35 < time.monotonic() - started < 2.0
            first.close()
            second.close()
            s1 = proxy.stats()["s1"]
            assert (s1["server_timedout"], s1["server_err"], s1["server_eof"]) == (2, 0, 0)
            assert proxy.stats()["forward_error"] == 4
    finally:
        hole.close()


# -- a relay that refuses, resets, cuts or stalls --------------------------------------------------

def test_refuse_reset_cut_stall_then_recover(live: RedisServer) -> None:
    target = RedisServer().start()
    relay = FaultProxy(target.port)
    try:
        with Proxy([f"{live.addr}:1 s0", f"127.0.0.1:{relay.port}:1 s1"], timeout=500) as proxy:
            assert proxy.ask(resp("SET", D, "v") + resp("GET", D), 2) == [b"+OK\r\n",
                                                                          b"$1\r\nv\r\n"]
            relay.set_mode("refuse")
            relay.drop()  # the idle connection closes: an EOF with nothing outstanding
            assert proxy.ask(resp("GET", D) + resp("GET", L), 2) == [REFUSED, b"$-1\r\n"]
            relay.set_mode("reset")
            assert proxy.ask(resp("GET", D), 1) == [b"-ERR Connection reset by peer\r\n"]
            relay.set_mode("cut")  # half of the reply, then the server's FIN
            assert proxy.ask(resp("GET", D), 1) == [b"-ERR unknown\r\n"]
            relay.set_mode("stall")
            assert proxy.ask(resp("GET", D), 1) == [TIMED_OUT]
            relay.set_mode("pass")
            assert proxy.ask(resp("GET", D), 1) == [b"$1\r\nv\r\n"]
            s1 = proxy.stats()["s1"]
            assert s1["server_eof"] == 2  # the dropped idle connection and the cut
            assert s1["server_err"] == 2  # refused, reset
            assert s1["server_timedout"] == 1
            assert s1["server_connections"] == 1
    finally:
        relay.close()
        target.cleanup()


# -- failure-class replies, a reply nobody asked for, auto-ejection --------------------------------

def test_loading_is_a_server_failure_that_ejects(live: RedisServer) -> None:
    fake = Scripted(reply=b"-LOADING Redis is loading the dataset in memory\r\n")
    try:
        with Proxy([f"{live.addr}:1 s0", f"127.0.0.1:{fake.port}:1 s1"], auto_eject_hosts=True,
                   server_failure_limit=2, server_retry_timeout=600) as proxy:
            invalid = b"-ERR Invalid argument\r\n"
            assert proxy.ask(resp("GET", D), 1) == [invalid]
            assert proxy.ask(resp("GET", D), 1) == [invalid]  # the second failure ejects s1
            assert proxy.ask(resp("GET", D), 1) == [b"$-1\r\n"]  # D now lives on s0
            stats = proxy.stats()
            assert stats["server_ejects"] == 1
            assert stats["s1"]["server_err"] == 2
            assert stats["s1"]["server_ejected_at"] > (time.time() - 60) * 1e6
            time.sleep(0.7)  # the retry time passed: the next request tries s1 again
            assert proxy.ask(resp("GET", D), 1) == [invalid]
    finally:
        fake.close()


def test_stray_reply_closes_the_connection(live: RedisServer) -> None:
    fake = Scripted(reply=b"$-1\r\n$-1\r\n")  # every request answered twice
    try:
        with Proxy([f"{live.addr}:1 s0", f"127.0.0.1:{fake.port}:1 s1"]) as proxy:
            for _ in range(3):
                assert proxy.ask(resp("GET", D), 1) == [b"$-1\r\n"]
            assert wait_for(lambda: proxy.stats()["s1"]["server_err"] == 3)
            assert fake.accepted == 3  # a new connection for every request
            assert proxy.stats()["s1"]["server_connections"] == 0
    finally:
        fake.close()


@pytest.mark.parametrize("reply", [
    b":1\r\n", b"+OK\r\n", b"*-1\r\n", b"*1\r\n:5\r\n",
    b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n",
])
def test_mget_fragment_of_the_wrong_shape(live: RedisServer, reply: bytes) -> None:
    """A fragment answered with a reply an MGET cannot merge: -ERR Invalid argument, then the
    next request's reply in step, or the close where nutcracker's reads would close (README:
    nutcracker passes on a corrupt stream here, spins, or crashes on `*-1`)."""
    fake = Scripted(reply=reply)
    try:
        with Proxy([f"{live.addr}:1 s0", f"127.0.0.1:{fake.port}:1 s1"]) as proxy:
            live.client().set(L, "v")
            closes = close_on_merge_error(mget(), [0, 1], [b"*1\r\n$1\r\nv\r\n", reply])
            with proxy.connect() as sock:
                sock.sendall(resp("MGET", L, D) + resp("GET", L))
                got = read_replies(sock, REDIS, 2, timeout=2)
                sock.settimeout(0.3)
                try:
                    rest: bytes | None = sock.recv(100)
                except TimeoutError:
                    rest = None  # still open, nothing more
            assert got[0] == b"-ERR Invalid argument\r\n"
            if closes:  # the GET's reply goes out with the error if it is ready by then
                assert got[1:] in ([], [b"$1\r\nv\r\n"]) and rest == b""
            else:
                assert got[1:] == [b"$1\r\nv\r\n"] and rest is None
            assert proxy.ask(resp("MGET", L, L2), 1) == [b"*2\r\n$1\r\nv\r\n$-1\r\n"]
            assert proxy.stats()["forward_error"] == 1
    finally:
        fake.close()


def test_multiget_fragment_with_a_block_too_many(procs: Any) -> None:
    """A memcache multi-get fragment's reply carries a VALUE block for a key nobody asked for:
    dropped (nutcracker writes it after the merged END, into the client's next reply)."""
    mc = procs(Memcached().start())
    fake = Scripted(reply=f"VALUE {D} 0 1\r\nd\r\nVALUE zz 0 1\r\nz\r\nEND\r\n".encode(),
                    memcache=True)
    try:
        with Proxy([f"{mc.addr}:1 s0", f"127.0.0.1:{fake.port}:1 s1"], redis=False) as proxy:
            assert proxy.ask(f"set {L} 0 0 1\r\nv\r\n".encode(), 1) == [b"STORED\r\n"]
            got = proxy.ask(f"get {L} {D}\r\nget {L}\r\n".encode(), 2)
            assert got == [f"VALUE {L} 0 1\r\nv\r\nVALUE {D} 0 1\r\nd\r\nEND\r\n".encode(),
                           f"VALUE {L} 0 1\r\nv\r\nEND\r\n".encode()]
    finally:
        fake.close()


def test_next_request_after_a_server_closed_its_connection(live: RedisServer) -> None:
    # A length nutcracker and keyshard both wrap modulo 2**32 (to 1) reaches the real
    # redis-server as a protocol error: it answers and closes its end. The next client's
    # request gets the server's answer on a new connection (nutcracker: often -ERR unknown).
    bad = b"*2\r\n$3\r\nGET\r\n$4294967297\r\na\r\n"
    with Proxy([f"{live.addr}:1 s0"]) as proxy:
        for i in range(1, 4):
            got = proxy.ask(bad, 1)
            assert len(got) == 1 and got[0].startswith(b"-ERR Protocol error"), got
            assert wait_for(lambda i=i: proxy.stats()["s0"]["server_eof"] == i)
            time.sleep(0.1)
            assert proxy.ask(resp("GET", "a"), 1) == [b"$-1\r\n"]
        stats = proxy.stats()["s0"]
        assert stats["server_eof"] == 3 and stats["server_err"] == 0


def test_a_success_resets_the_failure_count(live: RedisServer) -> None:
    target = RedisServer().start()
    relay = FaultProxy(target.port)
    try:
        with Proxy([f"{live.addr}:1 s0", f"127.0.0.1:{relay.port}:1 s1"], auto_eject_hosts=True,
                   server_failure_limit=2, server_retry_timeout=30000) as proxy:
            relay.set_mode("refuse")
            assert proxy.ask(resp("GET", D), 1) == [REFUSED]  # failure 1
            relay.set_mode("pass")
            assert proxy.ask(resp("GET", D), 1) == [b"$-1\r\n"]  # a reply: count back to 0
            relay.set_mode("refuse")
            relay.drop()  # EOF on the idle connection: failure 1 again
            assert proxy.ask(resp("GET", D), 1) == [REFUSED]  # failure 2: ejected
            assert proxy.stats()["server_ejects"] == 1
            assert proxy.ask(resp("GET", D), 1) == [b"$-1\r\n"]  # served by s0
    finally:
        relay.close()
        target.cleanup()


def test_without_auto_eject_every_request_tries_a_new_connection(live: RedisServer) -> None:
    target = RedisServer().start()
    relay = FaultProxy(target.port)
    relay.set_mode("refuse")
    try:
        with Proxy([f"{live.addr}:1 s0", f"127.0.0.1:{relay.port}:1 s1"]) as proxy:
            for _ in range(5):
                assert proxy.ask(resp("GET", D) + resp("GET", L), 2) == [REFUSED, b"$-1\r\n"]
            assert proxy.stats()["s1"]["server_err"] == 5
            relay.set_mode("pass")
            assert proxy.ask(resp("GET", D), 1) == [b"$-1\r\n"]  # back at once
    finally:
        relay.close()
        target.cleanup()


def test_all_servers_ejected_refuses() -> None:
    dead = [free_port(), free_port()]
    with Proxy([f"127.0.0.1:{dead[0]}:1 s0", f"127.0.0.1:{dead[1]}:1 s1"],
               auto_eject_hosts=True, server_failure_limit=1,
               server_retry_timeout=30000) as proxy:
        assert proxy.ask(resp("GET", D) + resp("GET", L), 2) == [REFUSED] * 2
        assert proxy.stats()["server_ejects"] == 2
        assert proxy.ask(resp("GET", "x") + resp("PING"), 2) == [REFUSED, b"+PONG\r\n"]
        assert proxy.stats()["s0"]["requests"] + proxy.stats()["s1"]["requests"] == 2


# -- names resolved on every new connection (in process, with a fake resolver) -------------------

def test_host_resolved_on_each_new_connection(live: RedisServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    table: dict[str, int] = {"db.test": free_port()}  # first: a port nobody listens on

    def fake_resolve(host: str, port: int) -> tuple[int, Any]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return socket.AF_INET, ("127.0.0.1", table[host])

    monkeypatch.setattr(server_module, "resolve", fake_resolve)
    port = free_port()
    (conf,) = parse_config(pool_yaml("alpha", port, ["db.test:6379:1 s0", "gone.test:6379:1 s1"],
                                     redis=True, hash="fnv1a_64"), "t.yml")
    loop = asyncio.new_event_loop()

    async def ask(payload: bytes, count: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        parser = REDIS.reply_parser()
        got: list[bytes] = []
        while len(got) < count:
            got += parser.feed(await asyncio.wait_for(reader.read(65536), 5))
        writer.close()
        return got

    async def scenario() -> None:
        runtime = PoolRuntime(conf, loop, Flusher(loop))
        server = await listen(runtime)
        try:
            assert await ask(resp("GET", L) + resp("GET", D), 2) == [REFUSED,
                                                                     b"-ERR Host is down\r\n"]
            table["db.test"] = live.port  # the name now points at a live server
            assert await ask(resp("GET", L), 1) == [b"$-1\r\n"]
            assert runtime.slots[1].stats.server_err == 1
            assert runtime.slots[1].stats.requests == 0  # never queued: no connection
        finally:
            server.close()
            runtime.close()
            await asyncio.sleep(0.05)

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


# -- clients that go away or half-close ----------------------------------------------------------

def test_client_gone_with_requests_in_flight(live: RedisServer) -> None:
    target = RedisServer().start()
    relay = FaultProxy(target.port)
    try:
        with Proxy([f"{live.addr}:1 s0", f"127.0.0.1:{relay.port}:1 s1"]) as proxy:
            assert proxy.ask(resp("GET", D) + resp("GET", L), 2) == [b"$-1\r\n"] * 2
            assert wait_for(lambda: proxy.stats()["client_connections"] == 0)
            baseline = proxy.fds()  # listener, stats, both server connections, the loop's
            relay.set_mode("stall")
            for rst in (False, True):  # a half-close (FIN), then a client gone (RST)
                sock = proxy.connect()
                sock.sendall((resp("GET", D) + resp("MGET", D, D2, L)) * 50)
                time.sleep(0.1)
                if rst:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, bytes([1] + [0] * 7))
                sock.close()
            # the half-closed client waits for its replies; the reset one is gone
            assert wait_for(lambda: proxy.stats()["client_connections"] == 1)
            before = proxy.stats()["s1"]["responses"]
            relay.set_mode("pass")
            assert wait_for(lambda: proxy.stats()["client_connections"] == 0)
            assert wait_for(lambda: proxy.stats()["s1"]["out_queue"] == 0)
            stats = proxy.stats()
            # the half-closed client's 100 replies were written (one fragment per MGET on
            # s1); the gone client's were swallowed, not counted, as nutcracker
            assert stats["s1"]["responses"] == before + 100
            assert stats["forward_error"] == 0
            assert (stats["client_eof"], stats["client_err"]) == (3, 1)  # + probe, first ask
            assert proxy.ask(resp("GET", D), 1) == [b"$-1\r\n"]
            assert wait_for(lambda: proxy.fds() == baseline)
    finally:
        relay.close()
        target.cleanup()


def test_half_closed_client_gets_its_pending_replies(live: RedisServer) -> None:
    target = RedisServer().start()
    relay = FaultProxy(target.port)
    try:
        with Proxy([f"{live.addr}:1 s0", f"127.0.0.1:{relay.port}:1 s1"]) as proxy:
            relay.set_mode("stall")
            eofs = proxy.stats()["client_eof"]
            with proxy.connect() as sock:
                sock.sendall(b"".join(resp("INCR", k) for k in (D, L, D, L2, D)))
                sock.shutdown(socket.SHUT_WR)
                time.sleep(0.3)
                relay.set_mode("pass")
                got = read_until_eof(sock, 5)
            assert got == b":1\r\n:1\r\n:2\r\n:1\r\n:3\r\n"
            assert wait_for(lambda: proxy.stats()["client_eof"] == eofs + 1)
    finally:
        relay.close()
        target.cleanup()


# -- real servers stopped and restarted under load ------------------------------------------------

def load(proxy: Proxy, stop: threading.Event, errors: set[bytes], counts: list[int],
         redis: bool, seed: int) -> None:
    """Sequential pipelines of SET/GET pairs; every request must get exactly one reply.
    counts: [pipelines answered, connections that failed, pipelines short of replies]"""
    rng = random.Random(seed)
    codec = REDIS if redis else MEMCACHE
    while not stop.is_set():
        keys = [f"k{rng.randrange(120)}" for _ in range(8)]
        if redis:
            payload = b"".join(resp("SET", k, "v") + resp("GET", k) for k in keys)
        else:
            payload = b"".join(b"set %s 0 0 1\r\nv\r\nget %s\r\n" % (k.encode(), k.encode())
                               for k in keys)
        try:
            with proxy.connect() as sock:
                sock.sendall(payload)
                got = read_replies(sock, codec, 16, timeout=5)
        except OSError:
            counts[1] += 1
            continue
        if len(got) != 16:
            counts[2] += 1
        for reply in got:
            if reply.startswith((b"-ERR", b"SERVER_ERROR")):
                errors.add(reply)
        counts[0] += 1


@pytest.mark.parametrize("kind", ["redis", "memcached"])
def test_real_server_killed_and_restarted_under_load(kind: str) -> None:
    redis = kind == "redis"
    cls: Any = RedisServer if redis else Memcached
    servers = [cls().start(), cls().start()]
    started = list(servers)
    try:
        with Proxy([f"{s.addr}:1 s{i}" for i, s in enumerate(servers)], redis=redis,
                   timeout=2000) as proxy:
            stop = threading.Event()
            errors: set[bytes] = set()
            counts = [[0, 0, 0] for _ in range(4)]
            threads = [threading.Thread(target=load, args=(proxy, stop, errors, counts[i],
                                                           redis, i)) for i in range(4)]
            for t in threads:
                t.start()
            try:
                time.sleep(0.5)
                servers[1].stop(signal.SIGKILL)
                time.sleep(0.8)
                servers[1] = cls(servers[1].port).start()
                started.append(servers[1])
                time.sleep(0.8)
                done = sum(c[0] for c in counts)
                assert wait_for(lambda: sum(c[0] for c in counts) > done + 20)
            finally:
                stop.set()
                for t in threads:
                    t.join(10)
            prefix = b"-ERR " if redis else b"SERVER_ERROR "
            assert errors and errors <= {prefix + b"Connection refused\r\n",
                                         prefix + b"Connection reset by peer\r\n",
                                         prefix + b"unknown\r\n"}, errors
            assert all(c[1] == c[2] == 0 for c in counts)  # one reply per request, always
            assert proxy.proc.alive()
            stats = proxy.stats()
            assert stats["s1"]["server_err"] + stats["s1"]["server_eof"] >= 1
            assert stats["s1"]["server_connections"] == 1
    finally:
        for s in started:
            s.cleanup()
