"""The stats document against the real nutcracker: layout, field order and counter values.

Each test runs nutcracker and keyshard one after the other on the *same* config (the same
backends, flushed in between), captures nutcracker's document itself and compares.

nutcracker aggregates its counters on a timer (`-i`), so its document lags: it runs with
`-i 100` and is read until two reads agree. keyshard renders on demand; it is read the same
way so the two sides are treated alike (and `test_keyshard_is_fresh` checks that it needs no
wait at all).

Allowed differences (issue 6): service, source, version, uptime, timestamp, the connection
totals (total_connections, curr_connections) and `fragments`, which nutcracker 0.5.0 never
increments and keyshard counts on purpose. `server_ejected_at` is a time of day: only
"zero or not" is compared.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keyshard.config import parse_config
from keyshard.pool import ServerPool
from keyshard.protocol.memcache import CODEC as MEMCACHE
from keyshard.protocol.redis import CODEC as REDIS
from tests.support.faults import BlackHole
from tests.support.procs import (
    NUTCRACKER,
    Keyshard,
    Memcached,
    Nutcracker,
    RedisServer,
    free_port,
    pool_yaml,
)
from tests.support.rig import exchange, resp

pytestmark = pytest.mark.skipif(not Path(NUTCRACKER).exists(), reason="nutcracker not installed")

ALLOWED = {"service", "source", "version", "uptime", "timestamp", "total_connections",
           "curr_connections", "fragments"}
TOP_FIELDS = ["service", "source", "version", "uptime", "timestamp", "total_connections",
              "curr_connections"]


# --------------------------------------------------------------------------------------------
# Helpers


def read_doc(port: int) -> bytes:
    return exchange(port, b"", timeout=5)


def ordered(doc: bytes) -> list[tuple[str, Any]]:
    """The document as nested (key, value) lists: order is part of what is compared."""
    return json.loads(doc, object_pairs_hook=list)


def settled(port: int, timeout: float = 10.0) -> bytes:
    """The document once two reads 0.25 s apart agree (uptime and timestamp aside)."""
    previous, doc = None, b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = read_doc(port)
        values = json.loads(doc)
        values.pop("uptime"), values.pop("timestamp")
        if values == previous:
            return doc
        previous = values
        time.sleep(0.25)
    raise AssertionError(f"stats did not settle in {timeout}s:\n{doc!r}")


def flatten(doc: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, pairs: list[tuple[str, Any]]) -> None:
        for key, value in pairs:
            if isinstance(value, list):
                walk(prefix + key + "/", value)
            else:
                out[prefix + key] = value

    walk("", ordered(doc))
    return out


def differences(nc: bytes, ks: bytes) -> dict[str, tuple[Any, Any]]:
    a, b = flatten(nc), flatten(ks)
    assert list(a) == list(b), "the two documents have different fields or order"
    diff = {}
    for key in a:
        field = key.rsplit("/", 1)[-1]
        left, right = a[key], b[key]
        if field == "server_ejected_at":
            left, right = bool(left), bool(right)
        if left != right:
            diff[key] = (a[key], b[key])
    return diff


def unexpected(diff: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    return {k: v for k, v in diff.items() if k.rsplit("/", 1)[-1] not in ALLOWED}


def skeleton(doc: bytes) -> bytes:
    """The document with every value replaced: what is left is names, order and layout."""
    doc = re.sub(rb'("(?:service|source|version)":)"[^"]*"', rb'\1"S"', doc)
    return re.sub(rb":\d+", b":N", doc)


def talk(port: int, payload: bytes, replies: int, codec: Any = REDIS, close: bool = False,
         timeout: float = 10.0) -> list[bytes]:
    """Send `payload` on a new connection, read `replies` replies (then EOF if `close`: the
    proxy closes), then close our side. No half-close: an EOF read together with the
    requests changes nutcracker's replies and counters (see the known differences below)."""
    parser = codec.reply_parser()
    got: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (len(got) < replies or close):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            got += parser.feed(chunk)
    return got


def keys_for(conf_text: str, pool: str) -> dict[str, list[bytes]]:
    """Keys k0, k1, ... grouped by the name of the server they go to (all servers live)."""
    conf = next(p for p in parse_config(conf_text, "t.yml") if p.name == pool)
    router = ServerPool(conf)
    out: dict[str, list[bytes]] = {}
    for i in range(400):
        key = f"k{i}".encode()
        out.setdefault(conf.servers[router.route(key, 0.0)].name, []).append(key)
    return out


class Backends:
    """The servers both proxies use, one proxy at a time."""

    def __init__(self, redis: int, memcache: int) -> None:
        self.redis = [RedisServer().start() for _ in range(redis)]
        self.memcache = [Memcached().start() for _ in range(memcache)]
        self.hole = BlackHole()
        self.dead = free_port()

    def flush(self) -> None:
        for r in self.redis:
            r.client().flushall()
        for m in self.memcache:
            exchange(m.port, b"flush_all\r\n", timeout=2)

    def close(self) -> None:
        self.hole.close()
        for b in self.redis + self.memcache:
            b.cleanup()


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    b = Backends(redis=3, memcache=2)
    yield b
    b.close()


def run_proxy(kind: str, conf: str, ports: list[int], extra: list[str] | None = None) -> Any:
    cls = Nutcracker if kind == "nutcracker" else Keyshard
    proxy = cls(conf, extra=["-i", "100", *(extra or [])])
    proxy.extra += ["-o", str(proxy.dir / "proxy.log")]  # Debian's nutcracker logs to /var/log
    return proxy.start(*ports, proxy.stats_port)


# --------------------------------------------------------------------------------------------
# Layout: names, order, separators


def layout_conf(b: Backends) -> tuple[str, list[int]]:
    """Pools and servers deliberately out of order; named and unnamed servers."""
    ports = [free_port() for _ in range(3)]
    r0, r1, r2 = (r.addr for r in b.redis)
    m0, m1 = (m.addr for m in b.memcache)
    conf = (pool_yaml("zeta", ports[0], [f"{r1}:1", f"{r0}:1", f"{r2}:1"], redis=True)
            + pool_yaml("alpha", ports[1], [f"{m1}:1 mem-b", f"{m0}:2 mem-a"])
            + pool_yaml("Mid", ports[2], [f"{r2}:1 z", f"{r0}:1 10", f"{r1}:1 9"], redis=True,
                        hash="murmur", distribution="modula"))
    return conf, ports


def test_layout_matches_nutcracker(backends: Backends) -> None:
    conf, ports = layout_conf(backends)
    docs = {}
    for kind in ("nutcracker", "keyshard"):
        proxy = run_proxy(kind, conf, ports)
        try:
            docs[kind] = settled(proxy.stats_port)
        finally:
            proxy.cleanup()
    nc, ks = docs["nutcracker"], docs["keyshard"]
    assert skeleton(ks) == skeleton(nc), f"\nnutcracker: {nc!r}\nkeyshard:   {ks!r}"
    assert [k for k, _ in ordered(ks)][:7] == TOP_FIELDS
    values = json.loads(ks)
    assert (values["service"], values["source"]) == ("keyshard", socket.gethostname())
    assert unexpected(differences(nc, ks)) == {}


# --------------------------------------------------------------------------------------------
# Counters after a known workload


def workload_conf(b: Backends) -> tuple[str, list[int]]:
    ports = [free_port() for _ in range(3)]
    r0, r1, r2 = (r.addr for r in b.redis)
    m0, m1 = (m.addr for m in b.memcache)
    conf = (pool_yaml("alpha", ports[0], [f"{r0}:1 s0", f"{r1}:1 s1",
                                          f"127.0.0.1:{b.dead}:1 s2"],
                      redis=True, hash="fnv1a_64", distribution="ketama")
            + pool_yaml("beta", ports[1], [f"127.0.0.1:{b.hole.port}:1 b0", f"{r2}:1 b1"],
                        redis=True, auto_eject_hosts=True, server_failure_limit=1,
                        server_retry_timeout=600000, timeout=300)
            + pool_yaml("gamma", ports[2], [f"{m0}:1 m0", f"{m1}:1 m1"]))
    return conf, ports


def workload(conf: str, ports: list[int]) -> int:
    """Every scenario on its own connection; returns the fragments keyshard should count."""
    alpha, beta, gamma = ports
    a, b, g = keys_for(conf, "alpha"), keys_for(conf, "beta"), keys_for(conf, "gamma")
    s0, s1, s2 = a["s0"], a["s1"], a["s2"]
    assert talk(alpha, resp("SET", s0[0], "v") + resp("GET", s0[0]) + resp("SET", s1[0], "w"),
                3) == [b"+OK\r\n", b"$1\r\nv\r\n", b"+OK\r\n"]
    assert talk(alpha, resp("GET", s2[0]), 1) == [b"-ERR Connection refused\r\n"]  # dead
    assert talk(alpha, resp("MGET", s0[0], s1[0], s0[1]), 1) == [
        b"*3\r\n$1\r\nv\r\n$1\r\nw\r\n$-1\r\n"]  # split over two servers
    assert talk(alpha, resp("MGET", s0[0], s2[0]), 1, close=True) == [
        b"-ERR Connection refused\r\n"]  # a fragment on the dead server: error, then close
    assert talk(alpha, resp("DEL", s0[1], s2[0]), 1) == [b"-ERR Connection refused\r\n"]
    assert talk(alpha, resp("KEYS", "*"), 0, close=True) == []  # unsupported: closed
    assert talk(alpha, resp("DEL", s0[0], s1[0]), 1) == [b":2\r\n"]
    assert talk(alpha, resp("PING"), 1) == [b"+PONG\r\n"]  # local: no server counters
    assert talk(alpha, resp("RPUSH", s1[1], "x") + resp("MGET", s0[0], s1[1]), 2) == [
        b":1\r\n", b"*2\r\n$-1\r\n$-1\r\n"]
    # beta: the black hole times out and is ejected (limit 1); its keys then go to b1
    hole_key = b["b0"][0]
    assert talk(beta, resp("GET", hole_key), 1) == [b"-ERR Connection timed out\r\n"]
    assert talk(beta, resp("GET", hole_key), 1) == [b"$-1\r\n"]
    # gamma: memcache, a split multi-get, an unsupported verb
    m0, m1 = g["m0"], g["m1"]
    stored = talk(gamma, b"set %s 0 0 1\r\nx\r\nset %s 0 0 1\r\ny\r\n" % (m0[0], m1[0]), 2,
                  MEMCACHE)
    assert stored == [b"STORED\r\n"] * 2
    got = talk(gamma, b"get %s %s %s\r\n" % (m1[0], m0[0], m0[1]), 1, MEMCACHE)
    assert got == [b"VALUE %s 0 1\r\ny\r\nVALUE %s 0 1\r\nx\r\nEND\r\n" % (m1[0], m0[0])]
    assert talk(gamma, b"stats\r\n", 0, MEMCACHE, close=True) == []
    return 2 + 2 + 2 + 2 + 2 + 2  # MGET, MGET dead, DEL dead, DEL, MGET, get: two each


def test_counters_match_nutcracker_after_a_workload(backends: Backends) -> None:
    conf, ports = workload_conf(backends)
    docs, fragments = {}, 0
    for kind in ("nutcracker", "keyshard"):
        backends.flush()
        proxy = run_proxy(kind, conf, ports)
        try:
            fragments = workload(conf, ports)
            docs[kind] = settled(proxy.stats_port)
        finally:
            proxy.cleanup()
    nc, ks = docs["nutcracker"], docs["keyshard"]
    diff = differences(nc, ks)
    assert unexpected(diff) == {}, f"\nnutcracker: {nc!r}\nkeyshard:   {ks!r}"
    values = json.loads(ks)
    assert values["alpha"]["fragments"] + values["gamma"]["fragments"] == fragments
    assert values["beta"]["fragments"] == 0
    assert json.loads(nc)["alpha"]["fragments"] == 0  # nutcracker never counts them
    # the workload did touch what it means to (so the comparison is not vacuous)
    alpha, beta, gamma = values["alpha"], values["beta"], values["gamma"]
    assert alpha["forward_error"] == 3 and alpha["client_err"] == 2
    assert alpha["s2"]["server_err"] == 3 and alpha["s2"]["requests"] == 3
    assert beta["server_ejects"] == 1 and beta["b0"]["server_timedout"] == 1
    assert beta["b0"]["server_ejected_at"] > 0 and beta["b1"]["server_ejected_at"] == 0
    assert gamma["client_err"] == 1 and gamma["m0"]["requests"] == 2


# --------------------------------------------------------------------------------------------
# Gauges while a request is in flight


def test_in_flight_gauges_match_nutcracker(backends: Backends) -> None:
    port = free_port()
    conf = pool_yaml("hole", port, [f"127.0.0.1:{backends.hole.port}:1 h0"], redis=True)
    request = resp("GET", "waiting")
    docs = {}
    for kind in ("nutcracker", "keyshard"):
        proxy = run_proxy(kind, conf, [port])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(request)
                docs[kind] = settled(proxy.stats_port)
                # keyshard would give the unanswered request its grace: a second signal
                # skips it (nutcracker dies at the first)
                for _ in range(2):
                    proxy.send_signal(signal.SIGTERM)
                    time.sleep(0.05)
        finally:
            proxy.cleanup()
    nc, ks = docs["nutcracker"], docs["keyshard"]
    assert unexpected(differences(nc, ks)) == {}, f"\nnutcracker: {nc!r}\nkeyshard:   {ks!r}"
    hole = json.loads(ks)["hole"]
    assert hole["client_connections"] == 1
    assert (hole["h0"]["server_connections"], hole["h0"]["out_queue"],
            hole["h0"]["out_queue_bytes"]) == (1, 1, len(request))


# --------------------------------------------------------------------------------------------
# Freshness (keyshard only: nutcracker lags by design)


def test_keyshard_is_fresh(backends: Backends) -> None:
    port = free_port()
    conf = pool_yaml("alpha", port, [f"{backends.redis[0].addr}:1 s0"], redis=True)
    proxy = Keyshard(conf)  # default -i 30000: keyshard has no aggregation interval
    proxy.start(port, proxy.stats_port)
    try:
        for n in range(1, 4):
            assert talk(port, resp("SET", "fresh", n), 1) == [b"+OK\r\n"]
            server = json.loads(read_doc(proxy.stats_port))["alpha"]["s0"]
            assert (server["requests"], server["responses"]) == (n, n)
    finally:
        proxy.cleanup()


# --------------------------------------------------------------------------------------------
# Known data-path differences (reported; the data path lives in net/). Not strict: the
# nutcracker side depends on what one read(2) returns.


def compare_one(backends: Backends, send: Callable[[int, dict[str, list[bytes]]], bytes]
                ) -> tuple[dict[str, bytes], dict[str, bytes]]:
    conf, ports = workload_conf(backends)
    docs, replies = {}, {}
    for kind in ("nutcracker", "keyshard"):
        backends.flush()
        proxy = run_proxy(kind, conf, ports)
        try:
            replies[kind] = send(ports[0], keys_for(conf, "alpha"))
            docs[kind] = settled(proxy.stats_port)
        finally:
            proxy.cleanup()
    return replies, docs


def test_documented_difference_pipeline_cut_by_a_bad_command(backends: Backends) -> None:
    """GET then an unsupported command in one read: nutcracker closes at once and drops the
    GET's reply; keyshard answers the GET, then closes (README, differences). The stats
    differ in exactly that one response."""
    def send(port: int, keys: dict[str, list[bytes]]) -> bytes:
        got = talk(port, resp("GET", keys["s1"][0]) + resp("KEYS", "*"), 0, close=True)
        return b"".join(got)

    replies, docs = compare_one(backends, send)
    assert replies["nutcracker"] == b""
    assert replies["keyshard"] == b"$-1\r\n"
    diff = unexpected(differences(docs["nutcracker"], docs["keyshard"]))
    assert {k.rsplit("/", 1)[-1] for k in diff} == {"responses", "response_bytes"}, diff


def test_split_error_after_half_close(backends: Backends) -> None:
    """MGET with a fragment on a dead server and the client's FIN right behind it.

    When the FIN is read together with the MGET, nutcracker (and keyshard) close with no
    reply and count no error; when it comes in a later read, both answer the error and
    count client_err and forward_error. Which one happens is up to the kernel, so each
    proxy's reply must be one of the two, with the counters that go with it.
    """
    def send(port: int, keys: dict[str, list[bytes]]) -> bytes:
        return exchange(port, resp("MGET", keys["s0"][0], keys["s2"][0]), timeout=5)

    outcomes = {b"": (0, 0), b"-ERR Connection refused\r\n": (1, 1)}
    replies, docs = compare_one(backends, send)
    for kind in ("nutcracker", "keyshard"):
        assert replies[kind] in outcomes, (kind, replies[kind])
        pool = json.loads(docs[kind])["alpha"]
        counted = (pool["client_err"], pool["forward_error"])
        assert counted == outcomes[replies[kind]], (kind, counted)
