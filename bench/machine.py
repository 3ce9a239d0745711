"""How much of the machine something else took during a run: the benchmark's noise gauge.

Rule 1: "ours" is the CPU of every process the benchmark runs (proxy, backends, the client,
        the benchmark itself); "foreign" is the busy CPU of the whole machine (/proc/stat,
        irq and softirq included) minus ours. Both in clock ticks over the same interval.
Rule 2: this only flags disturbed runs; it never corrects a figure.

Another engineer's test suite on the same 2 cores shows up here as foreign CPU, and steal
shows a noisy neighbour of the virtual machine.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

from bench.fleet import tree_cpu_ticks
from bench.parse import CpuTimes, parse_proc_stat_cpu

CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class Snapshot:
    at: float
    machine: CpuTimes
    ours: float          # ticks


def _rusage_ticks() -> float:
    """This process and its reaped children (the client, once subprocess.run returned)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime) * CLK_TCK


def snapshot(pids: list[int]) -> Snapshot:
    ours = _rusage_ticks()
    for pid in pids:
        try:
            ours += tree_cpu_ticks(pid)
        except (OSError, ValueError):      # a proxy that just died
            pass
    with open("/proc/stat") as f:
        machine = parse_proc_stat_cpu(f.read())
    return Snapshot(time.monotonic(), machine, ours)


def disturbance(a: Snapshot, b: Snapshot) -> dict[str, float]:
    """Foreign busy CPU and steal during [a, b], in % of the whole machine (all cores)."""
    capacity = max(b.at - a.at, 1e-6) * CLK_TCK * CORES
    foreign = (b.machine.busy - a.machine.busy) - (b.ours - a.ours)
    return {"foreign_cpu_pct": round(max(0.0, foreign) * 100 / capacity, 1),
            "steal_pct": round((b.machine.steal - a.machine.steal) * 100 / capacity, 1),
            "machine_busy_pct": round((b.machine.busy - a.machine.busy) * 100 / capacity, 1)}
