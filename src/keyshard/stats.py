"""Counters kept by the data path, per pool and per server.

Rule 1: the data path only increments plain attributes (no locks, no dict lookups, no
        formatting); documents are rendered when someone asks.
Rule 2: gauges that are a queue's length (in_queue, out_queue and their bytes, client and
        server connections) are read from the live connections when a document is rendered,
        so they cost nothing per request and are always fresh.
"""

from __future__ import annotations

# Counters the data path increments (the gauges of Rule 2 are computed, not stored).
POOL_COUNTERS = ("client_eof", "client_err", "server_ejects", "forward_error", "fragments")
SERVER_COUNTERS = (
    "server_eof",
    "server_err",
    "server_timedout",
    "server_ejected_at",
    "requests",
    "request_bytes",
    "responses",
    "response_bytes",
)


class PoolStats:
    __slots__ = POOL_COUNTERS + ("total_clients",)

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class ServerStats:
    __slots__ = SERVER_COUNTERS + ("total_connections",)

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)
