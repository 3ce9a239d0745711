"""Stats: the counters the data path keeps, and nutcracker's JSON stats document.

Names, order and types come from `metrics.py` (the metric table); this module counts and
renders.

Rule 1: the data path only increments plain attributes (no locks, no dict lookups, no
        formatting); documents are rendered when someone asks, so they are always fresh
        (nutcracker's lag of one aggregation interval does not exist here).
Rule 2: gauges (client_connections, server_connections, in_queue, out_queue and their bytes)
        are read from the live connections when a document is rendered: they cost nothing per
        request.
Rule 3: the document has nutcracker's exact layout: the same top-level fields, pools and
        servers in config order (already sorted as nutcracker sorts them), the same field names
        in the same order, `", "` separators, a newline at the end.
Rule 4: `fragments` counts the fragments split commands create. nutcracker 0.5.0 declares
        it but never increments it; keyshard counts on purpose (the one counter that differs).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from keyshard import speedups_enabled
from keyshard.metrics import COUNTER, POOL_METRICS, SERVER_METRICS, TIMESTAMP

POOL_COUNTERS = tuple(m.name for m in POOL_METRICS if m.type in (COUNTER, TIMESTAMP))
SERVER_COUNTERS = tuple(m.name for m in SERVER_METRICS if m.type in (COUNTER, TIMESTAMP))


class PoolCounters:
    """A pool's counters as slots; the compiled twin (`keyshard._netfast`, when built and not
    disabled) has them as C integers, which its hot loops add to without a lookup."""

    __slots__ = POOL_COUNTERS
    # The slots' types, for the type checker: annotations only (no class attribute, so the
    # slots above stay the storage); the tests hold them to the metric table.
    client_eof: int
    client_err: int
    server_ejects: int
    forward_error: int
    fragments: int


class ServerCounters:
    """A server's counters (as `PoolCounters`)."""

    __slots__ = SERVER_COUNTERS
    # as in PoolCounters; server_ejected_at is in microseconds since the epoch (0 = never)
    server_eof: int
    server_err: int
    server_timedout: int
    server_ejected_at: int
    requests: int
    request_bytes: int
    responses: int
    response_bytes: int


PyPoolCounters, PyServerCounters = PoolCounters, ServerCounters  # the references (tests)
if speedups_enabled():
    try:
        from keyshard._netfast import (  # type: ignore[no-redef]  # twins: same counters
            PoolCounters,
            ServerCounters,
        )
    except ImportError:
        pass


class PoolStats(PoolCounters):
    __slots__ = ()
    names = POOL_COUNTERS

    def __init__(self) -> None:
        for name in self.names:
            setattr(self, name, 0)


class ServerStats(ServerCounters):
    __slots__ = ()
    names = SERVER_COUNTERS

    def __init__(self) -> None:
        for name in self.names:
            setattr(self, name, 0)


class Source(Protocol):
    """What the renderer needs from a running proxy (implemented by `app.Proxy`)."""

    start_time: float

    def pool_views(self) -> Iterable[tuple[str, dict[str, int], Iterable[tuple[str, dict[str, int]]]]]:
        ...

    def connection_counts(self) -> tuple[int, int]:
        ...


def _fields(values: dict[str, int], names: Iterable[str]) -> Iterator[str]:
    for name in names:
        yield f'"{name}":{values[name]}'


def render(source: Source, service: str = "keyshard", version: str = "",
           now: float | None = None) -> bytes:
    """The stats document, byte for byte in nutcracker's layout (Rule 3)."""
    now = time.time() if now is None else now
    total, curr = source.connection_counts()
    head = (f'"service":"{service}", "source":"{socket.gethostname()}", "version":"{version}", '
            f'"uptime":{int(now - source.start_time)}, "timestamp":{int(now)}, '
            f'"total_connections":{total}, "curr_connections":{curr}, ')
    pools = []
    pool_names = [m.name for m in POOL_METRICS]
    server_names = [m.name for m in SERVER_METRICS]
    for name, pool_values, servers in source.pool_views():
        body = "".join(f + ", " for f in _fields(pool_values, pool_names))
        rendered = [f'"{sname}": {{' + ", ".join(_fields(svalues, server_names)) + "}"
                    for sname, svalues in servers]
        pools.append(f'"{name}": {{' + body + ",".join(rendered) + "}")
    return ("{" + head + ",".join(pools) + "}\n").encode()


def counters(obj: Any) -> dict[str, int]:
    return {name: getattr(obj, name) for name in obj.names}
