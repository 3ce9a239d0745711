"""The net layer's own CPU per request, in process: `python -m bench.micro [workload]`.

No sockets and no event loop: 50 clients and the servers of one pool (two for Redis, one for
memcache, as in `make bench`) are driven with the fake loop and transports of the unit tests
(tests/unit/test_speedups.py). One round: each client reads one request (16 at once for the
`_p16` workloads), the loop runs (flushes to the servers), each server reads the replies to
what it was sent, the loop runs (flushes to the clients). What is timed is the proxy's
user-space work per request (framing, routing, split and merge, pairing, flushing) plus a
small constant for the fakes; the kernel and uvloop are left out on purpose, so a change of
tens of nanoseconds shows, where `make bench` cannot see under a few percent.

Rule 1: a figure, never an assertion; run it in both modes to compare
        (`KEYSHARD_NO_EXTENSIONS=1 python -m bench.micro`).
Rule 2: best of 5 timings of `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from keyshard import speedups_in_use
from keyshard.net.client import ClientConn
from keyshard.prometheus import Latency
from tests.unit.test_speedups import _cmd, _Loop, _runtime, _Transport

CLIENTS = 50


def _key(i: int, width: int = 12) -> bytes:
    return b"key:%0*d" % (width, i * 7919)


# name -> (redis pool?, the request of client i, the reply to a request the server was sent)
WORKLOADS: dict[str, tuple[bool, Callable[[int], bytes], Callable[[Any], bytes]]] = {
    "get": (True, lambda i: _cmd(b"GET", _key(i)), lambda req: b"$3\r\nabc\r\n"),
    "mget": (True, lambda i: _cmd(b"MGET", *[_key(i * 10 + j) for j in range(10)]),
             lambda req: b"*%d\r\n" % (req.raw.count(b"$") - 1)
             + b"$3\r\nabc\r\n" * (req.raw.count(b"$") - 1)),
    "mc_get": (False, lambda i: b"get %s\r\n" % _key(i, 46),
               lambda req: b"VALUE %s 0 3\r\nabc\r\nEND\r\n" % req.key),
    "mc_set": (False, lambda i: b"set %s 0 0 112\r\n%s\r\n" % (_key(i, 46), b"v" * 112),
               lambda req: b"STORED\r\n"),
    "get_p16": (True, lambda i: b"".join(_cmd(b"GET", _key(i * 16 + j)) for j in range(16)),
                lambda req: b"$3\r\nabc\r\n"),
    "set_p16": (True, lambda i: b"".join(_cmd(b"SET", _key(i * 16 + j), b"abc")
                                         for j in range(16)),
                lambda req: b"+OK\r\n"),
}
DEPTH = {"get_p16": 16, "set_p16": 16}  # requests in one client read (1 if not named)


class _Sink:
    """A transport that takes writes and drops them (a counter, so the write is not free)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> None:
        self.n += 1

    def writelines(self, bufs: list[bytes]) -> None:
        self.n += 1

    def is_closing(self) -> bool:
        return False


def _pool(redis: bool, timeout: float, conns: int,
          metrics: bool = False) -> tuple[Any, _Loop, list[Any]]:
    """The pools of `make bench`: two redis-servers, one memcached (with a `timeout` in
    seconds, as `python -m bench --timeout`; the fake loop's timers never fire), `conns`
    connections to each (server_connections), with the latency histograms of
    `--metrics-addr` if `metrics`."""
    rt, loop, servers = _runtime(2 if redis else 1, redis=redis, per_server=conns)
    if metrics:
        rt.latency = Latency()
    for server in servers:
        server.transport = _Sink()
        server.timeout = timeout
    return rt, loop, servers


def measure(name: str, rounds: int, timeout: float = 0.0, conns: int = 1,
            metrics: bool = False) -> float:
    """Nanoseconds of user time per request (best of 5). With several connections per server
    the requests a connection gets change from round to round: its replies are made anew
    each round, and that cost is in the figure."""
    redis, request, reply = WORKLOADS[name]
    rt, loop, servers = _pool(redis, timeout, conns, metrics)
    clients = []
    for _ in range(CLIENTS):
        client = ClientConn(rt)
        client.connection_made(_Transport())  # type: ignore[arg-type]
        client.transport = _Sink()
        clients.append(client)
    reqs = [request(i) for i in range(CLIENTS)]
    answers: dict[int, bytes] = {}  # the same requests reach the same servers every round

    def one_round() -> None:
        for client, raw in zip(clients, reqs):
            client.data_received(raw)
        loop.run()
        for n, server in enumerate(servers):
            if server.outq:
                if n not in answers or conns > 1:
                    answers[n] = b"".join(reply(req) for req in server.outq)
                server.data_received(answers[n])
        loop.run()

    for _ in range(50):
        one_round()
    assert all(not c.queue and not c.closing for c in clients), "a request was not answered"
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            one_round()
        best = min(best, time.perf_counter() - start)
    return best / rounds / (CLIENTS * DEPTH.get(name, 1)) * 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n\n")[0])
    ap.add_argument("workloads", nargs="*", help=f"of {', '.join(WORKLOADS)} (default: all)")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--timeout", type=int, default=0, metavar="MS",
                    help="the pool's timeout (default: none)")
    ap.add_argument("--conns", type=int, default=1, metavar="N",
                    help="the pool's server_connections (default: 1)")
    ap.add_argument("--metrics", action="store_true",
                    help="observe latency, as keyshard --metrics-addr does")
    a = ap.parse_args(argv)
    unknown = [w for w in a.workloads if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload {unknown[0]!r}")
    mode = "compiled" if speedups_in_use() else "pure Python"
    for name in a.workloads or WORKLOADS:
        ns = measure(name, a.rounds, a.timeout / 1000.0, a.conns, a.metrics)
        print(f"{name:8} {ns:8.0f} ns per request ({mode}"
              + (f", timeout {a.timeout} ms" if a.timeout else "")
              + (", latency metrics" if a.metrics else "")
              + (f", {a.conns} connections per server)" if a.conns > 1 else ")"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
