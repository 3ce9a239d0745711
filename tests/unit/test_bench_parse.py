"""The benchmark's parsers, fed outputs captured from the real tools on this machine.

redis-benchmark 7.0.15, memcslap 1.1 (libmemcached 1.1.4), Linux /proc of nutcracker 0.5.0.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.parse import (
    ParseError,
    parse_memcslap,
    parse_proc_stat,
    parse_proc_stat_cpu,
    parse_redis_benchmark_csv,
    parse_vmrss_kb,
    ticks_to_us,
)
from bench.workloads import Run

# redis-benchmark -p PORT -c 50 -r 100000 -n 20000 -t get,set -P 16 --csv
RB_GET_SET = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
    '"SET","666666.69","0.967","0.288","0.831","2.079","2.391","2.487"\n'
    '"GET","1052631.62","0.456","0.168","0.415","0.711","0.895","1.047"\n'
)
# redis-benchmark ... --csv MGET key:__rand_int__ x10, through nutcracker 0.5.0
RB_MGET = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
    '"MGET' + " key:__rand_int__" * 10 + '","53475.94","0.786","0.248","0.735","1.167",'
    '"1.447","4.911"\n'
)
# the server was killed mid-run: exit 1, the header and nothing else on stdout
RB_KILLED = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
)

# memcslap --servers=127.0.0.1:PORT --test=get --concurrency=4 --execute-number=2000
MCS_GET = """\
Time to generate       2000 test keys:                0.004 seconds.
Time to set            2000 keys:                     0.135 seconds.
Time to start             4 threads:                  0.000 seconds.
--------------------------------------------------------------------
Time to get            8000 keys by    4 threads:     0.135 seconds.
--------------------------------------------------------------------
Time total:                                           0.275 seconds.
"""
# memcslap --test=set --concurrency=50 --execute-number=1000, through nutcracker 0.5.0
MCS_SET = """\
Time to generate       1000 test keys:                0.007 seconds.
Time to start            50 threads:                  0.003 seconds.
--------------------------------------------------------------------
Time to set           50000 keys by   50 threads:     0.794 seconds.
--------------------------------------------------------------------
Time total:                                           0.804 seconds.
"""
# nothing listening (exit status 0!): stdout, then the first stderr lines
MCS_REFUSED = """\
Time to generate          3 test keys:                0.000 seconds.
Time to set               0 keys:                     0.000 seconds.
Time to start             2 threads:                  0.000 seconds.
--------------------------------------------------------------------
Time to get               0 keys by    2 threads:     0.001 seconds.
--------------------------------------------------------------------
Time total:                                           0.001 seconds.
Fatal error for key 'KEW05npZjCePloDgAFTmdODRkNYTOdNty6w2vsgqO7btQegLH9cnE': (0x7ffe502433c0) \
CONNECTION FAILURE(Connection refused),  host: 127.0.0.1:1 -> ./src/libmemcached/io.cc:145
Fatal error for key 'EISxtJ1GX1DxlhelH7Gi34HesQhKqQv3BhEkPPS0ptFFrGLIHMdQJ96PP2g': \
(0x55916f74e600) CONNECTION FAILURE,  host: 127.0.0.1:1 -> ./src/libmemcached/get.cc:233
"""

# /proc/<pid>/stat of nutcracker 0.5.0 after a few benchmark runs
STAT_NUTCRACKER = (
    "7730 (nutcracker) S 7709 7706 6478 0 -1 4194304 2865 0 0 0 57 266 0 0 20 0 2 0 40845 "
    "39264256 3330 18446744073709551615 94197449224192 94197449319801 140721482920464 0 0 0 0 "
    "4096 3149315 0 0 0 17 0 0 0 0 0 0 94197449360368 94197449367568 94197657841664 "
    "140721482922626 140721482922720 140721482922720 140721482924003 0\n"
)
# a copy of /bin/sleep named "we) (ird": comm holds ") (" and must not shift the fields
STAT_WEIRD = (
    "13017 (we) (ird) S 1 12129 6478 0 -1 4194304 130 0 0 0 0 0 0 0 20 0 1 0 47142 2990080 413 "
    "18446744073709551615 94885926989824 94885927007753 140732516519936 0 0 0 0 6 0 1 0 0 17 1 "
    "0 0 0 0 0 94885927021840 94885927023104 94886915276800 140732516522695 140732516522718 "
    "140732516522718 140732516524004 0\n"
)
STATUS_NUTCRACKER = """\
Name:\tnutcracker
Umask:\t0022
State:\tS (sleeping)
Tgid:\t7730
Pid:\t7730
PPid:\t7709
VmPeak:\t   38348 kB
VmSize:\t   38344 kB
VmHWM:\t   13460 kB
VmRSS:\t   13460 kB
RssAnon:\t   11248 kB
"""


def test_redis_benchmark_rows() -> None:
    rows = parse_redis_benchmark_csv(RB_GET_SET)
    assert [r.test for r in rows] == ["SET", "GET"]
    assert rows[0].rps == pytest.approx(666666.69)
    assert rows[0].p99_ms == pytest.approx(2.391)
    assert rows[1].p50_ms == pytest.approx(0.415)
    assert rows[1].max_ms == pytest.approx(1.047)


def test_redis_benchmark_custom_command_name_with_spaces() -> None:
    (row,) = parse_redis_benchmark_csv(RB_MGET)
    assert row.test.startswith("MGET key:__rand_int__ ")
    assert row.rps == pytest.approx(53475.94)
    assert row.p99_ms == pytest.approx(1.447)


def test_redis_benchmark_skips_non_csv_lines() -> None:
    text = "WARNING: Could not fetch server CONFIG\n" + RB_GET_SET + "\n"
    assert len(parse_redis_benchmark_csv(text)) == 2


@pytest.mark.parametrize("text", [RB_KILLED, "", "Error: Server closed the connection\n",
                                  RB_GET_SET.replace('"0.895"', '"-nan"').replace("0.456", "x")])
def test_redis_benchmark_without_result_is_an_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_redis_benchmark_csv(text)


def test_memcslap_get_counts_the_load_phase_as_requests() -> None:
    r = parse_memcslap(MCS_GET)
    assert (r.test, r.keys, r.threads, r.loaded, r.errors) == ("get", 8000, 4, 2000, 0)
    assert r.seconds == pytest.approx(0.135)
    assert r.rps == pytest.approx(8000 / 0.135)
    assert r.requests == 10000


def test_memcslap_set_has_no_load_phase() -> None:
    r = parse_memcslap(MCS_SET)
    assert (r.test, r.keys, r.threads, r.loaded) == ("set", 50000, 50, 0)
    assert r.rps == pytest.approx(50000 / 0.794)


def test_memcslap_failure_is_visible_despite_exit_0() -> None:
    r = parse_memcslap(MCS_REFUSED)
    assert r.keys == 0 and r.errors == 2


def test_memcslap_garbage() -> None:
    with pytest.raises(ParseError):
        parse_memcslap("memslap: unknown option\n")
    with pytest.raises(ParseError):
        _ = parse_memcslap(MCS_SET.replace("0.794", "0.000")).rps


def test_proc_stat_nutcracker() -> None:
    s = parse_proc_stat(STAT_NUTCRACKER)
    assert (s.pid, s.comm, s.state, s.ppid) == (7730, "nutcracker", "S", 7709)
    assert (s.utime, s.stime, s.cutime, s.cstime) == (57, 266, 0, 0)
    assert (s.user_ticks, s.kernel_ticks, s.cpu_ticks) == (57, 266, 323)
    assert s.rss_pages == 3330


def test_proc_stat_comm_with_parentheses_and_spaces() -> None:
    s = parse_proc_stat(STAT_WEIRD)
    assert (s.pid, s.comm, s.ppid, s.rss_pages) == (13017, "we) (ird", 1, 413)


def test_proc_stat_of_this_process() -> None:
    with open("/proc/self/stat") as f:
        s = parse_proc_stat(f.read())
    assert s.pid == os.getpid() and s.ppid == os.getppid()


@pytest.mark.parametrize("text", ["", "7730 nutcracker S 1", "7730 (nutcracker) S 1 2 3\n",
                                  STAT_NUTCRACKER.replace(" 57 266 ", " x 266 ")])
def test_proc_stat_garbage(text: str) -> None:
    with pytest.raises(ParseError):
        parse_proc_stat(text)


def test_vmrss() -> None:
    assert parse_vmrss_kb(STATUS_NUTCRACKER) == 13460
    with pytest.raises(ParseError):          # a zombie's status has no Vm lines
        parse_vmrss_kb("Name:\tnutcracker\nState:\tZ (zombie)\n")


# the first lines of /proc/stat on the 2-core benchmark machine
PROC_STAT = """\
cpu  58855 0 22544 113021 381 0 6150 83 0 0
cpu0 24111 0 10983 62107 55 0 3132 43 0 0
cpu1 34743 0 11561 50913 326 0 3017 40 0 0
intr 1577363 0 9 0 0 0 0 0 0 0 0 0 0 0
"""


def test_proc_stat_cpu_line() -> None:
    c = parse_proc_stat_cpu(PROC_STAT)
    assert (c.user, c.nice, c.system, c.idle, c.softirq, c.steal) == (58855, 0, 22544, 113021,
                                                                      6150, 83)
    assert c.busy == 58855 + 22544 + 6150
    with open("/proc/stat") as f:
        assert parse_proc_stat_cpu(f.read()).idle > 0
    with pytest.raises(ParseError):
        parse_proc_stat_cpu("cpu0 1 2 3 4 5 6 7 8\n")


def test_ticks_to_us() -> None:
    assert ticks_to_us(323, 100) == pytest.approx(3_230_000)
    assert ticks_to_us(1, 1000) == pytest.approx(1000)


def test_report_medians_ratios_and_failures() -> None:
    from bench.report import markdown, summarize
    from bench.workloads import WORKLOADS, Run

    w = WORKLOADS[0]

    def ok(rps: float, cpu: float) -> Run:
        return Run(w.name, "", 1000, rps=rps, p99_ms=1.0, cpu_us_per_req=cpu, rss_kb=2048)

    results = {w.name: {
        "nutcracker": [ok(100, 10), ok(300, 30), ok(200, 20)],
        "keyshard": [ok(50, 40), Run(w.name, "keyshard", 1000, error="proxy died (exit 1)"),
                     ok(150, 60)],
    }}
    summary = summarize(results)
    assert summary[w.name]["nutcracker"].rps == 200
    assert summary[w.name]["keyshard"].rps == 100
    md = markdown(summary, [w], ["nutcracker", "keyshard"], {"reps": 3, "cores": 2})
    row = next(line for line in md.splitlines() if line.startswith(f"| {w.title} |"))
    # ratio of the medians (rps 100/200, CPU 50/20), then the range of per-repetition ratios
    assert "| 0.50× (0.50–0.75) |" in row and "| 2.50× (3.00–4.00) |" in row
    assert "100 †" in row
    assert "proxy died (exit 1)" in md

    dead = {w.name: {"nutcracker": [ok(1, 1)], "keyshard": [Run(w.name, "k", 1, error="x")]}}
    md = markdown(summarize(dead), [w], ["nutcracker", "keyshard"], {})
    assert "failed" in md and "—" in md


def test_report_flags_runs_a_neighbour_or_the_hypervisor_disturbed() -> None:
    """Foreign CPU or steal above DISTURBED_PCT in any run marks the workload ‡; the note
    gives the worst of each."""
    from bench.report import DISTURBED_PCT, markdown, summarize
    from bench.workloads import WORKLOADS, Run

    w = WORKLOADS[0]

    def run(foreign: float, steal: float) -> Run:
        return Run(w.name, "", 1000, rps=100.0, cpu_us_per_req=10.0,
                   extra={"foreign_cpu_pct": foreign, "steal_pct": steal})

    def md(foreign: float, steal: float) -> tuple[str, str]:
        text = markdown(summarize({w.name: {"nutcracker": [run(1.0, 0.0)],
                                            "keyshard": [run(foreign, steal)]}}),
                        [w], ["nutcracker", "keyshard"], {})
        return next(line for line in text.splitlines() if line.startswith(f"| {w.title}")), text

    row, text = md(2.0, 3.0)
    assert "‡" not in row and "at most 2% of the machine" in text and "at most 3%." in text
    row, text = md(2.0, DISTURBED_PCT + 30)
    assert row.startswith(f"| {w.title} ‡ |") and f"at most {DISTURBED_PCT + 30:.0f}%." in text
    row, _ = md(DISTURBED_PCT + 1, 0.0)
    assert row.startswith(f"| {w.title} ‡ |")


def test_pin_places_children_and_says_so() -> None:
    """--pin: a child started with `pinned(cpus)` runs on those CPUs only (threads too, as
    they inherit it); without --pin nothing is pinned; the report says which setting ran."""
    import subprocess
    import sys

    from bench.fleet import pinned
    from bench.report import markdown, summarize
    from bench.workloads import WORKLOADS, Run

    assert pinned(None) is None
    cpu = max(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                         capture_output=True, text=True, check=True, preexec_fn=pinned({cpu}))
    assert out.stdout.strip() == f"[{cpu}]"
    w = WORKLOADS[0]
    results = {w.name: {p: [Run(w.name, p, 1, rps=1.0, cpu_us_per_req=1.0)]
                        for p in ("nutcracker", "keyshard")}}
    shared = markdown(summarize(results), [w], ["nutcracker", "keyshard"], {"cores": 2})
    pinned_md = markdown(summarize(results), [w], ["nutcracker", "keyshard"],
                         {"cores": 2, "pinned": True})
    assert "2 cores shared by client, backends and proxy" in shared and "pinned" not in shared
    assert "pinned (--pin)" in pinned_md


def test_cpu_table_model_and_bound() -> None:
    """The CPU table: medians of each process's share per request, the model's rps ratio
    (busy share / total CPU per request) and the bound with the proxy's user time at zero."""
    from bench.report import markdown, model_ratios, summarize
    from bench.workloads import WORKLOADS, Run

    w = WORKLOADS[0]

    def run(p: str, busy: float, client: float, user: float, kernel: float) -> Run:
        return Run(w.name, p, 1000, rps=1.0, cpu_us_per_req=user + kernel,
                   extra={"machine_busy_pct": busy, "cpu_split_us": {
                       "client": client, "backends": 4.0, "proxy_user": user,
                       "proxy_kernel": kernel}})

    results = {w.name: {
        "nutcracker": [run("n", 90, 10, 2, 14), run("n", 100, 12, 2, 14)],  # medians 95, 11
        "keyshard": [run("k", 95, 11, 5, 5), run("k", 95, 11, 5, 5)],
    }}
    summary = summarize(results)
    nut, ks = summary[w.name]["nutcracker"], summary[w.name]["keyshard"]
    assert nut.split == {"client": 11, "backends": 4.0, "proxy_user": 2, "proxy_kernel": 14}
    model, bound = model_ratios(ks, nut)
    assert model == pytest.approx(31 / 25) and bound == pytest.approx(31 / 20)
    md = markdown(summary, [w], ["nutcracker", "keyshard"], {"reps": 2, "cores": 2})
    row = next(line for line in md.splitlines() if line.startswith(f"| {w.title} | ks |"))
    assert "| 25.00 | 95 | 1.00× | 1.24× | 1.55× |" in row
    # runs without the split (older results) leave the table out
    plain = {w.name: {p: [Run(w.name, p, 1, rps=1.0, cpu_us_per_req=1.0)]
                      for p in ("nutcracker", "keyshard")}}
    assert "Where the machine's CPU went" not in markdown(
        summarize(plain), [w], ["nutcracker", "keyshard"], {})


def test_proxy_specs_name_another_keyshard_tree(tmp_path: Path) -> None:
    """`--proxies keyshard=DIR` runs the keyshard of another checkout (or its src/)."""
    from bench.cli import labels_for, proxy_specs

    (tmp_path / "src" / "keyshard").mkdir(parents=True)
    (tmp_path / "src" / "keyshard" / "__init__.py").write_text("")
    kinds, srcs, _ = proxy_specs(f"keyshard={tmp_path}, keyshard")
    assert kinds == ["keyshard", "keyshard"]
    assert srcs == [tmp_path.resolve() / "src", None]
    assert labels_for(kinds) == ["keyshard", "keyshard-2"]
    assert proxy_specs(f"nutcracker,keyshard={tmp_path / 'src'}")[1] == [
        None, tmp_path.resolve() / "src"]
    for bad in ("", "redis", f"nutcracker={tmp_path}", f"keyshard={tmp_path / 'none'}",
                f"floor={tmp_path}", "floor=0", "floor=x"):
        with pytest.raises(ValueError):
            proxy_specs(bad)


def test_keyshard_with_metrics_serves_them(tmp_path: Path) -> None:
    """`--proxies nutcracker,keyshard,keyshard+metrics`: the third is keyshard with
    --metrics-addr on its own port (latency histograms on), from this tree or another."""
    from bench.cli import labels_for, proxy_specs
    from bench.fleet import Backends, Proxy
    from bench.report import short

    (tmp_path / "keyshard").mkdir()
    (tmp_path / "keyshard" / "__init__.py").write_text("")
    kinds, srcs, _ = proxy_specs(f"nutcracker,keyshard,keyshard+metrics,keyshard+metrics={tmp_path}")
    assert kinds == ["nutcracker", "keyshard", "keyshard+metrics", "keyshard+metrics"]
    assert srcs == [None, None, None, tmp_path.resolve()]
    assert [short(lab) for lab in labels_for(kinds)] == ["nut", "ks", "ks+m", "ks+m-2"]
    b = Backends([], None, [7001, 7002], 7003)  # type: ignore[arg-type]
    plain = Proxy("keyshard", "keyshard", tmp_path, b)
    metrics = Proxy("keyshard+metrics", "keyshard+metrics", tmp_path, b, src=tmp_path)
    assert "--metrics-addr" not in plain.argv()
    assert metrics.argv()[-2:] == ["--metrics-addr", f"127.0.0.1:{metrics.metrics_port}"]
    assert (metrics.env() or {})["PYTHONPATH"].startswith(str(tmp_path))
    with pytest.raises(ValueError):
        proxy_specs("keyshard+metric")


def test_floor_proxy_argv_names_its_ports_and_the_backends(tmp_path: Path) -> None:
    """`--proxies ...,floor`: bench/floor.c takes no config file, only ports."""
    from bench.cli import proxy_specs
    from bench.fleet import Backends, Proxy

    assert proxy_specs("nutcracker,floor,floor=100") == (
        ["nutcracker", "floor", "floor"], [None, None, None], [0, 0, 100])
    b = Backends([], None, [7001, 7002], 7003)  # type: ignore[arg-type]
    p = Proxy("floor", "floor", tmp_path, b, src=tmp_path / "floor",
              redis_port=7100, mc_port=7200)
    assert p.argv() == [str(tmp_path / "floor"), "7100", "7200", "7003", "7001", "7002"]
    assert p.env() is None
    p.window_us = 100
    assert (p.env() or {})["FLOOR_HOLD_US"] == "100" and p.argv()[0] == str(tmp_path / "floor")


def test_run_order_flips_each_repetition() -> None:
    """Neither proxy always runs second: A B, B A, A B, ..."""
    from bench.cli import run_order

    orders = [run_order(["nut", "ks"], rep) for rep in range(4)]
    assert orders == [["nut", "ks"], ["ks", "nut"], ["nut", "ks"], ["ks", "nut"]]
    assert run_order(["a", "b", "c"], 1) == ["c", "b", "a"]


def test_a_disturbed_run_is_measured_again_and_the_least_disturbed_kept() -> None:
    """Retried on what /proc/stat says of the others (never on the result), up to N times."""
    from bench.cli import least_disturbed
    from bench.report import _disturbance, cell

    def attempts(*pcts: float | None) -> Callable[[], Run]:
        it = iter(pcts)

        def attempt() -> Run:
            pct = next(it)
            if pct is None:
                return Run("get_p1", "ks", 100, error="redis-benchmark exit 1")
            return Run("get_p1", "ks", 100, rps=1000 + pct,
                       extra={"steal_pct": pct, "foreign_cpu_pct": 0.5})
        return attempt

    quiet = least_disturbed(attempts(3.0), 2)
    assert quiet.rps == 1003 and "discarded" not in quiet.extra     # measured once
    kept = least_disturbed(attempts(40.0, 12.0, 25.0), 2)           # three tries, all disturbed
    assert kept.rps == 1012
    assert [d["disturbed_pct"] for d in kept.extra["discarded"]] == [40.0, 25.0]
    assert least_disturbed(attempts(40.0, 5.0), 2).rps == 1005  # stops once quiet (no 3rd)
    assert least_disturbed(attempts(40.0, 50.0), 0).rps == 1040      # --retry-disturbed 0
    failed = least_disturbed(attempts(40.0, None), 2)  # a failed retry stops it, is reported
    assert not failed.ok and failed.extra["discarded"][0]["rps"] == 1040
    c = cell([kept, quiet])
    assert c.discarded == 2 and "2 run(s) were measured again" in _disturbance({"w": {"ks": c}})[0]


def test_n_comes_from_the_fastest_warm_up() -> None:
    """A disturbed first warm-up does not shorten every run; N stays in its bounds."""
    from bench.cli import n_for

    assert n_for([14_781.97, 40_100.0], 20_000, 4.0) == 161_000  # not 60,000 from the first
    assert n_for([40_100.0, 14_781.97], 20_000, 4.0) == 161_000
    assert n_for([], 20_000, 4.0) == 200_000             # no warm-up worked: 10 times warm_n
    assert n_for([1.0], 20_000, 4.0) == 20_000           # never below warm_n
    assert n_for([1e9], 20_000, 4.0) == 10_000_000       # nor above 500 times it
    assert n_for([1_234.5], 1_000, 4.0) == 5_000         # rounded up to a thousand

# /proc/PID/io and the context-switch lines of /proc/PID/status of a keyshard process
PROC_IO = ("rchar: 181771926\nwchar: 183094745\nsyscr: 1180052\nsyscw: 1188735\n"
           "read_bytes: 0\nwrite_bytes: 0\ncancelled_write_bytes: 0\n")
PROC_STATUS_CS = "Threads:\t5\nvoluntary_ctxt_switches:\t4412\nnonvoluntary_ctxt_switches:\t25786\n"


def test_spread_counters_and_row() -> None:
    from bench.machine import CLK_TCK
    from bench.spread import parse_counters, row
    a = parse_counters(PROC_IO, PROC_STATUS_CS, user=100, kernel=400)
    assert (a.writes, a.sleeps, a.user, a.kernel) == (1188735, 4412, 100, 400)
    with pytest.raises(ParseError):
        parse_counters("rchar: 1\n", PROC_STATUS_CS, 0, 0)
    n = 200_000  # GETs: 1.15 writes each (one to its client), one sleep per 100
    b = parse_counters(PROC_IO.replace("syscw: 1188735", f"syscw: {1188735 + 230_000}"),
                       PROC_STATUS_CS.replace("4412", str(4412 + 2000)),
                       user=100 + CLK_TCK // 10, kernel=400 + CLK_TCK)
    r = row("keyshard", 90_123.4, n, 98.5, a, b, backend_ticks=CLK_TCK // 2)
    assert r["rps"] == 90123 and r["busy %"] == 98.5
    assert r["server writes/GET"] == 0.15 and r["sleeps/GET"] == 0.01
    assert r["backends µs/GET"] == 2.5  # half a second of CPU over 200,000 GETs
    assert r["proxy µs/GET"] == 5.5 and r["proxy kernel µs/GET"] == 5.0
