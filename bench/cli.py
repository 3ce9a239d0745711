"""`python -m bench`: start everything, run the workloads interleaved, report, clean up.

Rule 1: every process this module starts is stopped by PID in a `finally`, also on Ctrl-C.
Rule 2: the order of runs is workload by workload; within a workload, repetition by repetition;
        within a repetition, proxy by proxy (nut, ks, nut, ks, ...), so slow drift of the
        machine (page cache, thermal, a neighbour) lands on both proxies alike.
Rule 3: a proxy that dies is restarted before its next run; one that failed to start three
        times in a row is given up on, and its remaining runs fail fast.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import bench
from bench import fleet, machine, report, workloads
from bench.fleet import ROOT, Backends, Proxy, start_backends
from bench.workloads import WORKLOADS, Run, Workload, measure

OUT = ROOT / "bench" / "out"
MAX_FAILED_STARTS = 3


PROXIES_HELP = (
    "comma-separated, the first is the baseline of the ratios (nutcracker,nutcracker is a "
    "sanity check: ratios near 1.0); keyshard=DIR runs the keyshard of another tree (a "
    "checkout or its src/, extensions built in place), e.g. a worktree of an older commit, to "
    "compare two builds in one interleaved run; floor is bench/floor.c, a minimal C proxy "
    "(built with cc): what the machine leaves for any proxy; floor=N holds its writes to a "
    "server N microseconds (a batching window); keyshard+metrics (or keyshard+metrics=DIR) is "
    "keyshard serving /metrics (--metrics-addr), every reply counted in its latency histograms")

RETRY_HELP = (
    "measure a run again, up to N more times (default 2; 0: never), when another process or "
    "the hypervisor (steal) took more than 10%% of the machine during it; the least disturbed "
    "attempt is kept, the others are listed in its results.json entry")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=(bench.__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="workloads: " + ", ".join(w.name for w in WORKLOADS))
    ap.add_argument("--quick", action="store_true",
                    help="one repetition of ~1 s runs (a smoke test, not a measurement)")
    ap.add_argument("--only", default="", help="comma-separated workload names or globs")
    ap.add_argument("--proxies", default="nutcracker,keyshard", help=PROXIES_HELP)
    ap.add_argument("--reps", type=int, help="repetitions (default 3, 1 with --quick)")
    ap.add_argument("--seconds", type=float,
                    help="target length of one run on the baseline (default 4, 1 with --quick)")
    ap.add_argument("--idle-conns", type=int, default=1000)
    ap.add_argument("--pin", action="store_true",
                    help="pin the clients to the last CPU and the proxies and backends to the "
                         "others: less run-to-run noise, but not the default setting, where "
                         "the scheduler places everything on the shared cores")
    ap.add_argument("--timeout", type=int, default=0, metavar="MS",
                    help="give both pools `timeout: MS` (default: none, as nutcracker's "
                         "default); most production pools set one")
    ap.add_argument("--retry-disturbed", type=int, default=2, metavar="N", help=RETRY_HELP)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    a.reps = a.reps or (1 if a.quick else 3)
    a.seconds = a.seconds or (1.0 if a.quick else 4.0)
    if not 1 <= a.reps <= 20 or not 0.2 <= a.seconds <= 60 or not 1 <= a.idle_conns <= 10000:
        ap.error("--reps must be 1..20, --seconds 0.2..60, --idle-conns 1..10000")
    if not 0 <= a.timeout <= 3_600_000 or not 0 <= a.retry_disturbed <= 10:
        ap.error("--timeout must be 0..3600000 ms, --retry-disturbed 0..10")
    a.workloads = select_workloads(a.only, ap)
    try:
        a.kinds, a.srcs, a.windows = proxy_specs(a.proxies)
    except ValueError as err:
        ap.error(str(err))
    return a


KINDS = ("nutcracker", "keyshard", "keyshard+metrics", "floor")


def proxy_specs(text: str) -> tuple[list[str], list[Path | None], list[int]]:
    """`--proxies`: the kinds; for each the keyshard source tree to run (None: this one); and
    for each floor its hold window in microseconds (`floor=N`; 0 for the rest)."""
    kinds: list[str] = []
    srcs: list[Path | None] = []
    windows: list[int] = []
    for spec in (s.strip() for s in text.split(",")):
        if not spec:
            continue
        kind, eq, where = spec.partition("=")
        if kind not in KINDS or (eq and kind == "nutcracker"):
            raise ValueError("--proxies takes nutcracker, keyshard, keyshard=DIR, "
                             "keyshard+metrics, keyshard+metrics=DIR, floor or "
                             f"floor=MICROSECONDS, not {spec!r}")
        src, window = None, 0
        if eq and kind == "floor":
            if not where.isdigit() or not 0 < int(where) < 1_000_000:
                raise ValueError(f"floor={where}: a hold window of 1 to 999999 microseconds")
            window = int(where)
        elif eq:
            root = Path(where).expanduser().resolve()
            src = root / "src" if (root / "src" / "keyshard").is_dir() else root
            if not (src / "keyshard" / "__init__.py").is_file():
                raise ValueError(f"{where!r} holds no keyshard package (nor src/keyshard)")
        kinds.append(kind)
        srcs.append(src)
        windows.append(window)
    if not kinds:
        raise ValueError("--proxies names no proxy")
    return kinds, srcs, windows


def select_workloads(only: str, ap: argparse.ArgumentParser) -> list[Workload]:
    pats = [p.strip() for p in only.split(",") if p.strip()]
    if not pats:
        return list(WORKLOADS)
    for p in pats:
        if not any(fnmatch.fnmatch(w.name, p) for w in WORKLOADS):
            ap.error(f"--only {p!r} matches no workload")
    return [w for w in WORKLOADS if any(fnmatch.fnmatch(w.name, p) for p in pats)]


def labels_for(kinds: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for k in kinds:
        seen[k] = seen.get(k, 0) + 1
        out.append(k if seen[k] == 1 else f"{k}-{seen[k]}")
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    err = _prepare(a)
    if err:
        print(err, file=sys.stderr)
        return 2
    logs = a.out / "logs"
    labels = labels_for(a.kinds)
    meta = _meta(a, labels)
    _check_quiet(meta)
    results: report.Results = {}
    backends: Backends | None = None
    proxies: list[Proxy] = []
    try:
        backends = start_backends(logs)
        _prefill(backends)
        proxies = [Proxy(k, lab, logs, backends, src=src, window_us=w, timeout_ms=a.timeout)
                   for k, lab, src, w in zip(a.kinds, labels, a.srcs, a.windows)]
        for p in proxies:
            _ensure_running(p)
        _run_all(a, backends, proxies, results, meta)
    except KeyboardInterrupt:
        meta["interrupted"] = True
        print("\ninterrupted: reporting what ran", file=sys.stderr)
    finally:
        for p in proxies:
            p.stop()
        for c in backends.children() if backends else []:
            c.stop()
    meta["load_after"] = os.getloadavg()[0]
    return _report(a, labels, meta, results)


def _prepare(a: argparse.Namespace) -> str | None:
    """Check the tools, set the fd limit, idle count and CPU placement, make a fresh logs
    directory and build the floor if asked for; returns what stops the run, if anything."""
    missing = [t for t in ("redis-benchmark", "memcslap", "redis-server", "memcached")
               if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (make deps installs them)"
    _raise_fd_limit()
    workloads.IDLE_CONNS = a.idle_conns
    if a.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return "--pin needs at least 2 CPUs"
        fleet.SERVER_CPUS, fleet.CLIENT_CPUS = set(cpus[:-1]), {cpus[-1]}
    logs = a.out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    if "floor" in a.kinds:
        try:
            binary = fleet.build_floor(logs)
        except RuntimeError as err:
            return str(err)
        a.srcs = [binary if k == "floor" else s for k, s in zip(a.kinds, a.srcs)]
    return None


def _run_all(a: argparse.Namespace, backends: Backends, proxies: list[Proxy],
             results: report.Results, meta: dict[str, Any]) -> None:
    timeout = a.seconds * 20 + 30
    others = tuple(c.pid for c in backends.children())
    total, done = len(a.workloads) * a.reps * len(proxies), 0
    for w in a.workloads:
        warm_n = w.warmup_n // 2 if a.quick else w.warmup_n
        n = _choose_n(w, warm_n, proxies, a.seconds, timeout, meta, others)
        per = results.setdefault(w.name, {p.label: [] for p in proxies})
        for rep in range(a.reps):
            for p in run_order(proxies, rep):
                done += 1
                if not _ensure_running(p):
                    run = Run(w.name, p.label, n, error=p.start_error)
                else:
                    run = least_disturbed(partial(measure, w, p, n, timeout, others),
                                          a.retry_disturbed)
                per[p.label].append(run)
                print(f"[{done}/{total}] {w.name} rep {rep + 1}/{a.reps} {p.label}: "
                      f"{_brief(run)}", flush=True)


T = TypeVar("T")


def run_order(proxies: list[T], rep: int) -> list[T]:
    """The proxies in the order of repetition `rep`: as given, then reversed, and so on."""
    return proxies if rep % 2 == 0 else proxies[::-1]


def _choose_n(w: Workload, warm_n: int, proxies: list[Proxy], seconds: float, timeout: float,
              meta: dict[str, Any], others: tuple[int, ...]) -> int:
    """Warm every proxy up with a short run; the fastest warm-up sets N (`n_for`)."""
    warm = replace(w, kind="redis") if w.kind == "idle" else w
    rates: dict[str, float] = {}
    for p in proxies:
        if not _ensure_running(p):
            continue
        run = measure(warm, p, warm_n, timeout, others)
        print(f"  warm-up {w.name} {p.label}: {_brief(run)}", flush=True)
        if run.ok and run.rps:
            rates.setdefault(p.label, run.rps)
    n = n_for(list(rates.values()), warm_n, seconds)
    source = max(rates, key=rates.__getitem__, default=None)
    meta.setdefault("n", {})[w.name] = {"n": n, "from": source, "warmup_rates": rates,
                                        "warmup_rps": max(rates.values(), default=None)}
    return n


def n_for(rates: list[float], warm_n: int, seconds: float) -> int:
    """Requests per run: a run on the fastest warm-up's proxy lasts about `seconds`.

    The fastest, not the first: a warm-up the hypervisor or a neighbour slowed (run 32's MGET
    warm-up ran at 15k/s, its runs at 37-49k) would otherwise cut every run of the workload
    short, and the shorter a run, the more one stall moves it. Between warm_n and 500 times
    it, rounded up to a thousand; 10 times warm_n when no warm-up worked.
    """
    n = int(max(rates) * seconds) if rates else warm_n * 10
    n = max(warm_n, min(n, warm_n * 500))
    return -(-n // 1000) * 1000


def disturbance(run: Run) -> float:
    """How much of the machine others took during `run`: foreign CPU or steal, in %."""
    return max(run.extra.get("foreign_cpu_pct", 0.0), run.extra.get("steal_pct", 0.0))


def least_disturbed(attempt: Callable[[], Run], retries: int) -> Run:
    """Measure once, and again while another process or the hypervisor took more than
    DISTURBED_PCT of the machine, up to `retries` more times; keep the least disturbed
    attempt. The criterion is what /proc/stat says of the others, never the result itself,
    and it is the same for every proxy. The attempts not kept are listed in the kept run's
    extra["discarded"] (their requests/s and disturbance), so the report can count them.
    A failed attempt stops the retries and is the one kept."""
    runs = [attempt()]
    while (runs[-1].ok and disturbance(runs[-1]) > report.DISTURBED_PCT
           and len(runs) <= retries):
        print(f"    {disturbance(runs[-1]):.0f}% of the machine was not ours: again",
              flush=True)
        runs.append(attempt())
    # a failed attempt ends the retries and is what the run reports: a retry never hides a
    # proxy that died or a client that failed
    kept = runs[-1] if not runs[-1].ok else min(runs, key=disturbance)
    others = [r for r in runs if r is not kept]
    if others:
        kept.extra["discarded"] = [{"rps": r.rps, "error": r.error,
                                    "disturbed_pct": disturbance(r)} for r in others]
    return kept


def _ensure_running(p: Proxy) -> bool:
    if p.alive():
        return True
    if p.failed_starts >= MAX_FAILED_STARTS:
        if not p.start_error.startswith("gave up"):
            p.start_error = f"gave up after {p.failed_starts} failed starts; {p.start_error}"
        return False
    try:
        p.start()
        return True
    except RuntimeError as err:
        p.start_error = f"start failed: {err}"
        print(f"  {p.label}: {p.start_error}", file=sys.stderr, flush=True)
        return False


def _brief(run: Run) -> str:
    if not run.ok:
        return f"FAILED {run.error}"
    p99 = "n/a" if run.p99_ms is None else f"{run.p99_ms:.3f} ms"
    return (f"{run.rps:,.0f} rps, p99 {p99}, {run.cpu_us_per_req:.2f} µs CPU/req, "
            f"RSS {(run.rss_kb or 0) / 1024:.1f} MB, {run.seconds:.1f} s")


def _prefill(b: Backends) -> None:
    """Every GET finds a 3-byte value: SET the key space on both redis-servers directly."""
    for port in b.redis_ports:
        subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "20",
                        "-P", "32", "-r", str(workloads.KEYSPACE), "-n", "300000", "-t", "set",
                        "-q"], capture_output=True, timeout=120, check=False)


def _check_quiet(meta: dict[str, Any]) -> None:
    """Two seconds of the machine before we start: others' CPU will be in our numbers."""
    a = machine.snapshot([])
    time.sleep(2.0)
    d = machine.disturbance(a, machine.snapshot([]))
    meta["foreign_before_pct"] = d["foreign_cpu_pct"]
    meta["steal_before_pct"] = d["steal_pct"]
    for what, pct in (("other processes are", d["foreign_cpu_pct"]),
                      ("the hypervisor is (steal)", d["steal_pct"])):
        if pct > report.DISTURBED_PCT:
            print(f"warning: {what} using {pct:.0f}% of the machine; requests/s will be noisy "
                  "(CPU/request much less so)", file=sys.stderr, flush=True)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _meta(a: argparse.Namespace, labels: list[str]) -> dict[str, Any]:
    def out(argv: list[str]) -> str:
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT,
                                check=False)
            return (cp.stdout + cp.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": out(["git", "rev-parse", "--short", "HEAD"]),
        "proxies": labels, "reps": a.reps, "seconds": a.seconds, "quick": a.quick,
        "sources": {lab: f"{src}, commit "
                         + out(["git", "-C", str(src), "rev-parse", "--short", "HEAD"])
                    for lab, kind, src in zip(labels, a.kinds, a.srcs)
                    if src is not None and kind.startswith("keyshard")},
        "pinned": a.pin, "timeout_ms": a.timeout, "retry_disturbed": a.retry_disturbed,
        "workloads": [w.name for w in a.workloads], "clients": workloads.CLIENTS,
        "keyspace": workloads.KEYSPACE, "idle_conns": a.idle_conns,
        "cores": os.cpu_count(), "kernel": platform.release(), "python": sys.version.split()[0],
        "nutcracker": out(["nutcracker", "-V"]), "redis_benchmark": out(["redis-benchmark", "-v"]),
        "memcslap": out(["memcslap", "--version"]),
        "keyshard_no_extensions": os.environ.get("KEYSHARD_NO_EXTENSIONS", ""),
        "load_before": os.getloadavg()[0],
    }


def _report(a: argparse.Namespace, labels: list[str], meta: dict[str, Any],
            results: report.Results) -> int:
    if not results:
        print("no results", file=sys.stderr)
        return 1
    a.out.mkdir(parents=True, exist_ok=True)
    summary = report.summarize(results)
    md = report.markdown(summary, a.workloads, labels, meta)
    print("\n" + md)
    (a.out / "results.md").write_text(md)
    report.write_json(a.out / "results.json", meta, results, summary, labels)
    try:
        report.write_png(a.out / "results.png", summary, a.workloads, labels, meta)
    except ImportError:
        print("matplotlib is not installed: no results.png (pip install matplotlib)",
              file=sys.stderr)
    print(f"wrote {a.out}/results.md, results.json, results.png; logs in {a.out}/logs")
    return 0
