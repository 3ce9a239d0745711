"""How much one GET at depth 1 costs from run to run: `python -m bench.spread [--runs 8]`.

At depth 1 on two shared cores, back-to-back runs of the same proxy differ by up to ~40% in
requests/s (docs/performance.md, "Read single figures with care"). This runs back-to-back GETs
(redis-benchmark, 50 clients, `-r 100000`) through each proxy in turn and prints, per run,
where the difference is: the machine's busy share, how often the proxy blocked in epoll, how
many requests its writes to the redis-servers carried, and the CPU per GET of the servers and
of the proxy (its kernel time apart).

Rule 1: figures only, never an assertion, sorted by proxy and then requests/s.
Rule 2: "server writes" are the proxy's write syscalls per GET minus one (at depth 1 each GET
        is answered by one write to its client); "sleeps" are its voluntary context switches.
Rule 3: every process started here is stopped by PID in a `finally` (as `python -m bench`).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import fleet, machine, workloads
from bench.machine import CLK_TCK
from bench.parse import ParseError, ticks_to_us

GET_P1 = next(w for w in workloads.WORKLOADS if w.name == "get_p1")


@dataclass(frozen=True)
class Counters:
    """One process's cumulative counters."""

    writes: int           # /proc/PID/io syscw
    sleeps: int           # /proc/PID/status voluntary_ctxt_switches
    user: int             # clock ticks
    kernel: int


def parse_counters(io_text: str, status_text: str, user: int, kernel: int) -> Counters:
    """Counters from the text of /proc/PID/io and /proc/PID/status."""
    def field(text: str, name: str) -> int:
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return int(value.split()[0])
        raise ParseError(f"no {name} field")
    return Counters(field(io_text, "syscw"), field(status_text, "voluntary_ctxt_switches"),
                    user, kernel)


def counters(pid: int) -> Counters:
    with open(f"/proc/{pid}/io") as f:
        io_text = f.read()
    with open(f"/proc/{pid}/status") as f:
        status_text = f.read()
    user, kernel = fleet.tree_cpu_split(pid)
    return parse_counters(io_text, status_text, user, kernel)


def row(proxy: str, rps: float, n: int, busy_pct: float, a: Counters, b: Counters,
        backend_ticks: int) -> dict[str, object]:
    """The printed figures of one run of n GETs (counters a before, b after)."""
    def us(ticks: int) -> float:
        return round(ticks_to_us(ticks, CLK_TCK) / n, 2)
    return {"proxy": proxy, "rps": round(rps), "busy %": busy_pct,
            "sleeps/GET": round((b.sleeps - a.sleeps) / n, 3),
            "server writes/GET": round((b.writes - a.writes) / n - 1, 3),
            "backends µs/GET": us(backend_ticks),
            "proxy µs/GET": us(b.user + b.kernel - a.user - a.kernel),
            "proxy kernel µs/GET": us(b.kernel - a.kernel)}


def one_run(proxy: fleet.Proxy, backends: fleet.Backends, n: int) -> dict[str, object]:
    pids = [c.pid for c in backends.redis]
    m0, c0 = machine.snapshot([]), counters(proxy.pid)
    b0 = sum(fleet.tree_cpu_ticks(p) for p in pids)
    res = workloads.redis_benchmark(proxy.redis_port, GET_P1, n, timeout=120.0)
    m1, c1 = machine.snapshot([]), counters(proxy.pid)
    b1 = sum(fleet.tree_cpu_ticks(p) for p in pids)
    busy = machine.disturbance(m0, m1)["machine_busy_pct"]
    return row(proxy.label, res.rps, n, busy, c0, c1, b1 - b0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.spread",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8, help="runs per proxy (default 8)")
    ap.add_argument("--requests", type=int, default=200_000, help="GETs per run")
    ap.add_argument("--proxies", default="keyshard,nutcracker")
    a = ap.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="keyshard-spread-"))
    backends = fleet.start_backends(log_dir)
    proxies: list[fleet.Proxy] = []
    try:
        for kind in a.proxies.split(","):
            proxies.append(fleet.Proxy(kind, kind, log_dir, backends))
            proxies[-1].start()
            workloads.redis_benchmark(proxies[-1].redis_port, GET_P1, 20_000, timeout=60.0)
        rows = [one_run(p, backends, a.requests) for _ in range(a.runs) for p in proxies]
    finally:
        for p in proxies:
            p.stop()
        for c in backends.children():
            c.stop()
    shutil.rmtree(log_dir, ignore_errors=True)  # kept when a run failed: its logs say why
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in sorted(rows, key=lambda r: (str(r["proxy"]), -float(str(r["rps"])))):
        print(" | ".join(str(r[c]) for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
