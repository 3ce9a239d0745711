"""The stats metric table: every pool and server metric nutcracker 0.5.0 reports.

This module owns the names, types and descriptions of the metrics, and the `-D`
(`--describe-stats`) text derived from them. It does no I/O and keeps no counters: the data
path (stats.py) counts, the stats server renders; both take names and order from here.

Rule 1: the order of POOL_METRICS and SERVER_METRICS is nutcracker's order; it is the order
        of the keys in the stats JSON and of the `-D` listing.
Rule 2: descriptions are nutcracker's `-D` text byte for byte; `describe_stats()` renders
        them with nutcracker's layout ("  %-20s\\"%s\\"").
Rule 3: a metric's type is one of COUNTER (only grows), GAUGE (goes up and down) or
        TIMESTAMP (microseconds since the epoch, 0 = never).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

COUNTER: Final = "counter"
GAUGE: Final = "gauge"
TIMESTAMP: Final = "timestamp"

POOL: Final = "pool"
SERVER: Final = "server"


@dataclass(frozen=True)
class Metric:
    name: str
    type: str  # COUNTER, GAUGE or TIMESTAMP
    description: str  # as nutcracker's -D prints it
    scope: str  # POOL or SERVER


def _pool(name: str, kind: str, description: str) -> Metric:
    return Metric(name, kind, description, POOL)


def _server(name: str, kind: str, description: str) -> Metric:
    return Metric(name, kind, description, SERVER)


POOL_METRICS: Final[tuple[Metric, ...]] = (
    _pool("client_eof", COUNTER, "# eof on client connections"),
    _pool("client_err", COUNTER, "# errors on client connections"),
    _pool("client_connections", GAUGE, "# active client connections"),
    _pool("server_ejects", COUNTER, "# times backend server was ejected"),
    _pool("forward_error", COUNTER, "# times we encountered a forwarding error"),
    _pool("fragments", COUNTER, "# fragments created from a multi-vector request"),
)

SERVER_METRICS: Final[tuple[Metric, ...]] = (
    _server("server_eof", COUNTER, "# eof on server connections"),
    _server("server_err", COUNTER, "# errors on server connections"),
    _server("server_timedout", COUNTER, "# timeouts on server connections"),
    _server("server_connections", GAUGE, "# active server connections"),
    _server("server_ejected_at", TIMESTAMP,
            "timestamp when server was ejected in usec since epoch"),
    _server("requests", COUNTER, "# requests"),
    _server("request_bytes", COUNTER, "total request bytes"),
    _server("responses", COUNTER, "# responses"),
    _server("response_bytes", COUNTER, "total response bytes"),
    _server("in_queue", GAUGE, "# requests in incoming queue"),
    _server("in_queue_bytes", GAUGE, "current request bytes in incoming queue"),
    _server("out_queue", GAUGE, "# requests in outgoing queue"),
    _server("out_queue_bytes", GAUGE, "current request bytes in outgoing queue"),
)

POOL_METRIC_NAMES: Final[tuple[str, ...]] = tuple(m.name for m in POOL_METRICS)
SERVER_METRIC_NAMES: Final[tuple[str, ...]] = tuple(m.name for m in SERVER_METRICS)


def metric(scope: str, name: str) -> Metric:
    """The metric `name` of `scope` (POOL or SERVER); KeyError if there is none."""
    table = POOL_METRICS if scope == POOL else SERVER_METRICS
    for entry in table:
        if entry.name == name:
            return entry
    raise KeyError(f"no {scope} metric {name!r}")


def _describe_lines(title: str, metrics: tuple[Metric, ...]) -> list[str]:
    return [f"{title} stats:"] + [f'  {m.name:<20}"{m.description}"' for m in metrics]


def describe_stats() -> str:
    """The metric part of `-D`, exactly as nutcracker prints it after its banner."""
    lines = _describe_lines(POOL, POOL_METRICS) + [""] + _describe_lines(SERVER, SERVER_METRICS)
    return "\n".join(lines) + "\n"
