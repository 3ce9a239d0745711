"""Key placement: every key lands where the real nutcracker 0.5.0 puts it (reference §4-§6, §9).

For each configuration, thousands of keys (ASCII, binary with bytes >= 0x80, hash-tagged,
long, empty) are SET through a proxy in front of real redis-servers with pipelined RESP; then
each backend is asked which keys it holds (KEYS *). `ServerPool.route` must name the same
backend for every key: zero disagreements.

The proxy is a parameter: `placement_through(port, backends, keys)` does not care which proxy
listens on the port, so the same cases will check keyshard's forwarding path against the same
model once it exists.

Runtime: the redis-servers are started once for the module (in parallel) and flushed between
cases; the 12 hashes x 2 distributions use 1500 keys each, the others 3000-4000.
"""

from __future__ import annotations

import random
import socket
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Self

import pytest

from keyshard.config import PoolConf, ServerConf
from keyshard.hashing import HASHES
from keyshard.pool import ServerPool
from tests.support.procs import Keyshard, Nutcracker, RedisServer, free_port, pool_yaml

# Both proxies get the same config text and flags; each placement must match the model.
PROXY_KINDS = ["nutcracker", "keyshard"]
PROXIES: dict[str, Any] = {"nutcracker": Nutcracker, "keyshard": Keyshard}

NBACKENDS = 25
MEMCACHED_PORT = 11211  # a server on this port is named by its host alone


# -- the proxy, seen from outside ------------------------------------------------------------

def _set_command(key: bytes) -> bytes:
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\n1\r\n" % (len(key), key)


def _read_lines(sock: socket.socket, buf: bytearray, n: int) -> list[bytes]:
    """Read `n` one-line replies (+OK / -ERR ...)."""
    while buf.count(b"\r\n") < n:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise AssertionError(f"proxy closed the connection; got {bytes(buf)[-200:]!r}")
        buf += chunk
    lines = bytes(buf).split(b"\r\n")
    del buf[:sum(len(line) + 2 for line in lines[:n])]
    return lines[:n]


def set_through(port: int, keys: Sequence[bytes], chunk: int = 1000) -> list[bytes]:
    """SET every key through the proxy on `port`, pipelined; the reply line of each."""
    replies: list[bytes] = []
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        for i in range(0, len(keys), chunk):
            part = keys[i:i + chunk]
            sock.sendall(b"".join(_set_command(k) for k in part))
            replies += _read_lines(sock, buf, len(part))
    return replies


def backend_keys(backend: RedisServer) -> set[bytes]:
    client = backend.client()
    try:
        return set(client.keys("*"))
    finally:
        client.close()


def placement_through(proxy_port: int, backends: Sequence[RedisServer],
                      keys: Sequence[bytes]) -> dict[bytes, int]:
    """SET `keys` through the proxy, then: key -> index in `backends` of the one holding it."""
    replies = set_through(proxy_port, keys)
    failed = [(k, r) for k, r in zip(keys, replies) if r != b"+OK"]
    assert not failed, f"{len(failed)} SETs failed, e.g. {failed[:3]}"
    placed: dict[bytes, int] = {}
    for index, backend in enumerate(backends):
        for key in backend_keys(backend):
            assert key not in placed, f"{key!r} is on backends {placed[key]} and {index}"
            placed[key] = index
    missing = set(keys) - placed.keys()
    assert not missing, f"{len(missing)} keys are on no backend, e.g. {sorted(missing)[:3]}"
    return placed


# -- configurations ----------------------------------------------------------------------------

@dataclass
class Entry:
    """One `servers:` line: which backend, its weight and name; `dead`: nothing listens."""

    backend: int = 0
    weight: int = 1
    name: str | None = None
    unix: bool = False
    dead: bool = False
    port: int | None = None  # a fixed port (11211) instead of the backend's own


@dataclass
class Case:
    id: str
    entries: list[Entry]
    opts: dict[str, Any] = field(default_factory=dict)
    nkeys: int = 3000
    tag: bytes | None = None
    extra_keys: list[bytes] = field(default_factory=list)


@dataclass
class Backends:
    servers: list[RedisServer]
    memcached_port_server: RedisServer | None = None

    def entry_backend(self, entry: Entry) -> RedisServer:
        if entry.port == MEMCACHED_PORT:
            if self.memcached_port_server is None:
                pytest.skip(f"port {MEMCACHED_PORT} is taken on this machine")
            return self.memcached_port_server
        return self.servers[entry.backend]


def _addr(entry: Entry, backends: Backends, dead_ports: dict[int, int]) -> tuple[str, str, int]:
    """(servers: line without weight/name, nutcracker's identity name, port) of an entry."""
    if entry.dead:
        port = dead_ports.setdefault(id(entry), free_port())
        return f"127.0.0.1:{port}", f"127.0.0.1:{port}", port
    backend = backends.entry_backend(entry)
    if entry.unix:
        path = str(backend.dir / "redis.sock")
        return path, f"{path}:", 0
    if backend.port == MEMCACHED_PORT:
        return f"127.0.0.1:{backend.port}", "127.0.0.1", backend.port
    return f"127.0.0.1:{backend.port}", f"127.0.0.1:{backend.port}", backend.port


def build(case: Case, backends: Backends, listen_port: int) -> tuple[str, PoolConf, list[int]]:
    """The nutcracker.yml text, the model's PoolConf, and server index -> entry index."""
    dead_ports: dict[int, int] = {}
    lines, confs = [], []
    for entry in case.entries:
        addr, identity, port = _addr(entry, backends, dead_ports)
        line = f"{addr}:{entry.weight}"
        lines.append(line + (f" {entry.name}" if entry.name else ""))
        confs.append(ServerConf(pname=line, name=entry.name or identity, host=addr, port=port,
                                weight=entry.weight, is_unix=entry.unix))
    # nutcracker sorts servers by name: shorter first, then bytewise.
    order = sorted(range(len(confs)), key=lambda i: (len(confs[i].name.encode()),
                                                     confs[i].name.encode()))
    opts = dict(case.opts)
    text = pool_yaml("alpha", listen_port, lines, redis=True,
                     **{k: (f'"{v}"' if k == "hash_tag" else v) for k, v in opts.items()})
    if "hash_tag" in opts:
        opts["hash_tag"] = opts["hash_tag"].encode()
    conf = PoolConf(name="alpha", listen=f"127.0.0.1:{listen_port}", listen_host="127.0.0.1",
                    listen_port=listen_port, redis=True, servers=[confs[i] for i in order],
                    **opts)
    return text, conf, order


def make_keys(n: int, seed: int, tag: bytes | None) -> list[bytes]:
    """ASCII, binary (bytes >= 0x80), long (> 64 bytes), hash-tagged and edge-case keys."""
    rng = random.Random(seed)
    keys = {b"", b"a", b"foo", b"key:1", b"caf\xc3\xa9", b"\xff\xfe\x80"}
    while len(keys) < n:
        kind = rng.randrange(6)
        if kind == 0:
            keys.add(b"key:%d" % rng.randrange(10**7))
        elif kind == 1:
            keys.add(bytes(rng.randrange(33, 127) for _ in range(rng.randint(1, 40))))
        elif kind == 2:
            keys.add(rng.randbytes(rng.randint(1, 40)))
        elif kind == 3:
            keys.add(rng.randbytes(rng.randint(65, 120)))
        else:
            keys.add(_tagged_key(rng, tag or b"{}"))
    return sorted(keys)


def _tagged_key(rng: random.Random, tag: bytes) -> bytes:
    o, c = tag[0:1], tag[1:2]
    inner = rng.choice([b"%d" % rng.randrange(50), rng.randbytes(rng.randint(1, 6)), b""])
    shapes = [
        b"user:" + o + inner + c + b":name",
        o + inner + c,
        b"x" + o + inner + c + o + b"y" + c,
        b"a" + c + o + inner + c,
        b"open" + o + inner,
        rng.randbytes(3) + o + inner + c + rng.randbytes(3),
    ]
    return rng.choice(shapes)


def _three() -> list[Entry]:
    return [Entry(0), Entry(1), Entry(2)]


TIE_KEYS = [b"tie:%d" % n for n in range(5500, 5508)]

HASH_CASES = [
    Case(f"{dist}-{h}", _three(), {"hash": h, "distribution": dist}, nkeys=1500)
    for dist in ("ketama", "modula") for h in HASHES
]

OTHER_CASES = [
    Case("ketama-weights-3-1-2", [Entry(0, 3), Entry(1, 1), Entry(2, 2)]),
    Case("modula-weights-3-1-2", [Entry(0, 3), Entry(1, 1), Entry(2, 2)],
         {"distribution": "modula"}),
    Case("ketama-omega-100000-1", [Entry(0, 100000), Entry(1, 1)], nkeys=1500),
    # Sorted by length first: c, bb, alpha (bytewise order would be alpha, bb, c).
    Case("ketama-named", [Entry(0, 1, "alpha"), Entry(1, 2, "bb"), Entry(2, 1, "c")]),
    Case("modula-named", [Entry(0, 1, "alpha"), Entry(1, 2, "bb"), Entry(2, 1, "c")],
         {"distribution": "modula"}),
    Case("ketama-names-cut-at-272",
         [Entry(0, 1, "n" * 270), Entry(1, 1, "m" * 300), Entry(2, 1, "short")]),
    Case("ketama-tag-braces", _three(), {"hash_tag": "{}"}, tag=b"{}"),
    Case("ketama-tag-dollars", _three(), {"hash_tag": "$$"}, tag=b"$$"),
    Case("ketama-tag-colons-murmur", _three(), {"hash_tag": "::", "hash": "murmur"}, tag=b"::"),
    Case("modula-tag-braces", _three(), {"hash_tag": "{}", "distribution": "modula"},
         tag=b"{}"),
    # "a" and "t790915" share the point 717967565; glibc's stable qsort puts "a" (index 0)
    # first, so the keys hashing into (711407824, 717967565] go to "a".
    Case("ketama-tied-point", [Entry(0, 1, "t790915"), Entry(1, 1, "a")], nkeys=1000,
         extra_keys=TIE_KEYS),
    Case("ketama-25-servers-156-points", [Entry(i) for i in range(25)], nkeys=4000),
    Case("ketama-unix-socket", [Entry(0), Entry(1, unix=True), Entry(2)]),
    Case("ketama-port-11211", [Entry(0), Entry(port=MEMCACHED_PORT), Entry(2)]),
]


# -- fixtures ------------------------------------------------------------------------------

def _start_redis() -> RedisServer:
    server = RedisServer()
    server.extra += ["--unixsocket", str(server.dir / "redis.sock"), "--unixsocketperm", "700"]
    return server.start()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    started: list[RedisServer] = []
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(_start_redis) for _ in range(NBACKENDS)]
            for future in futures:
                started.append(future.result())
        extra = None
        if _port_free(MEMCACHED_PORT):
            try:
                extra = RedisServer(MEMCACHED_PORT).start()
                started.append(extra)
            except RuntimeError:
                extra = None
        yield Backends(started[:NBACKENDS], extra)
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(RedisServer.cleanup, started))


@pytest.fixture(params=PROXY_KINDS)
def proxy_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def flushall(servers: Sequence[RedisServer]) -> None:
    for server in servers:
        client = server.client()
        try:
            client.flushall()
        finally:
            client.close()


class Proxy:
    """A proxy of `kind` with `text` as its config, stopped by PID on exit."""

    def __init__(self, kind: str, text: str, listen_port: int) -> None:
        self.proc = PROXIES[kind](text)
        self.port = listen_port

    def __enter__(self) -> Self:
        try:
            self.proc.start(self.port)
        except Exception:
            self.proc.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.cleanup()


def disagreements(placed: dict[bytes, int], pool: ServerPool, index_to_backend: list[int | None],
                  now: float = 0.0) -> list[tuple[bytes, int | None, int]]:
    wrong = []
    for key, actual in placed.items():
        index = pool.route(key, now)
        model = index_to_backend[index] if index >= 0 else None
        if model != actual:
            wrong.append((key, model, actual))
    return wrong


def _check(kind: str, case: Case, backends: Backends) -> None:
    listen_port = free_port()
    text, conf, order = build(case, backends, listen_port)
    live = [backends.entry_backend(e) for e in case.entries if not e.dead]
    entry_to_backend = _entry_positions(case.entries)
    index_to_backend = [entry_to_backend[i] for i in order]
    flushall(live)
    keys = sorted(set(make_keys(case.nkeys, zlib.crc32(case.id.encode()), case.tag))
                  | set(case.extra_keys))
    with Proxy(kind, text, listen_port):
        placed = placement_through(listen_port, live, keys)
    wrong = disagreements(placed, ServerPool(conf), index_to_backend)
    assert not wrong, f"{len(wrong)}/{len(keys)} keys disagree (key, model, {kind}): {wrong[:10]}"


def _entry_positions(entries: list[Entry]) -> list[int | None]:
    """entry index -> index among the live backends of the case (None for a dead entry)."""
    out: list[int | None] = []
    n = 0
    for entry in entries:
        out.append(None if entry.dead else n)
        n += 0 if entry.dead else 1
    return out


# -- tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", HASH_CASES, ids=lambda c: c.id)
def test_hash_matrix(proxy_kind: str, case: Case, backends: Backends) -> None:
    _check(proxy_kind, case, backends)


@pytest.mark.parametrize("case", OTHER_CASES, ids=lambda c: c.id)
def test_placement(proxy_kind: str, case: Case, backends: Backends) -> None:
    _check(proxy_kind, case, backends)


def test_placement_after_ejection(proxy_kind: str, backends: Backends) -> None:
    """26 servers, one dead: once it is ejected, the 25 left get 156 points each."""
    case = Case("ketama-26-eject-1", [Entry(i) for i in range(25)] + [Entry(dead=True)],
                {"auto_eject_hosts": True, "server_failure_limit": 1,
                 "server_retry_timeout": 600000}, nkeys=4000)
    listen_port = free_port()
    text, conf, order = build(case, backends, listen_port)
    entry_to_backend = _entry_positions(case.entries)
    index_to_backend = [entry_to_backend[i] for i in order]
    dead = index_to_backend.index(None)
    pool = ServerPool(conf)
    keys = make_keys(case.nkeys, seed=26, tag=None)
    victim = next(k for k in keys if pool.route(k, 0.0) == dead)
    flushall(backends.servers)
    with Proxy(proxy_kind, text, listen_port):
        assert set_through(listen_port, [victim]) == [b"-ERR Connection refused"]
        assert pool.failure(dead, 0.0)
        placed = placement_through(listen_port, backends.servers, keys)
    wrong = disagreements(placed, pool, index_to_backend, now=1.0)
    assert not wrong, f"{len(wrong)}/{len(keys)} keys disagree after ejection: {wrong[:10]}"
