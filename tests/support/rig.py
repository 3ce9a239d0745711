"""A proxy with its own backends, and raw-socket exchanges with it.

`Rig("keyshard", nbackends=2)` starts two redis-servers (or memcacheds) and a proxy in front
of them. Differential tests build one rig per proxy kind over identical, separate backends and
compare what a client receives, byte for byte.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from typing import Any, Self

from tests.support.procs import Keyshard, Memcached, Nutcracker, RedisServer, free_port, pool_yaml

PROXIES = {"keyshard": Keyshard, "nutcracker": Nutcracker}


class Rig:
    def __init__(self, kind: str, nbackends: int = 2, redis: bool = True, verbose: int = 4,
                 extra: list[str] | None = None, **pool_opts: Any) -> None:
        self.kind = kind
        self.redis = redis
        backend = RedisServer if redis else Memcached
        self.backends: list[Any] = [backend().start() for _ in range(nbackends)]
        self.port = free_port()
        opts = {"hash": "fnv1a_64", "distribution": "ketama", "redis": redis}
        opts.update(pool_opts)
        # explicit names: placement is then the same for every rig, whatever its ports
        servers = [f"{b.addr}:1 s{i}" for i, b in enumerate(self.backends)]
        self.conf = pool_yaml("alpha", self.port, servers, **opts)
        self.proxy = PROXIES[kind](self.conf, verbose=verbose, extra=extra)
        try:
            self.proxy.start(self.port)
        except Exception:
            self.close()
            raise

    def exchange(self, payload: bytes, timeout: float = 10.0) -> bytes:
        return exchange(self.port, payload, timeout)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def flush_backends(self) -> None:
        for b in self.backends:
            if isinstance(b, RedisServer):
                b.client().flushall()
            else:
                exchange(b.port, b"flush_all\r\n")

    def close(self) -> None:
        self.proxy.cleanup()
        for b in self.backends:
            b.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exchange(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send `payload`, half-close, and return everything received until the proxy closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return read_until_eof(sock, timeout)
    finally:
        sock.close()


def read_until_eof(sock: socket.socket, timeout: float = 10.0) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def read_exactly(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while len(buf) < n and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def resp(*args: bytes | str | int) -> bytes:
    """Encode one command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, int):
            a = str(a)
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def first_difference(a: bytes, b: bytes, context: int = 120) -> str:
    """Where two byte streams part, with some context, for assertion messages."""
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, n - context)
    return (f"differ at byte {n} (lengths {len(a)}, {len(b)}):\n"
            f"  first:  {a[lo:n + context]!r}\n  second: {b[lo:n + context]!r}")


def read_replies(rig: Rig, sock: socket.socket, count: int, timeout: float = 10.0) -> bytes:
    """Read until `count` complete replies arrived (framed by keyshard's own reply parser)."""
    if rig.redis:
        from keyshard.protocol.redis import CODEC
    else:
        from keyshard.protocol.memcache import CODEC  # type: ignore[assignment]
    parser = CODEC.reply_parser()
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(262144)
        if not chunk:
            break
        got += parser.feed(chunk)
    return b"".join(got)


def replies_then_tail(rig: Rig, payload: bytes, count: int, tail: bytes) -> bytes:
    """Send a pipeline and read its `count` replies; then send `tail` and read until close.

    The tail (a rejected request) goes out only after the replies are in: nutcracker closes
    a client at a rejected request without answering the requests that arrived in the same
    read, keyshard answers them first (README, differences).
    """
    with rig.connect() as sock:
        sock.sendall(payload)
        got = read_replies(rig, sock, count)
        if tail:
            sock.sendall(tail)
        sock.shutdown(socket.SHUT_WR)
        return got + b"|" + read_until_eof(sock)


def stream_differences(nut: Rig, ks: Rig,
                       streams: Iterable[tuple[int, bytes, int, bytes]]) -> list[str]:
    """Run each (seed, payload, count, tail) through both proxies on flushed backends."""
    differences = []
    for seed, payload, count, tail in streams:
        nut.flush_backends()
        ks.flush_backends()
        a = replies_then_tail(nut, payload, count, tail)
        b = replies_then_tail(ks, payload, count, tail)
        if a != b:
            differences.append(f"seed {seed}: {first_difference(a, b)}")
    return differences


def assert_cut_everywhere(rig: Rig, stream: bytes, expected: bytes) -> None:
    """The same stream, cut in two at every byte boundary, gets the same replies."""
    for i in range(1, len(stream)):
        with rig.connect() as s:
            s.sendall(stream[:i])
            time.sleep(0.002)
            s.sendall(stream[i:])
            assert read_exactly(s, len(expected)) == expected, f"cut at byte {i}"


def redis_client(port: int, **kw: Any) -> Any:
    """A redis-py client that sends no CLIENT SETINFO on connect (nutcracker closes on it)."""
    import redis

    try:
        return redis.Redis(port=port, protocol=2, driver_info=None, **kw)
    except TypeError:  # redis-py before 7: no driver_info
        return redis.Redis(port=port, protocol=2, lib_name=None, lib_version=None, **kw)
