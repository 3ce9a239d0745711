"""Medians, ratios and the three outputs: a Markdown table, results.json and results.png.

Rule 1: a cell is the median over the runs that succeeded; a cell with no successful run says
        "failed", and a cell missing some runs is marked † with the errors listed under the table.
Rule 2: ratios are other/baseline, the baseline being the first proxy given (nutcracker), for
        requests/s (higher is better) and for CPU µs/request (lower is better).
Rule 3: the CPU table models a CPU-bound run: requests/s = busy share x cores / (all CPU per
        request). Its "model" ratio is checked against the measured one in the same table, and
        its "bound" is the model with the proxy's user time taken to zero, everything else
        as measured: what making the proxy's own code free would give, short of making fewer
        syscalls or changing what the backends and the client do.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.workloads import SPLIT_KEYS, Run, Workload

Results = dict[str, dict[str, list[Run]]]      # workload name -> proxy label -> runs

_SHORT = {"nutcracker": "nut", "keyshard": "ks", "keyshard+metrics": "ks+m"}


def short(label: str) -> str:
    kind, _, num = label.partition("-")
    return _SHORT.get(kind, kind) + (f"-{num}" if num else "")


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


@dataclass
class Cell:
    """The medians of one workload on one proxy."""

    runs: int
    ok: int
    rps: float | None = None
    rps_min: float | None = None
    rps_max: float | None = None
    p99_ms: float | None = None
    cpu_us_per_req: float | None = None
    cpu_min: float | None = None
    cpu_max: float | None = None
    rss_kb: float | None = None
    idle: dict[str, float | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    per_rep_rps: list[float | None] = field(default_factory=list)    # None: that run failed
    per_rep_cpu: list[float | None] = field(default_factory=list)
    foreign_max_pct: float | None = None
    steal_max_pct: float | None = None  # the hypervisor's share (a noisy neighbour)
    split: dict[str, float | None] = field(default_factory=dict)   # SPLIT_KEYS -> µs/request
    busy_pct: float | None = None
    discarded: int = 0  # attempts measured again for a disturbance (cli.least_disturbed)

    @property
    def failed(self) -> bool:
        return self.ok == 0


_IDLE_KEYS = ("rss_before_kb", "rss_idle_kb", "rss_used_kb", "rss_after_kb", "kb_per_idle_conn",
              "kb_per_used_conn")


def cell(runs: list[Run]) -> Cell:
    good = [r for r in runs if r.ok]
    c = Cell(runs=len(runs), ok=len(good), errors=[r.error for r in runs if r.error],
             per_rep_rps=[r.rps if r.ok else None for r in runs],
             per_rep_cpu=[r.cpu_us_per_req if r.ok else None for r in runs])
    foreign = [r.extra["foreign_cpu_pct"] for r in runs if "foreign_cpu_pct" in r.extra]
    c.foreign_max_pct = max(foreign, default=None)
    c.steal_max_pct = max((r.extra["steal_pct"] for r in runs if "steal_pct" in r.extra),
                          default=None)
    c.discarded = sum(len(r.extra.get("discarded", ())) for r in runs)
    if not good:
        return c
    rps = [r.rps for r in good if r.rps is not None]
    cpu = [r.cpu_us_per_req for r in good if r.cpu_us_per_req is not None]
    c.rps, c.rps_min, c.rps_max = _median(list(rps)), min(rps, default=None), max(rps, default=None)
    c.cpu_us_per_req = _median(list(cpu))
    c.cpu_min, c.cpu_max = min(cpu, default=None), max(cpu, default=None)
    c.p99_ms = _median([r.p99_ms for r in good])
    c.rss_kb = _median([r.rss_kb for r in good])
    splits = [r.extra["cpu_split_us"] for r in good if "cpu_split_us" in r.extra]
    if splits:
        c.split = {k: _median([sp.get(k) for sp in splits]) for k in SPLIT_KEYS}
    c.busy_pct = _median([r.extra.get("machine_busy_pct") for r in good])
    if any("kb_per_idle_conn" in r.extra for r in good):
        c.idle = {k: _median([r.extra.get(k) for r in good]) for k in _IDLE_KEYS}
    return c


def summarize(results: Results) -> dict[str, dict[str, Cell]]:
    return {w: {p: cell(runs) for p, runs in per.items()} for w, per in results.items()}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def paired(other: list[float | None], base: list[float | None]) -> list[float]:
    """Ratios of the runs of one repetition (adjacent in time, so slow drift cancels)."""
    return [r for o, b in zip(other, base) if (r := ratio(o, b)) is not None]


# ---- Markdown ---------------------------------------------------------------------------------

def _fmt(v: float | None, spec: str, c: Cell) -> str:
    if c.failed:
        return "failed"
    text = "n/a" if v is None else format(v, spec)
    return text + (" †" if c.ok < c.runs else "")


def _ratio_fmt(v: float | None, pairs: list[float] | None = None) -> str:
    if v is None:
        return "—"
    if pairs and len(pairs) > 1:
        return f"{v:.2f}× ({min(pairs):.2f}–{max(pairs):.2f})"
    return f"{v:.2f}×"


DISTURBED_PCT = 10.0


def markdown(summary: dict[str, dict[str, Cell]], workloads: list[Workload],
             labels: list[str], meta: dict[str, Any]) -> str:
    base, others = labels[0], labels[1:]
    s = [short(p) for p in labels]
    head = (["workload"] + [f"rps {x}" for x in s]
            + [f"rps {short(o)}/{short(base)}" for o in others]
            + [f"p99 ms {x}" for x in s] + [f"CPU µs/req {x}" for x in s]
            + [f"CPU {short(o)}/{short(base)}" for o in others] + [f"RSS MB {x}" for x in s])
    out = [_preamble(meta, labels), "", "| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for w in workloads:
        cells = summary.get(w.name)
        if not cells:
            continue
        disturbed = any(max(c.foreign_max_pct or 0, c.steal_max_pct or 0) > DISTURBED_PCT
                        for c in cells.values())
        row = [w.title + (" ‡" if disturbed else "")]
        row += [_fmt(cells[p].rps, ",.0f", cells[p]) for p in labels]
        row += [_ratio_fmt(ratio(cells[o].rps, cells[base].rps),
                           paired(cells[o].per_rep_rps, cells[base].per_rep_rps)) for o in others]
        row += [_fmt(cells[p].p99_ms, ".3f", cells[p]) for p in labels]
        row += [_fmt(cells[p].cpu_us_per_req, ".2f", cells[p]) for p in labels]
        row += [_ratio_fmt(ratio(cells[o].cpu_us_per_req, cells[base].cpu_us_per_req),
                           paired(cells[o].per_rep_cpu, cells[base].per_rep_cpu)) for o in others]
        row += [_fmt(None if (kb := cells[p].rss_kb) is None else kb / 1024, ".1f", cells[p])
                for p in labels]
        out.append("| " + " | ".join(row) + " |")
    out += _disturbance(summary)
    out += _idle_table(summary, labels, meta)
    out += _cpu_table(summary, workloads, labels)
    out += _failures(summary, workloads)
    return "\n".join(out) + "\n"


def _sharing(meta: dict[str, Any]) -> str:
    if meta.get("pinned"):
        return (f"{meta.get('cores')} cores, pinned (--pin): the client on the last, backends "
                f"and proxy on the others")
    return f"{meta.get('cores')} cores shared by client, backends and proxy"


def _preamble(meta: dict[str, Any], labels: list[str]) -> str:
    sources = meta.get("sources") or {}
    legend = ", ".join(f"{short(p)} = {p}" + (f" (from {sources[p]})" if p in sources else "")
                       for p in labels)
    return (f"## keyshard benchmark — {meta.get('date', '')}\n\n"
            f"Medians of {meta.get('reps')} interleaved run(s) per cell; {legend}; "
            f"ratios are against {labels[0]} (rps: higher is better, CPU/request: lower is "
            f"better). {_sharing(meta)}. "
            f"commit {meta.get('commit', '?')}; p99 from redis-benchmark (memcslap gives none)."
            + (f" Both pools have `timeout: {meta['timeout_ms']}` (--timeout)."
               if meta.get("timeout_ms") else ""))


def _disturbance(summary: dict[str, dict[str, Cell]]) -> list[str]:
    cells = [c for per in summary.values() for c in per.values()]
    worst = [c.foreign_max_pct for c in cells if c.foreign_max_pct is not None]
    if not worst:
        return []
    steal = max((c.steal_max_pct for c in cells if c.steal_max_pct is not None), default=0.0)
    note = (f"\nRatios: of the medians, with the range of the per-repetition ratios in brackets. "
            f"Other processes took at most {max(worst):.0f}% of the machine during a run, "
            f"the hypervisor (steal) at most {steal:.0f}%.")
    if max(max(worst), steal) > DISTURBED_PCT:
        note += (f" ‡ marks workloads with a run where either took more than "
                 f"{DISTURBED_PCT:.0f}% (foreign_cpu_pct, steal_pct in results.json): treat "
                 f"those requests/s with care; CPU/request is much less affected.")
    discarded = sum(c.discarded for c in cells)
    if discarded:
        note += (f" {discarded} run(s) were measured again because more than "
                 f"{DISTURBED_PCT:.0f}% of the machine was taken during them "
                 f"(--retry-disturbed); the least disturbed attempt of each is in the table.")
    return [note]


def _idle_table(summary: dict[str, dict[str, Cell]], labels: list[str],
                meta: dict[str, Any]) -> list[str]:
    cells = summary.get("idle1000")
    if not cells:
        return []
    n = meta.get("idle_conns", 1000)
    out = ["", f"Idle connections ({n} held open, fresh proxy each run):", "",
           ("| proxy | RSS before MB | RSS with idle MB | RSS after one PING each MB "
            "| RSS after GET load MB | KB per idle conn | KB per conn after one request |"),
           "|---|---:|---:|---:|---:|---:|---:|"]
    for p in labels:
        c = cells.get(p)
        if c is None:
            continue
        vals = [c.idle.get(k) for k in _IDLE_KEYS]
        mb = [_fmt(None if v is None else v / 1024, ".1f", c) for v in vals[:4]]
        out.append(f"| {p} | " + " | ".join(mb)
                   + f" | {_fmt(vals[4], '.2f', c)} | {_fmt(vals[5], '.2f', c)} |")
    return out


def _total(c: Cell) -> float | None:
    vals = [c.split.get(k) for k in SPLIT_KEYS]
    return None if c.failed or None in vals else sum(v for v in vals if v is not None)


def model_ratios(c: Cell, base: Cell) -> tuple[float | None, float | None]:
    """Rule 3: (the model's rps ratio c/base, the same with c's proxy user time at zero)."""
    tc, tb, user = _total(c), _total(base), c.split.get("proxy_user")
    if tc is None or tb is None or user is None or not c.busy_pct or not base.busy_pct:
        return None, None
    scale = c.busy_pct / base.busy_pct
    return scale * tb / tc, (scale * tb / (tc - user) if tc > user else None)


def _cpu_table(summary: dict[str, dict[str, Cell]], workloads: list[Workload],
               labels: list[str]) -> list[str]:
    rows = []
    for w in workloads:
        cells = summary.get(w.name, {})
        base = cells.get(labels[0])
        for p in labels:
            c = cells.get(p)
            if c is None or base is None or _total(c) is None:
                continue
            vals = [_fmt(c.split.get(k), ".2f", c) for k in SPLIT_KEYS]
            model, bound = model_ratios(c, base) if p != labels[0] else (None, None)
            measured = ratio(c.rps, base.rps) if p != labels[0] else None
            rows.append(f"| {w.title} | {short(p)} | " + " | ".join(vals)
                        + f" | {_fmt(_total(c), '.2f', c)} | {_fmt(c.busy_pct, '.0f', c)} | "
                        + " | ".join(_ratio_fmt(v) for v in (measured, model, bound)) + " |")
    if not rows:
        return []
    return ["", ("Where the machine's CPU went, µs per request (medians): the client, the "
                 "backends, the proxy's user and kernel time. model = the rps ratio a CPU-bound "
                 "run predicts from these (busy % × cores / total); bound = the same with the "
                 "proxy's user time at zero and everything else as measured."), "",
            ("| workload | proxy | client | backends | proxy user | proxy kernel | total "
             "| machine busy % | rps ratio measured | model | bound |"),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows]


def _failures(summary: dict[str, dict[str, Cell]], workloads: list[Workload]) -> list[str]:
    out = []
    for w in workloads:
        for p, c in summary.get(w.name, {}).items():
            for i, err in enumerate(dict.fromkeys(c.errors)):
                err = " ".join(err.split())[:300]
                out.append(f"- {w.name} / {p} ({c.runs - c.ok} of {c.runs} failed): {err}"
                           if i == 0 else f"  also: {err}")
    return ["", "† some runs failed:", *out] if out else []


# ---- JSON and PNG -----------------------------------------------------------------------------

def write_json(path: Path, meta: dict[str, Any], results: Results,
               summary: dict[str, dict[str, Cell]], labels: list[str]) -> None:
    base = labels[0]
    doc = {
        "meta": meta,
        "summary": {w: {p: vars(c) | {
            "rps_ratio": ratio(c.rps, cells[base].rps) if p != base else None,
            "cpu_ratio": ratio(c.cpu_us_per_req, cells[base].cpu_us_per_req) if p != base
            else None} for p, c in cells.items()} for w, cells in summary.items()},
        "runs": [r.as_dict() for per in results.values() for runs in per.values() for r in runs],
    }
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def write_png(path: Path, summary: dict[str, dict[str, Cell]], workloads: list[Workload],
              labels: list[str], meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = [w for w in workloads if w.name in summary]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8.0, 1.5 * len(ws) + 2), 9))
    _bars(ax1, summary, ws, labels, "rps", 1e-3, "thousand requests/s (higher is better)")
    _bars(ax2, summary, ws, labels, "cpu_us_per_req", 1.0,
          "proxy CPU µs per request (lower is better)")
    worst = max((c.foreign_max_pct or 0 for cells in summary.values() for c in cells.values()),
                default=0)
    steal = max((c.steal_max_pct or 0 for cells in summary.values() for c in cells.values()),
                default=0)
    fig.suptitle(f"{' vs '.join(labels)} — medians of {meta.get('reps')} interleaved run(s), "
                 f"whiskers min–max, labels {short(labels[-1])}/{short(labels[0])}; "
                 f"{_sharing(meta)}; other processes took up to {worst:.0f}% "
                 f"of the machine during a run, steal up to {steal:.0f}%", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]


def _bars(ax: Any, summary: dict[str, dict[str, Cell]], ws: list[Workload], labels: list[str],
          metric: str, scale: float, ylabel: str) -> None:
    lo_hi = {"rps": ("rps_min", "rps_max"), "cpu_us_per_req": ("cpu_min", "cpu_max")}[metric]
    width, named = 0.8 / len(labels), set()
    top = max((getattr(summary[w.name][p], lo_hi[1]) or 0) * scale     # whiskers included
              for w in ws for p in labels if p in summary[w.name]) or 1.0
    for i, p in enumerate(labels):
        for x, w in enumerate(ws):
            c = summary[w.name].get(p)
            xpos = x - 0.4 + width * (i + 0.5)
            v = None if c is None else getattr(c, metric)
            if v is None:
                ax.text(xpos, top * 0.02, "failed", rotation=90, ha="center", va="bottom",
                        fontsize=8, color="#c44e52")
                continue
            lo, hi = (getattr(c, a) for a in lo_hi)
            ax.bar(xpos, v * scale, width, color=_COLORS[i % len(_COLORS)],
                   label=None if p in named else p,
                   yerr=[[(v - lo) * scale], [(hi - v) * scale]], capsize=2, ecolor="#333")
            named.add(p)
            base = summary[w.name].get(labels[0])
            r = ratio(v, None if base is None else getattr(base, metric))
            if i > 0 and r is not None:
                ax.text(xpos, max(v, hi) * scale + top * 0.01, f"{r:.2f}×", ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(range(len(ws)), [w.title for w in ws], fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, top * 1.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)
