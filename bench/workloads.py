"""The workloads and how one run of one workload against one proxy is measured.

Rule 1: a run is bounded twice: by its request count N and by a wall-clock timeout after which
        the client is killed (redis-benchmark hangs forever on a proxy that stops answering).
Rule 2: a run never raises; it returns a Run, either with figures or with `error` set, so a
        broken proxy shows up as "failed" in the table.
Rule 3: proxy CPU is /proc utime+stime of the proxy's process tree, read right before the client
        starts and right after it exits, divided by the requests the client sent.
Rule 4: over the same interval, every process of the run is accounted per request
        (`extra["cpu_split_us"]`): the client (rusage of the reaped child), the backends
        (/proc, as the proxy) and the proxy's user and kernel time apart. That is where the
        machine's CPU went, which bounds what a faster proxy can still win.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import fleet, machine
from bench.fleet import ROOT, Proxy, tree_cpu_split, tree_cpu_ticks, tree_rss_kb, tree_socket_fds
from bench.parse import ParseError, parse_memcslap, parse_redis_benchmark_csv, ticks_to_us

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENTS = 50            # redis-benchmark -c and memcslap --concurrency
KEYSPACE = 100_000      # redis-benchmark -r
KEY = "key:__rand_int__"
IDLE_CONNS = 1000       # idle client connections held open in the idle1000 workload


@dataclass(frozen=True)
class Workload:
    name: str                 # what --only matches
    title: str                # row label in the table and the chart
    kind: str                 # "redis", "idle" or "memcache"
    args: tuple[str, ...]     # redis-benchmark test arguments, or ("get",) / ("set",) for memcslap
    warmup_n: int             # requests in the warm-up run (~0.5-1 s on nutcracker; sets N)
    keyspace: int = KEYSPACE


WORKLOADS: list[Workload] = [
    Workload("get_p1", "GET P1", "redis", ("-t", "get", "-P", "1"), 40_000),
    Workload("set_p1", "SET P1", "redis", ("-t", "set", "-P", "1"), 40_000),
    Workload("get_p16", "GET P16", "redis", ("-t", "get", "-P", "16"), 300_000),
    Workload("set_p16", "SET P16", "redis", ("-t", "set", "-P", "16"), 300_000),
    Workload("mget10", "MGET 10 keys", "redis", ("MGET", *[KEY] * 10), 20_000),
    # the same at depth 16: the proxy's split and merge, not the loopback, sets the pace
    Workload("mget10_p16", "MGET 10 keys P16", "redis", ("-P", "16", "MGET", *[KEY] * 10),
             100_000),
    Workload("idle1000", "GET P1 + 1000 idle", "idle", ("-t", "get", "-P", "1"), 40_000),
    # 4 KB values on a 10,000-key space: 40 MB per redis-server instead of 400 MB.
    Workload("set4k", "SET 4KB", "redis", ("-t", "set", "-d", "4096", "-P", "1"), 30_000,
             keyspace=10_000),
    Workload("mc_get", "memcache get", "memcache", ("get",), 30_000),
    Workload("mc_set", "memcache set", "memcache", ("set",), 30_000),
]


@dataclass
class Run:
    workload: str
    proxy: str
    n: int
    error: str | None = None
    rps: float | None = None
    p99_ms: float | None = None
    cpu_us_per_req: float | None = None
    rss_kb: int | None = None
    requests: int = 0
    seconds: float = 0.0
    cpu_ticks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunFailed(Exception):
    pass


@dataclass
class ClientResult:
    rps: float
    p99_ms: float | None
    requests: int


# ---- clients ---------------------------------------------------------------------------------

def _run_tool(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL, preexec_fn=fleet.pinned(fleet.CLIENT_CPUS))
    except subprocess.TimeoutExpired:
        raise RunFailed(f"{argv[0]} timed out after {timeout:.0f}s (killed)") from None


def _tail(text: str, n: int = 3) -> str:
    """The last lines a tool printed, without CSV rows and redis-benchmark's CONFIG warning."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()
             and not ln.startswith('"') and "Could not fetch server CONFIG" not in ln]
    return " | ".join(lines[-n:])


def redis_benchmark(port: int, w: Workload, n: int, timeout: float) -> ClientResult:
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(CLIENTS),
            "-r", str(w.keyspace), "-n", str(n), "--csv", *w.args]
    cp = _run_tool(argv, timeout)
    if cp.returncode != 0:
        raise RunFailed(f"redis-benchmark exit {cp.returncode}: {_tail(cp.stderr + cp.stdout)}")
    try:
        row = parse_redis_benchmark_csv(cp.stdout)[0]
    except ParseError as err:
        raise RunFailed(f"{err}: {_tail(cp.stderr)}") from None
    return ClientResult(row.rps, row.p99_ms, n)


def memcslap(port: int, w: Workload, n: int, timeout: float) -> ClientResult:
    per_thread = max(1, n // CLIENTS)
    argv = ["memcslap", f"--servers=127.0.0.1:{port}", f"--test={w.args[0]}",
            f"--concurrency={CLIENTS}", f"--execute-number={per_thread}"]
    cp = _run_tool(argv, timeout)
    text = cp.stdout + cp.stderr
    try:
        res = parse_memcslap(text)
    except ParseError as err:
        raise RunFailed(f"{err}: {_tail(text)}") from None
    if cp.returncode != 0 or res.errors:
        first = next((ln for ln in text.splitlines() if ln.startswith("Fatal")), "")
        raise RunFailed(f"memcslap exit {cp.returncode}, {res.errors} errors: {first[:160]}")
    if res.keys != per_thread * CLIENTS:
        raise RunFailed(f"memcslap did {res.keys} of {per_thread * CLIENTS} operations")
    return ClientResult(res.rps, None, res.requests)


def client_for(w: Workload) -> Callable[[int, Workload, int, float], ClientResult]:
    return memcslap if w.kind == "memcache" else redis_benchmark


def port_for(w: Workload, proxy: Proxy) -> int:
    return proxy.mc_port if w.kind == "memcache" else proxy.redis_port


# ---- probes: is the proxy answering at all? -----------------------------------------------------

_PROBES = {
    "redis": ((b"*3\r\n$3\r\nSET\r\n$11\r\nbench:probe\r\n$1\r\n1\r\n"
               b"*2\r\n$3\r\nGET\r\n$11\r\nbench:probe\r\n"), b"+OK\r\n$1\r\n1\r\n"),
    "memcache": (b"set bench:probe 0 0 1\r\n1\r\nget bench:probe\r\n",
                 b"STORED\r\nVALUE bench:probe 0 1\r\n1\r\nEND\r\n"),
}


def probe(port: int, kind: str, timeout: float = 3.0) -> None:
    """One SET and GET through the proxy, byte-exact, or RunFailed."""
    send, want = _PROBES["memcache" if kind == "memcache" else "redis"]
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(send)
            while len(got) < len(want):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
    except OSError as err:
        raise RunFailed(f"probe: {err}; got {got!r}") from None
    if got != want:
        raise RunFailed(f"probe: sent {send!r}, expected {want!r}, got {got!r}")


# ---- one measured run ------------------------------------------------------------------------

def measure(w: Workload, proxy: Proxy, n: int, timeout: float,
            others: tuple[int, ...] = ()) -> Run:
    """One run; `others` are the backends' PIDs (their CPU is ours, not foreign)."""
    run = Run(w.name, proxy.label, n)
    try:
        if not proxy.alive():
            raise RunFailed("proxy not running")
        if w.kind == "idle":
            _idle_run(w, proxy, n, timeout, others, run)
        else:
            probe(port_for(w, proxy), w.kind)
            _client_run(w, proxy, n, timeout, others, run)
    except RunFailed as err:
        run.error = str(err)
    if not proxy.alive():
        code = proxy.child.exit_code() if proxy.child else None
        run.error = f"proxy died (exit {code})" + (f"; {run.error}" if run.error else "")
        run.extra["proxy_log"] = proxy.child.log_tail() if proxy.child else ""
    return run


def _client_run(w: Workload, proxy: Proxy, n: int, timeout: float, others: tuple[int, ...],
                run: Run) -> None:
    pid, pids = proxy.pid, [proxy.pid, *others]
    snap0 = machine.snapshot(pids)
    acct0 = _accounts(pid, others)
    t0 = time.monotonic()
    res = client_for(w)(port_for(w, proxy), w, n, timeout)
    run.seconds = time.monotonic() - t0
    if not proxy.alive():
        raise RunFailed("proxy exited during the run")
    acct = [b - a for a, b in zip(acct0, _accounts(pid, others))]
    run.cpu_ticks = round(acct[2] + acct[3])
    run.extra.update(machine.disturbance(snap0, machine.snapshot(pids)))
    run.rss_kb = tree_rss_kb(pid)
    run.rps, run.p99_ms, run.requests = res.rps, res.p99_ms, res.requests
    run.cpu_us_per_req = ticks_to_us(run.cpu_ticks, CLK_TCK) / res.requests
    run.extra["cpu_split_us"] = {k: round(v * 1e6 / CLK_TCK / res.requests, 3)
                                 for k, v in zip(SPLIT_KEYS, acct)}


SPLIT_KEYS = ("client", "backends", "proxy_user", "proxy_kernel")


def _accounts(pid: int, others: tuple[int, ...]) -> tuple[float, float, float, float]:
    """CPU so far, in clock ticks (Rule 4): reaped children of this process (the client),
    the backends, the proxy's user and kernel time."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    backends = 0
    for o in others:
        try:
            backends += tree_cpu_ticks(o)
        except (OSError, ValueError):   # a backend that died: its CPU is lost with it
            pass
    user, kernel = tree_cpu_split(pid)
    return (ru.ru_utime + ru.ru_stime) * CLK_TCK, float(backends), float(user), float(kernel)


def _idle_run(w: Workload, proxy: Proxy, n: int, timeout: float, others: tuple[int, ...],
              run: Run) -> None:
    """Fresh proxy, RSS, open N idle connections, RSS, one PING on each, RSS, GET load with
    them held, RSS."""
    idle = IDLE_CONNS
    proxy.stop()          # a fresh process: free lists of a previous run would hide the cost
    try:
        proxy.start()
    except RuntimeError as err:
        raise RunFailed(str(err)) from None
    probe(proxy.redis_port, "redis")          # server connections exist before the baseline
    time.sleep(0.3)
    before, sockets0 = tree_rss_kb(proxy.pid), tree_socket_fds(proxy.pid)
    holder = subprocess.Popen([sys.executable, "-m", "bench.idle", str(proxy.redis_port),
                               str(idle), str(timeout + 60)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT,  # the benchmark starts no threads:
                              preexec_fn=fleet.pinned(fleet.CLIENT_CPUS))  # noqa: PLW1509
    try:
        _wait_ready(holder, idle, 30.0)
        _wait_accepted(proxy, sockets0 + idle, 20.0)
        time.sleep(0.5)
        held = tree_rss_kb(proxy.pid)
        _ping_all(holder, idle, 30.0)
        time.sleep(0.5)
        used = tree_rss_kb(proxy.pid)
        _client_run(w, proxy, n, timeout, others, run)
        run.extra.update(idle_conns=idle, rss_before_kb=before, rss_idle_kb=held,
                         rss_used_kb=used, rss_after_kb=run.rss_kb,
                         kb_per_idle_conn=(held - before) / idle,
                         kb_per_used_conn=(used - before) / idle)
    finally:
        _stop_holder(holder, run)


def _wait_ready(holder: subprocess.Popen[str], idle: int, timeout: float) -> None:
    assert holder.stdout is not None
    ready, _, _ = select.select([holder.stdout], [], [], timeout)
    line = holder.stdout.readline().strip() if ready else ""
    if line != f"ready {idle}":
        raise RunFailed(f"idle holder: {line or 'no answer'}")


def _ping_all(holder: subprocess.Popen[str], idle: int, timeout: float) -> None:
    """Every idle connection sends one request and gets its reply (then sits idle again)."""
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("ping\n")
    holder.stdin.flush()
    ready, _, _ = select.select([holder.stdout], [], [], timeout)
    line = holder.stdout.readline().strip() if ready else ""
    if line != f"pinged {idle}":
        raise RunFailed(f"idle holder: {line or 'no answer'} (expected pinged {idle})")


def _wait_accepted(proxy: Proxy, want: int, timeout: float) -> None:
    deadline, have = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        have = tree_socket_fds(proxy.pid)
        if have >= want:
            return
        time.sleep(0.05)
    raise RunFailed(f"proxy holds {have} sockets, expected {want} with the idle connections")


def _stop_holder(holder: subprocess.Popen[str], run: Run) -> None:
    try:
        out, _ = holder.communicate("", timeout=15)
        run.extra["idle_holder"] = out.strip().splitlines()[-1] if out.strip() else ""
    except subprocess.TimeoutExpired:
        holder.kill()
        holder.wait(5)
