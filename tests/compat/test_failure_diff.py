"""Differential failure test: the same failure scenarios through nutcracker and keyshard.

Both proxies run side by side with the same config over the same servers: a live redis-server
(or memcached) named s0 and a faulty server named s1 (a closed port, a black hole, a fake
answering -LOADING, one closing at the first request, a relay resetting connections, a name
that does not resolve). Each scenario is a list of conversations (bytes sent, then everything
received until the proxy closes, or until a short quiet time); what each client receives must
be identical, byte for byte, and so must the failure counters of the stats.

Where timing matters the two proxies get the same timeline: scenarios that only read run in
two threads at once; the others run one proxy after the other with the backends flushed.
Conversations are built so that their outcome does not depend on a race inside either proxy
(see "Timing" below for what is left out and why).

Timing: nutcracker closes a client after a failed MGET at its next event; if that event is a
read (more requests, or the client's EOF), it closes without writing anything. The tests
make the order certain: an MGET that fails on a timeout (300 ms) with the client already
half-closed gets no reply from either proxy, unless requests that failed with it on the same
server's timeout are still unwritten ahead of it (then they, and it, are all written); an MGET
that fails without the EOF gets its error and the replies ready with it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Self

import pytest

from keyshard.config import PoolConf, ServerConf
from keyshard.pool import ServerPool
from tests.support.faults import BlackHole, FaultProxy, Scripted
from tests.support.procs import (
    Keyshard,
    Memcached,
    Nutcracker,
    RedisServer,
    free_port,
    pool_yaml,
)
from tests.support.rig import first_difference, read_until_eof, resp

KINDS = ("nutcracker", "keyshard")


def placement(n: int = 120) -> tuple[list[str], list[str]]:
    """Keys on s0 and on s1 of a two-server pool (fnv1a_64, ketama), as both proxies place them."""
    servers = [ServerConf(pname=f"s{i}:1", name=f"s{i}", host="127.0.0.1", port=1, weight=1,
                          is_unix=False) for i in range(2)]
    pool = ServerPool(PoolConf(name="alpha", listen="127.0.0.1:1", listen_host="127.0.0.1",
                               listen_port=1, redis=True, servers=servers, hash="fnv1a_64",
                               distribution="ketama"))
    on: tuple[list[str], list[str]] = ([], [])
    for i in range(n):
        on[pool.route(b"k%d" % i, 0.0)].append(f"k{i}")
    return on


LIVE, DEAD = placement()
L, L2 = LIVE[:2]  # keys on s0, the live server
D, D2, D3, D4 = DEAD[:4]  # keys on s1, the faulty one


# -- proxies and conversations --------------------------------------------------------------------

class Proxies:
    """nutcracker and keyshard with the same pool over the same servers."""

    def __init__(self, servers: list[str], redis: bool = True, **opts: Any) -> None:
        self.procs: dict[str, Any] = {}
        self.ports: dict[str, int] = {}
        settings: dict[str, Any] = {"hash": "fnv1a_64", "distribution": "ketama", "redis": redis}
        settings.update(opts)
        try:
            for kind, cls in (("nutcracker", Nutcracker), ("keyshard", Keyshard)):
                port = free_port()
                extra = ["-i", "50"] if kind == "nutcracker" else []  # fresh stats
                proc = cls(pool_yaml("alpha", port, servers, **settings), extra=extra)
                self.procs[kind] = proc
                proc.start(port)
                self.ports[kind] = port
        except Exception:
            self.close()
            raise

    def stats(self, kind: str) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.procs[kind].stats_port), timeout=5) as s:
            doc: dict[str, Any] = json.loads(read_until_eof(s, 5))
        return doc["alpha"]

    def close(self) -> None:
        for proc in self.procs.values():
            proc.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def talk(port: int, payload: bytes, half: bool = True, quiet: float = 0.6) -> bytes:
    """Send `payload` (then half-close, with `half`); everything received, then how it ended:
    `<EOF>`, `<RST>` or `<open>` (nothing for `quiet` seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        if half:
            s.shutdown(socket.SHUT_WR)
        s.settimeout(quiet)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return out + b"<open>"
            except ConnectionResetError:
                return out + b"<RST>"
            if not chunk:
                return out + b"<EOF>"
            out += chunk


Step = Callable[[int], Any]


def run_steps(steps: list[Step], port: int) -> list[Any]:
    return [step(port) for step in steps]


def both(proxies: Proxies, steps: list[Step], parallel: bool,
         between: Callable[[], object] | None = None) -> dict[str, list[Any]]:
    """Run the steps against each proxy: at once in two threads, or one after the other."""
    out: dict[str, list[Any]] = {}
    if parallel:
        errors: list[BaseException] = []

        def one(kind: str) -> None:
            try:
                out[kind] = run_steps(steps, proxies.ports[kind])
            except BaseException as err:  # noqa: BLE001  # handed to the main thread
                errors.append(err)

        threads = [threading.Thread(target=one, args=(kind,)) for kind in KINDS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            raise errors[0]
    else:
        for kind in KINDS:
            if between is not None:
                between()
            out[kind] = run_steps(steps, proxies.ports[kind])
    return out


def assert_same(out: dict[str, list[Any]]) -> None:
    nut, ks = out["nutcracker"], out["keyshard"]
    diffs = []
    for i, (a, b) in enumerate(zip(nut, ks)):
        if a != b:
            if isinstance(a, bytes) and isinstance(b, bytes):
                diffs.append(f"step {i}: {first_difference(a, b)}")
            else:
                diffs.append(f"step {i}: nutcracker {a!r}\n         keyshard   {b!r}")
    assert len(nut) == len(ks)
    assert not diffs, "\n".join(diffs)


POOL_COUNTERS = ("client_eof", "client_err", "server_ejects", "forward_error")
SERVER_COUNTERS = ("server_eof", "server_err", "server_timedout", "requests", "responses")


def counters(proxies: Proxies, kind: str) -> dict[str, int]:
    doc = proxies.stats(kind)
    got = {name: doc[name] for name in POOL_COUNTERS}
    for server in ("s0", "s1"):
        got.update({f"{server}.{name}": doc[server][name] for name in SERVER_COUNTERS})
        got[f"{server}.ejected"] = int(doc[server]["server_ejected_at"] > 0)
    return got


def assert_same_counters(proxies: Proxies) -> None:
    time.sleep(0.2)  # nutcracker aggregates its stats every -i (50 ms)
    nut, ks = counters(proxies, "nutcracker"), counters(proxies, "keyshard")
    assert nut == ks, {k: (nut[k], ks[k]) for k in nut if nut[k] != ks[k]}


def conv(payload: bytes, half: bool = True, quiet: float = 0.6) -> Step:
    return lambda port: talk(port, payload, half, quiet)


def sleep(seconds: float) -> Step:
    def step(port: int) -> None:
        time.sleep(seconds)
    return step


def get(*keys: str) -> bytes:
    return b"".join(resp("GET", k) for k in keys)


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    redis_server.client().flushall()  # steps run side by side must find the same data
    return redis_server


@pytest.fixture(scope="module")
def memcached_server() -> Iterator[Memcached]:
    server = Memcached().start()
    yield server
    server.cleanup()


@pytest.fixture
def memcached(memcached_server: Memcached) -> Memcached:
    talk(memcached_server.port, b"flush_all\r\n")
    return memcached_server


def dead_addr() -> str:
    return f"127.0.0.1:{free_port()}"


# -- redis: a dead server -------------------------------------------------------------------------

def test_dead_server(redis: RedisServer) -> None:
    steps = [
        conv(get(D)),
        conv(get(D, L, D)),
        conv(resp("MGET", L, D, L2) + get(L), half=False),  # error, the GET, then the close
        conv(resp("MGET", D, D2), half=False),
        conv(resp("DEL", L, D) + get(L)),  # DEL and MSET keep the connection
        conv(resp("MSET", L, "1", D, "2") + get(L)),
        conv(resp("MGET", L, L2) + resp("SET", D, "x") + resp("INCR", D) + resp("PING")),
        conv(resp("EVAL", "return 1", "1", D) + resp("HGET", D, "f") + get(L)),
    ]
    with Proxies([f"{redis.addr}:1 s0", f"{dead_addr()}:1 s1"]) as proxies:
        out = both(proxies, steps, parallel=False, between=redis.client().flushall)
        assert out["keyshard"][0] == b"-ERR Connection refused\r\n<EOF>"
        assert out["keyshard"][2] == b"-ERR Connection refused\r\n$-1\r\n<EOF>"
        assert_same(out)
        assert_same_counters(proxies)


def test_ejection_then_retry(redis: RedisServer) -> None:
    # limit 2: two refusals eject s1 and its keys go to s0; after the retry time the next
    # request puts it back (refused again, ejected again after two). An MGET right after the
    # retry time shows nutcracker's split: keys grouped on the old continuum (both on s0),
    # then the fragment routed by its first key after the rebuild: the whole MGET goes to s1.
    steps = [
        conv(get(D)), conv(get(D)), conv(get(D)), conv(resp("MGET", D, L)),
        conv(get(D2, D3, L)),
        sleep(1.1),
        conv(resp("MGET", D, L), half=False), conv(resp("MGET", D, L), half=False),
        conv(resp("MGET", D, L), half=False),
        sleep(1.1),
        conv(get(D, D, D, L)),  # one connection: one failure for the three
        conv(get(D)), conv(get(D)),
    ]
    with Proxies([f"{redis.addr}:1 s0", f"{dead_addr()}:1 s1"], auto_eject_hosts=True,
                 server_failure_limit=2, server_retry_timeout=1000) as proxies:
        out = both(proxies, steps, parallel=True)
        assert out["keyshard"][2] == b"$-1\r\n<EOF>"
        assert_same(out)
        assert_same_counters(proxies)


def test_no_live_server_left() -> None:
    steps = [
        conv(get(D)), conv(get(D, L)), conv(resp("MGET", D, L), half=False),
        conv(resp("DEL", D, L)), conv(resp("PING") + get(L)),
    ]
    with Proxies([f"{dead_addr()}:1 s0", f"{dead_addr()}:1 s1"], auto_eject_hosts=True,
                 server_failure_limit=1, server_retry_timeout=30000) as proxies:
        out = both(proxies, steps, parallel=True)
        assert out["keyshard"][4] == b"+PONG\r\n-ERR Connection refused\r\n<EOF>"
        assert_same(out)
        assert_same_counters(proxies)


# -- redis: timeouts, -LOADING, EOF, reset, a name that does not resolve --------------------------

def test_timeout() -> None:
    hole = BlackHole()
    live = RedisServer().start()
    steps = [
        conv(get(D, L, D), quiet=2),
        conv(resp("MGET", L, D) + get(L), half=False, quiet=2),
        conv(get(L) + resp("MGET", L, D) + get(L), quiet=2),  # half-closed: no MGET reply
        conv(resp("DEL", L, D) + get(L), quiet=2),
        conv(resp("MSET", L, "1", D, "2") + get(L2), quiet=2),
        # half-closed, but a SET that times out with the MGET (the same connection closes)
        # is ahead of it: everything is written, the MGET's error too, then the close
        conv(resp("SET", D, "x") + get(L2) + resp("MGET", D, D2), quiet=2),
    ]
    try:
        with Proxies([f"{live.addr}:1 s0", f"127.0.0.1:{hole.port}:1 s1"],
                     timeout=300) as proxies:
            out = both(proxies, steps, parallel=True)
            assert out["keyshard"][0] == (b"-ERR Connection timed out\r\n$-1\r\n"
                                          b"-ERR Connection timed out\r\n<EOF>")
            assert out["keyshard"][2] == b"$-1\r\n<EOF>"
            assert out["keyshard"][5] == (b"-ERR Connection timed out\r\n$-1\r\n"
                                          b"-ERR Connection timed out\r\n<EOF>")
            assert_same(out)
            assert_same_counters(proxies)
    finally:
        hole.close()
        live.cleanup()


FAULT_STEPS = [
    conv(get(D, L, D)),
    conv(resp("MGET", L, D) + get(L), half=False),
    conv(resp("SET", D, "x")),
    conv(resp("DEL", D, L) + get(L)),
]


@pytest.mark.parametrize("fake", ["loading", "busy", "oom", "eof", "stray"])
def test_failing_server(redis: RedisServer, fake: str) -> None:
    servers = {
        "loading": lambda: Scripted(reply=b"-LOADING Redis is loading the dataset in memory\r\n"),
        "busy": lambda: Scripted(reply=b"-BUSY Redis is busy running a script.\r\n"),
        "oom": lambda: Scripted(reply=b"-OOM command not allowed when used memory\r\n"),
        "eof": lambda: Scripted(close_after_recv=True),
        # every request answered twice: the second reply is one nobody asked for
        "stray": lambda: Scripted(reply=b"$-1\r\n$-1\r\n"),
    }
    server = servers[fake]()
    try:
        with Proxies([f"{redis.addr}:1 s0", f"127.0.0.1:{server.port}:1 s1"],
                     auto_eject_hosts=True, server_failure_limit=3,
                     server_retry_timeout=30000) as proxies:
            out = both(proxies, FAULT_STEPS, parallel=True)
            expect = {"loading": b"-ERR Invalid argument", "eof": b"-ERR unknown"}
            if fake in expect:
                assert out["keyshard"][0].startswith(expect[fake])
            assert_same(out)
            assert_same_counters(proxies)
    finally:
        server.close()


def test_reset(redis: RedisServer) -> None:
    target = RedisServer().start()
    relay = FaultProxy(target.port)
    steps = [conv(get(D, L)), conv(resp("MGET", D, L2) + get(L), half=False), conv(get(D))]
    try:
        with Proxies([f"{redis.addr}:1 s0", f"127.0.0.1:{relay.port}:1 s1"]) as proxies:
            relay.set_mode("reset")
            out = both(proxies, steps, parallel=True)
            assert out["keyshard"][0] == b"-ERR Connection reset by peer\r\n$-1\r\n<EOF>"
            assert_same(out)
    finally:
        relay.close()
        target.cleanup()


def test_host_down(redis: RedisServer) -> None:
    # resolved on each new connection, and a failure right there fails only that request:
    # with auto-ejection, three pipelined requests count three failures (limit 2)
    steps = [conv(get(D, D, D, L)), conv(resp("MGET", D, L), half=False), conv(get(D))]
    servers = [f"{redis.addr}:1 s0", "nonexistent.invalid:6379:1 s1"]
    with Proxies(servers, auto_eject_hosts=True, server_failure_limit=2,
                 server_retry_timeout=30000) as proxies:
        out = both(proxies, steps, parallel=True)
        assert out["keyshard"][0] == b"-ERR Host is down\r\n" * 2 + b"$-1\r\n$-1\r\n<EOF>"
        assert_same(out)
        assert_same_counters(proxies)
    with Proxies(servers) as proxies:
        out = both(proxies, steps, parallel=True)
        assert_same(out)
        assert_same_counters(proxies)


def test_mget_fragment_error_reply(redis: RedisServer) -> None:
    # an ordinary error reply to a fragment: -ERR Invalid argument; nutcracker's merge then
    # reads the error as bulks, and with 4 keys on that server it runs out and closes
    server = Scripted(reply=b"-ERR boom\r\n")
    steps = [conv(resp("MGET", L, *keys) + get(L), half=False)
             for keys in ([D], [D, D2, D3], [D, D2, D3, D4], [D4, D3, L2, D2, D])]
    try:
        with Proxies([f"{redis.addr}:1 s0", f"127.0.0.1:{server.port}:1 s1"]) as proxies:
            out = both(proxies, steps, parallel=True)
            assert out["keyshard"][2] == b"-ERR Invalid argument\r\n$-1\r\n<EOF>"
            assert_same(out)
    finally:
        server.close()


# -- memcache -------------------------------------------------------------------------------------

def mc(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def test_memcache_dead_server(memcached: Memcached) -> None:
    steps = [
        conv(mc(f"get {D}\nget {L}\n")),
        # SERVER_ERROR, the next reply, the close; the next request goes to the dead server
        # too: memcached may answer two gets in two writes, so a get on s0 could be late
        conv(mc(f"get {L} {D}\nget {D}\n"), half=False),
        conv(mc(f"get {D} {D2}\n"), half=False),
        conv(mc(f"set {D} 0 0 1\nx\nset {L} 0 0 1\ny\n")),
        conv(mc(f"set {D} 0 0 1 noreply\nx\nget {L}\n")),  # noreply: dropped silently
        conv(mc(f"delete {D}\nincr {D} 1\ntouch {D} 1\nadd {D} 0 0 1 noreply\nz\nversion\n")),
        conv(mc(f"get {L} {L2}\ndelete {L}\n")),
    ]
    with Proxies([f"{memcached.addr}:1 s0", f"{dead_addr()}:1 s1"], redis=False) as proxies:
        out = both(proxies, steps, parallel=False,
                   between=lambda: talk(memcached.port, b"flush_all\r\n"))
        assert out["keyshard"][4] == b"VALUE %s 0 1\r\ny\r\nEND\r\n<EOF>" % L.encode()
        assert_same(out)
        assert_same_counters(proxies)


def test_memcache_timeout_and_error_fragment(memcached: Memcached) -> None:
    hole = BlackHole()
    err = Scripted(reply=b"SERVER_ERROR boom\r\n", memcache=True)
    steps = [
        conv(mc(f"get {D}\nget {L}\n"), quiet=2),
        conv(mc(f"get {L} {D}\nget {L}\n"), half=False, quiet=2),
        conv(mc(f"get {L}\nget {L} {D}\nget {L}\n"), quiet=2),  # half-closed: nothing more
        conv(mc(f"get {D}\nget {L}\nget {D} {D2}\n"), quiet=2),  # a failed get ahead: all
    ]
    try:
        with Proxies([f"{memcached.addr}:1 s0", f"127.0.0.1:{hole.port}:1 s1"], redis=False,
                     timeout=300) as proxies:
            out = both(proxies, steps, parallel=True)
            assert out["keyshard"][2] == b"END\r\n<EOF>"
            assert out["keyshard"][3] == (b"SERVER_ERROR Connection timed out\r\nEND\r\n"
                                          b"SERVER_ERROR Connection timed out\r\n<EOF>")
            assert_same(out)
            assert_same_counters(proxies)
        with Proxies([f"{memcached.addr}:1 s0", f"127.0.0.1:{err.port}:1 s1"],
                     redis=False) as proxies:
            # the request after the multi-get goes to the same fake server, whose two replies
            # arrive together: ready when the multi-get fails, whichever server answers last
            out = both(proxies, [conv(mc(f"get {L} {D}\nget {D}\n"), half=False),
                                 conv(mc(f"get {D}\nget {L}\n"))], parallel=True)
            assert out["keyshard"][0] == (b"SERVER_ERROR Invalid argument\r\n"
                                          b"SERVER_ERROR boom\r\n<EOF>")
            assert_same(out)
    finally:
        hole.close()
        err.close()
