"""Prometheus metrics (`--metrics-addr HOST:PORT`): keyshard's own addition to nutcracker.

This module owns the per-command latency histograms, the text exposition of every stats
counter, and the small HTTP server that serves it at `/metrics`.

Rule 1: names and help come from the metric table (`metrics.py`), so the JSON stats document
        and `/metrics` always show the same counters: `keyshard_pool_<name>{pool=}` and
        `keyshard_server_<name>{pool=,server=}` (a server metric's own `server_` prefix is
        dropped: `server_eof` -> `keyshard_server_eof_total`). Counters end in `_total`;
        `server_ejected_at` is exported in seconds, as Prometheus wants.
Rule 2: values are read when someone scrapes, from the same views the JSON document uses;
        nothing is kept twice.
Rule 3: the latency hook is the only per-request cost: one dict lookup, one bisect on a fixed
        tuple of bounds, two updates (C integers and a C double in the compiled twin, which
        the compiled net layer calls as a C function). No locks (one event loop thread), no
        objects per request. Commands come from the codecs' command tables, so the label set
        is bounded.
Rule 4: the HTTP side is deliberately tiny: one request per connection (GET or HEAD), the
        answer, close. `/metrics` is 200, any other path 404, any other method 405; a request
        head over `MAX_HEAD` bytes or slower than `IDLE_TIMEOUT` seconds is dropped.
"""

from __future__ import annotations

import asyncio
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from keyshard import speedups_enabled
from keyshard.metrics import COUNTER, POOL_METRICS, SERVER, SERVER_METRICS, TIMESTAMP, Metric

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD: Final = 8192
IDLE_TIMEOUT: Final = 10.0

# Upper bounds (seconds) of the latency buckets: 50 µs .. 10 s, a 1-2.5-5 ladder.
BOUNDS: Final[tuple[float, ...]] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
NBUCKETS: Final = len(BOUNDS) + 1  # the last one is +Inf
LATENCY: Final = "keyshard_request_duration_seconds"


# --------------------------------------------------------------------------------------------
# Latency histograms (Rule 3)


class LatencyRows:
    """A pool's latency counts: `observe(cmd, seconds)` for every reply written (Rule 3), and
    `rows[cmd]`, a plain list: a non-cumulative count per bound and +Inf, then the sum of the
    observed seconds. The compiled twin (`keyshard._netfast.LatencyRows`, when built and not
    disabled) keeps the counts as C integers, and the compiled net layer adds to them without
    a Python call."""

    __slots__ = ("bounds", "rows")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.rows: dict[bytes, list[Any]] = {}

    def observe(self, cmd: bytes, seconds: float) -> None:
        row = self.rows.get(cmd)
        if row is None:
            row = self.rows[cmd] = [0] * (len(self.bounds) + 1) + [0.0]
        row[bisect_left(self.bounds, seconds)] += 1  # le semantics: bound >= value
        row[-1] += seconds


PyLatencyRows = LatencyRows  # the reference (tests)
if speedups_enabled():
    try:
        from keyshard._netfast import LatencyRows  # type: ignore[no-redef]  # twin
    except ImportError:
        pass


class Latency(LatencyRows):
    """Per-command latency histogram of one pool, on the buckets of `BOUNDS`."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(BOUNDS)

    def snapshot(self) -> Iterator[tuple[str, list[int], float]]:
        """(command, cumulative bucket counts, sum) for every command seen, sorted."""
        for cmd in sorted(self.rows):
            row = self.rows[cmd]
            cumulative, total = [], 0
            for count in row[:NBUCKETS]:
                total += count
                cumulative.append(total)
            yield cmd.decode("latin-1"), cumulative, float(row[-1])


# --------------------------------------------------------------------------------------------
# Exposition (Rules 1, 2)


def metric_name(metric: Metric) -> str:
    """The Prometheus name of a stats metric (Rule 1)."""
    name = metric.name
    if metric.scope == SERVER and name.startswith("server_"):
        name = name[len("server_"):]
    base = f"keyshard_{metric.scope}_{name}"
    if metric.type == COUNTER:
        return base + "_total"
    if metric.type == TIMESTAMP:
        return base + "_seconds"
    return base


def metric_help(metric: Metric) -> str:
    if metric.type == TIMESTAMP:
        return metric.description.replace("in usec", "in seconds") + ", 0 if never"
    return metric.description


def metric_type(metric: Metric) -> str:
    return "counter" if metric.type == COUNTER else "gauge"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _family(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {_escape_help(text)}", f"# TYPE {name} {kind}"]


PoolView = tuple[str, dict[str, int], Iterable[tuple[str, dict[str, int]]]]


def _stats_lines(views: list[PoolView]) -> Iterator[str]:
    for metric in POOL_METRICS:
        name = metric_name(metric)
        yield from _family(name, metric_type(metric), metric_help(metric))
        for pool, values, _servers in views:
            yield f"{name}{{{_labels(pool=pool)}}} {values[metric.name]}"
    for metric in SERVER_METRICS:
        name = metric_name(metric)
        yield from _family(name, metric_type(metric), metric_help(metric))
        scale = 1_000_000 if metric.type == TIMESTAMP else 1
        for pool, _values, servers in views:
            for server, svalues in servers:
                value = svalues[metric.name]
                shown = _number(value / scale) if scale != 1 else str(value)
                yield f"{name}{{{_labels(pool=pool, server=server)}}} {shown}"


def _latency_lines(latencies: Iterable[tuple[str, Latency]]) -> Iterator[str]:
    yield from _family(LATENCY, "histogram",
                       "seconds from reading a request to writing its reply, per pool and command")
    les = [_number(b) for b in BOUNDS] + ["+Inf"]
    for pool, latency in latencies:
        for cmd, cumulative, total in latency.snapshot():
            labels = _labels(pool=pool, command=cmd)
            for le, count in zip(les, cumulative):
                yield f'{LATENCY}_bucket{{{labels},le="{le}"}} {count}'
            yield f"{LATENCY}_sum{{{labels}}} {_number(total)}"
            yield f"{LATENCY}_count{{{labels}}} {cumulative[-1]}"


def render(source: Any, latencies: Iterable[tuple[str, Latency]] = (),
           now: float | None = None) -> bytes:
    """The exposition text of `source` (an `app.Proxy`: pool_views, connection_counts,
    start_time) and of the latency histograms, as (pool name, Latency) pairs."""
    now = time.time() if now is None else now
    total, curr = source.connection_counts()
    lines = _family("keyshard_uptime_seconds", "gauge", "seconds since keyshard started")
    lines.append(f"keyshard_uptime_seconds {int(now - source.start_time)}")
    lines += _family("keyshard_connections_opened_total", "counter",
                     "connections ever made: listeners, clients and servers "
                     "(total_connections)")
    lines.append(f"keyshard_connections_opened_total {total}")
    lines += _family("keyshard_connections_open", "gauge",
                     "connections open now: listeners, clients and servers (curr_connections)")
    lines.append(f"keyshard_connections_open {curr}")
    lines.extend(_stats_lines(list(source.pool_views())))
    lines.extend(_latency_lines(latencies))
    return ("\n".join(lines) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------
# HTTP (Rule 4)


def _response(status: str, body: bytes, content_type: str, head_only: bool) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")
    return head if head_only else head + body


def answer(head: bytes, render_metrics: Callable[[], bytes]) -> bytes:
    """The whole HTTP response to a request head (request line and headers)."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response("400 Bad Request", b"bad request\n", "text/plain", False)
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"only GET and HEAD\n", "text/plain", False)
    head_only = method == "HEAD"
    if target != "/metrics":
        return _response("404 Not Found", b"see /metrics\n", "text/plain", head_only)
    return _response("200 OK", render_metrics(), CONTENT_TYPE, head_only)


class MetricsProtocol(asyncio.Protocol):
    """One HTTP request per connection: read the head, answer, close."""

    def __init__(self, render_metrics: Callable[[], bytes], loop: asyncio.AbstractEventLoop):
        self.render_metrics = render_metrics
        self.loop = loop
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = self.loop.call_later(IDLE_TIMEOUT, self._drop)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._reply(_response("431 Request Header Fields Too Large", b"",
                                      "text/plain", False))
            return
        self._reply(answer(self.buf[:end], self.render_metrics))

    def _reply(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self.transport.close()

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None
