"""`--metrics-addr`: Prometheus text exposition, checked with Prometheus' own parser.

- scraped while clients load the proxy: every scrape parses with prometheus_client's
  `text_string_to_metric_families`, counters never go back, the latency histogram grows;
- once the load stops, every counter and gauge equals the JSON stats document's;
- the exposition escapes awkward names, and the histogram has `le` semantics;
- HTTP: 404 / 405 / HEAD, and no endpoint (and no latency hook) unless asked for.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from keyshard import app, prometheus
from keyshard.cli import Options
from keyshard.config import parse_config
from keyshard.metrics import POOL_METRICS, SERVER_METRICS
from keyshard.prometheus import BOUNDS, LATENCY, Latency, metric_name
from keyshard.protocol.redis import CODEC as REDIS
from tests.support.procs import free_port, pool_yaml
from tests.support.rig import Rig, exchange, resp

Families = dict[str, Any]


def scrape(port: int, path: str = "/metrics") -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def parse(text: bytes) -> Families:
    return {f.name: f for f in text_string_to_metric_families(text.decode("utf-8"))}


def samples(families: Families, sample_name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in families.values():
        for s in family.samples:
            if s.name == sample_name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    port = free_port()
    with Rig("keyshard", 2, extra=["--metrics-addr", f"127.0.0.1:{port}"]) as r:
        r.metrics_port = port  # type: ignore[attr-defined]
        yield r


def round_trip(sock: Any, batch: bytes, nreplies: int) -> None:
    """Send one pipeline and read its `nreplies` replies."""
    sock.sendall(batch)
    parser, got = REDIS.reply_parser(), 0
    while got < nreplies:
        chunk = sock.recv(65536)
        assert chunk, "the proxy closed the connection"
        got += len(parser.feed(chunk))


def load(rig: Rig, stop: threading.Event, counts: list[int]) -> None:
    """Pipelines of SET/GET and an MGET over both servers until told to stop."""
    batch = b"".join(resp("SET", f"key:{i}", "v") + resp("GET", f"key:{i}") for i in range(20))
    batch += resp("MGET", *[f"key:{i}" for i in range(5)])
    n = 0
    with rig.connect() as sock:
        while not stop.is_set() and n < 100_000:
            round_trip(sock, batch, 41)
            n += 1
    counts.append(n)


def test_scraped_during_load(rig: Rig) -> None:
    port = rig.metrics_port  # type: ignore[attr-defined]
    stop = threading.Event()
    counts: list[int] = []
    workers = [threading.Thread(target=load, args=(rig, stop, counts)) for _ in range(2)]
    for w in workers:
        w.start()
    scrapes = []
    try:
        for _ in range(6):
            time.sleep(0.25)
            status, content_type, body = scrape(port)
            assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
            scrapes.append(parse(body))
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert len(counts) == 2 and min(counts) > 0
    requests = [sum(samples(f, "keyshard_server_requests_total").values()) for f in scrapes]
    assert requests == sorted(requests) and requests[-1] > requests[0] > 0  # never backwards
    gets = [samples(f, LATENCY + "_count")[(("command", "get"), ("pool", "alpha"))]
            for f in scrapes]
    assert gets == sorted(gets) and gets[-1] > gets[0]
    last = scrapes[-1]
    assert last[LATENCY].type == "histogram"
    commands = {dict(k)["command"] for k in samples(last, LATENCY + "_count")}
    assert {"set", "get", "mget"} <= commands
    for family in scrapes:  # buckets are cumulative and end in +Inf == count
        for key, count in samples(family, LATENCY + "_count").items():
            buckets = [v for k, v in samples(family, LATENCY + "_bucket").items()
                       if tuple(x for x in k if x[0] != "le") == key]
            assert buckets == sorted(buckets) and buckets[-1] == count
            assert len(buckets) == len(BOUNDS) + 1


def test_every_reply_is_counted_once(rig: Rig) -> None:
    """Each reply written is one observation of its command, forwarded, split or answered by
    the proxy itself (PING), whichever path (compiled or reference) wrote it."""
    port = rig.metrics_port  # type: ignore[attr-defined]

    def counts() -> dict[str, float]:
        got = samples(parse(scrape(port)[2]), LATENCY + "_count")
        return {dict(k)["command"]: v for k, v in got.items() if dict(k)["pool"] == "alpha"}

    before = counts()
    batch = b"".join(resp("SET", f"once:{i}", "v") + resp("GET", f"once:{i}") for i in range(7))
    batch += resp("MGET", *[f"once:{i}" for i in range(7)]) + resp("PING")
    rounds = 25
    with rig.connect() as sock:
        for _ in range(rounds):
            round_trip(sock, batch, 16)
    after = counts()
    delta = {cmd: after[cmd] - before.get(cmd, 0) for cmd in after}
    assert {cmd: d for cmd, d in delta.items() if d} == {
        "set": 7 * rounds, "get": 7 * rounds, "mget": rounds, "ping": rounds}


def test_counters_equal_the_stats_document(rig: Rig) -> None:
    port = rig.metrics_port  # type: ignore[attr-defined]
    rig.exchange(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$1\r\n1\r\n*3\r\n$4\r\nMGET\r\n$1\r\nx\r\n$1\r\ny\r\n")
    # quiet now: the JSON document and /metrics must agree on every value
    doc = json.loads(exchange(rig.proxy.stats_port, b""))
    families = parse(scrape(port)[2])
    pool = doc["alpha"]
    for metric in POOL_METRICS:
        got = samples(families, metric_name(metric))
        assert got == {(("pool", "alpha"),): pool[metric.name]}, metric.name
    for metric in SERVER_METRICS:
        got = samples(families, metric_name(metric))
        scale = 1e6 if metric.type == "timestamp" else 1
        want = {(("pool", "alpha"), ("server", s)): pool[s][metric.name] / scale
                for s in ("s0", "s1")}
        assert got == want, metric.name
    assert samples(families, "keyshard_connections_opened_total") == {
        (): doc["total_connections"]}
    assert samples(families, "keyshard_connections_open") == {(): doc["curr_connections"]}
    assert pool["fragments"] > 0 and pool["client_connections"] == 0


def test_http_answers(rig: Rig) -> None:
    port = rig.metrics_port  # type: ignore[attr-defined]
    assert scrape(port, "/")[0] == 404
    assert scrape(port, "/metrics?name[]=x")[0] == 200
    reply = exchange(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 405 ")
    head = exchange(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert exchange(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")


# --------------------------------------------------------------------------------------------
# The exposition itself, without a process


class FakeSource:
    start_time = 0.0

    def __init__(self, views: list[Any]) -> None:
        self.views = views

    def pool_views(self) -> list[Any]:
        return self.views

    def connection_counts(self) -> tuple[int, int]:
        return 7, 3


def test_awkward_names_round_trip() -> None:
    pool_values = {m.name: i for i, m in enumerate(POOL_METRICS)}
    server_values = {m.name: 10 + i for i, m in enumerate(SERVER_METRICS)}
    server_values["server_ejected_at"] = 1_700_000_000_250_000
    names = ['we"ird\\pool', "multi\nline"]
    source = FakeSource([(names[0], pool_values, [(names[1], server_values)])])
    latency = Latency()
    latency.observe(b"get", 0.0001)  # on a bound: counted in that bucket (le)
    latency.observe(b"get", 0.00010001)
    latency.observe(b"get", 99.0)  # beyond the last bound: +Inf only
    families = parse(prometheus.render(source, [(names[0], latency)], now=12.5))
    assert samples(families, "keyshard_uptime_seconds") == {(): 12}
    assert samples(families, "keyshard_server_ejected_at_seconds") == {
        (("pool", names[0]), ("server", names[1])): 1_700_000_000.25}
    key = (("command", "get"), ("pool", names[0]))
    buckets = {dict(k)["le"]: v for k, v in samples(families, LATENCY + "_bucket").items()}
    assert (buckets["5e-05"], buckets["0.0001"], buckets["0.00025"], buckets["10.0"],
            buckets["+Inf"]) == (0, 1, 2, 2, 3)
    assert samples(families, LATENCY + "_count") == {key: 3}
    assert samples(families, LATENCY + "_sum")[key] == pytest.approx(99.00020001)
    assert families["keyshard_pool_client_eof"].type == "counter"
    assert families["keyshard_server_in_queue"].type == "gauge"


def test_no_endpoint_and_no_hook_unless_asked() -> None:
    pools = parse_config(pool_yaml("alpha", free_port(), ["127.0.0.1:1:1 s"], redis=True),
                         "t.yml")
    loop = asyncio.new_event_loop()
    try:
        plain = app.Proxy(Options(), pools, loop)
        assert all(r.latency is None for r in plain.runtimes) and plain.latencies == []
        wanted = app.Proxy(Options(metrics_addr=("127.0.0.1", free_port())), pools, loop)
        assert all(r.latency is not None for r in wanted.runtimes)
    finally:
        loop.close()
