"""Parsers for what the benchmark reads: redis-benchmark CSV, memcslap text, /proc files.

Rule 1: pure functions of text; no I/O here, so tests/unit/test_bench_parse.py can feed them
        outputs captured from the real tools.
Rule 2: a parser that does not find what it needs raises ParseError with the reason; it never
        returns a made-up number.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass


class ParseError(ValueError):
    """The tool's output does not contain the figures we need."""


@dataclass(frozen=True)
class RedisBenchRow:
    """One row of `redis-benchmark --csv` (redis-benchmark 7: latencies in milliseconds)."""

    test: str
    rps: float
    avg_ms: float
    min_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


_RB_FIELDS = ("rps", "avg_latency_ms", "min_latency_ms", "p50_latency_ms",
              "p95_latency_ms", "p99_latency_ms", "max_latency_ms")


def parse_redis_benchmark_csv(text: str) -> list[RedisBenchRow]:
    """Rows of `redis-benchmark --csv` output.

    Lines that are not CSV rows (warnings, "Error: ...") are skipped; a header without any row
    (redis-benchmark exits that way when the server closes the connection) is a ParseError.
    """
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    if not lines or not lines[0].startswith('"test"'):
        raise ParseError("no redis-benchmark CSV header in output")
    rows = []
    for rec in csv.DictReader(io.StringIO("\n".join(lines))):
        try:
            values = [float(rec[f]) for f in _RB_FIELDS]
        except (KeyError, TypeError, ValueError) as err:
            raise ParseError(f"bad redis-benchmark CSV row {rec!r}: {err}") from None
        rows.append(RedisBenchRow(rec["test"], *values))
    if not rows:
        raise ParseError("redis-benchmark printed a CSV header but no result row")
    return rows


@dataclass(frozen=True)
class MemcslapResult:
    """What memcslap (libmemcached-tools 1.1) prints for one `--test` run."""

    test: str           # "get", "set" or "mget"
    keys: int           # operations in the timed phase (all threads together)
    threads: int
    seconds: float      # wall time of the timed phase (1 ms resolution)
    loaded: int         # keys set by the untimed single-connection load phase (get/mget only)
    errors: int         # "Fatal error ..." lines (memcslap still exits 0 after those)

    @property
    def rps(self) -> float:
        if self.seconds <= 0:
            raise ParseError("memcslap timed phase took 0 s; run more operations")
        return self.keys / self.seconds

    @property
    def requests(self) -> int:
        """Every request the proxy saw: the load phase plus the timed phase."""
        return self.keys + self.loaded


_MS_TIMED = re.compile(
    r"^Time to (?P<test>get|set|mget)\s+(?P<keys>\d+) keys by\s+(?P<threads>\d+) threads:"
    r"\s+(?P<secs>[\d.]+) seconds\.", re.MULTILINE)
_MS_LOAD = re.compile(r"^Time to set\s+(?P<keys>\d+) keys:\s+[\d.]+ seconds\.", re.MULTILINE)
_MS_ERROR = re.compile(r"^Fatal error", re.MULTILINE)


def parse_memcslap(text: str) -> MemcslapResult:
    """memcslap's stdout (and stderr, where its "Fatal error" lines go) as one text."""
    m = _MS_TIMED.search(text)
    if m is None:
        raise ParseError("no 'Time to <test> N keys by T threads' line in memcslap output")
    load = _MS_LOAD.search(text)
    return MemcslapResult(
        test=m["test"], keys=int(m["keys"]), threads=int(m["threads"]),
        seconds=float(m["secs"]), loaded=int(load["keys"]) if load else 0,
        errors=len(_MS_ERROR.findall(text)),
    )


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the benchmark uses (CPU in clock ticks)."""

    pid: int
    comm: str
    state: str
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    rss_pages: int

    @property
    def cpu_ticks(self) -> int:
        """Own CPU plus that of reaped children (a worker that exits still counts)."""
        return self.user_ticks + self.kernel_ticks

    @property
    def user_ticks(self) -> int:
        return self.utime + self.cutime

    @property
    def kernel_ticks(self) -> int:
        return self.stime + self.cstime


def parse_proc_stat(text: str) -> ProcStat:
    """/proc/<pid>/stat. comm may hold spaces and parentheses, so split after the last ')'."""
    head, sep, tail = text.rpartition(")")
    if not sep or " (" not in head:
        raise ParseError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    pid_s, _, comm = head.partition(" (")
    f = tail.split()
    # f[0] is field 3 (state); field n of proc(5) is f[n - 3].
    if len(f) < 22:
        raise ParseError(f"/proc/<pid>/stat has {len(f) + 2} fields, expected at least 24")
    try:
        return ProcStat(pid=int(pid_s), comm=comm, state=f[0], ppid=int(f[1]),
                        utime=int(f[11]), stime=int(f[12]), cutime=int(f[13]),
                        cstime=int(f[14]), rss_pages=int(f[21]))
    except ValueError as err:
        raise ParseError(f"bad /proc/<pid>/stat field: {err}") from None


def parse_vmrss_kb(status_text: str) -> int:
    """VmRSS from /proc/<pid>/status, in kB (a zombie has no VmRSS line: ParseError)."""
    m = re.search(r"^VmRSS:\s+(\d+) kB$", status_text, re.MULTILINE)
    if m is None:
        raise ParseError("no VmRSS line in /proc/<pid>/status")
    return int(m[1])


def ticks_to_us(ticks: int, clk_tck: int) -> float:
    """Clock ticks (os.sysconf('SC_CLK_TCK') per second) to microseconds."""
    return ticks * 1_000_000 / clk_tck


@dataclass(frozen=True)
class CpuTimes:
    """The aggregate `cpu` line of /proc/stat, in clock ticks summed over all CPUs."""

    user: int
    nice: int
    system: int
    idle: int
    iowait: int
    irq: int
    softirq: int
    steal: int

    @property
    def busy(self) -> int:
        """Everything but idle, iowait and steal. irq and softirq are in: /proc/stat splits
        them out, but a process's stime includes the softirq work (loopback TCP) done in
        its context, so per-process utime+stime only add up against this sum."""
        return self.user + self.nice + self.system + self.irq + self.softirq


def parse_proc_stat_cpu(text: str) -> CpuTimes:
    """The first line of /proc/stat: `cpu  user nice system idle iowait irq softirq steal ...`."""
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == "cpu":
            if len(f) < 9:
                raise ParseError(f"short cpu line in /proc/stat: {line!r}")
            try:
                return CpuTimes(*(int(x) for x in f[1:9]))
            except ValueError:
                raise ParseError(f"bad cpu line in /proc/stat: {line!r}") from None
    raise ParseError("no aggregate cpu line in /proc/stat")
