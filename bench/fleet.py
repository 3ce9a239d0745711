"""The processes under test: redis-servers, memcached and the proxies, on 127.0.0.1.

Rule 1: every child gets a free port and a log file under the run directory, and is stopped by
        its own PID (SIGTERM, then SIGKILL after a timeout); nothing is ever killed by name.
Rule 2: a proxy can be restarted on the same ports after it died, so one crash costs one run,
        not the rest of the benchmark.
Rule 3: CPU, RSS and open sockets are read for the proxy's whole process tree (the PID we
        started and its descendants), so a future multi-process keyshard is measured whole.

This mirrors tests/support/procs.py on purpose instead of importing it: the benchmark must keep
working while the test support changes under it, and it needs restart and process-tree reads.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.parse import ParseError, parse_proc_stat, parse_vmrss_kb

ROOT = Path(__file__).resolve().parents[1]
NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"

FLOOR_SRC = ROOT / "bench" / "floor.c"

_handed_out: set[int] = set()


def build_c(src: Path, out_dir: Path, *flags: str) -> Path:
    """Compile one C file of bench/ (`-O2`, then `flags` after the source, e.g. `-lpthread`)
    into out_dir, named as the file without `.c`; the binary's path, or RuntimeError with
    the compiler's complaint."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise RuntimeError(f"{src.name} needs a C compiler (cc or gcc, or $CC)")
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / src.stem
    cp = subprocess.run([cc, "-O2", "-o", str(binary), str(src), *flags], capture_output=True,
                        text=True, timeout=120, check=False)
    if cp.returncode != 0:
        raise RuntimeError(f"building {src.name} failed: {cp.stderr.strip()[-400:]}")
    return binary


def build_floor(out_dir: Path) -> Path:
    """Compile bench/floor.c (the floor proxy, `--proxies ...,floor`) into out_dir."""
    return build_c(FLOOR_SRC, out_dir)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on and this run has not handed out."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port")


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


# --pin: the CPUs of the proxies and backends, and of the clients (None: not pinned). Set once
# by the command line before anything starts; children inherit it, threads included.
SERVER_CPUS: set[int] | None = None
CLIENT_CPUS: set[int] | None = None


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A `preexec_fn` that pins the child to `cpus` before it runs (None when not pinning)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


class Child:
    """One process we started: argv, log file, stop by PID."""

    def __init__(self, name: str, argv: list[str], log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"--- {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.log_path.parent,
                                         env=self.env,
                                         preexec_fn=pinned(SERVER_CPUS))  # noqa: PLW1509 (no threads here)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def start_redis(port: int, log_dir: Path) -> Child:
    c = Child(f"redis-{port}", [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", str(log_dir),
                                "--daemonize", "no"], log_dir)
    c.spawn()
    wait_port(port, c.proc)
    return c


def start_memcached(port: int, log_dir: Path) -> Child:
    c = Child(f"memcached-{port}", [MEMCACHED, "-l", "127.0.0.1", "-p", str(port), "-U", "0",
                                    "-u", "root", "-m", "256", "-c", "4096"], log_dir)
    c.spawn()
    wait_port(port, c.proc)
    return c


@dataclass
class Backends:
    redis: list[Child]
    memcached: Child
    redis_ports: list[int]
    memcached_port: int

    def children(self) -> list[Child]:
        return [*self.redis, self.memcached]


def start_backends(log_dir: Path) -> Backends:
    """Two redis-servers and one memcached, started one by one (a failure stops the rest)."""
    started: list[Child] = []
    try:
        rports = [free_port(), free_port()]
        for p in rports:
            started.append(start_redis(p, log_dir))
        mport = free_port()
        started.append(start_memcached(mport, log_dir))
    except BaseException:
        for c in started:
            c.stop()
        raise
    return Backends(started[:2], started[2], rports, mport)


def pool_conf(redis_listen: int, mc_listen: int, b: Backends, timeout_ms: int = 0) -> str:
    """The nutcracker.yml both proxies read: the same pools, only the listen ports differ;
    with `timeout_ms`, both pools have that `timeout:` (`--timeout`)."""
    common = ["  hash: fnv1a_64", "  distribution: ketama"]
    if timeout_ms:
        common.append(f"  timeout: {timeout_ms}")
    lines = ["alpha:", f"  listen: 127.0.0.1:{redis_listen}", *common, "  redis: true",
             "  servers:", *[f"   - 127.0.0.1:{p}:1" for p in b.redis_ports],
             "", "gamma:", f"  listen: 127.0.0.1:{mc_listen}", *common,
             "  servers:", f"   - 127.0.0.1:{b.memcached_port}:1", ""]
    return "\n".join(lines)


@dataclass
class Proxy:
    """nutcracker or keyshard over the shared backends, with its own ports."""

    kind: str                     # "nutcracker", "keyshard", "keyshard+metrics" (serving
                                  # /metrics) or "floor" (bench/floor.c)
    label: str                    # unique name in the report ("nutcracker", "nutcracker-2")
    log_dir: Path
    backends: Backends
    src: Path | None = None       # keyshard: the source tree to import (None: this checkout's);
                                  # floor: its binary (build_floor)
    window_us: int = 0            # floor: FLOOR_HOLD_US, its batching window (0: none)
    timeout_ms: int = 0           # the pools' `timeout:` (0: none; the floor reads no config)
    redis_port: int = field(default_factory=free_port)
    mc_port: int = field(default_factory=free_port)
    stats_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    child: Child | None = None
    starts: int = 0
    failed_starts: int = 0        # consecutive; reset by a start that works
    start_error: str = ""

    def conf_path(self) -> Path:
        return self.log_dir / f"{self.label}.yml"

    def argv(self) -> list[str]:
        if self.kind == "floor":  # no config file: its ports, memcached's, the redis-servers'
            assert self.src is not None
            return [str(self.src), str(self.redis_port), str(self.mc_port),
                    str(self.backends.memcached_port), *map(str, self.backends.redis_ports)]
        prog = [NUTCRACKER] if self.kind == "nutcracker" else [sys.executable, "-m", "keyshard"]
        metrics = (["--metrics-addr", f"127.0.0.1:{self.metrics_port}"]
                   if self.kind == "keyshard+metrics" else [])
        return [*prog, "-c", str(self.conf_path()), "-s", str(self.stats_port),
                "-a", "127.0.0.1", "-v", "4", *metrics]

    def env(self) -> dict[str, str] | None:
        if self.kind == "floor" and self.window_us:
            return {**os.environ, "FLOOR_HOLD_US": str(self.window_us)}
        if not self.kind.startswith("keyshard"):
            return None
        env = dict(os.environ)
        src = self.src if self.src is not None else ROOT / "src"
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def start(self) -> None:
        """Start (or restart) on the same ports; raises RuntimeError with the log tail."""
        self.conf_path().write_text(pool_conf(self.redis_port, self.mc_port, self.backends,
                                              self.timeout_ms))
        self.child = Child(self.label, self.argv(), self.log_dir, self.env())
        self.child.spawn()
        self.starts += 1
        try:
            for port in (self.redis_port, self.mc_port):
                wait_port(port, self.child.proc, timeout=15.0)
        except RuntimeError as err:
            self.child.stop()
            self.failed_starts += 1
            last = self.child.log_tail(1).strip() or "(empty log)"
            raise RuntimeError(f"{self.label} did not start: {err}; log: {last}") from None
        self.failed_starts = 0

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid


# ---- reading a process tree from /proc ------------------------------------------------------

def tree_pids(pid: int) -> list[int]:
    """pid and its live descendants (via /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    return out


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def tree_cpu_ticks(pid: int) -> int:
    """utime+stime (+ reaped children's) summed over the tree, in clock ticks."""
    return sum(tree_cpu_split(pid))


def tree_cpu_split(pid: int) -> tuple[int, int]:
    """(user, kernel) clock ticks summed over the tree, reaped children's included."""
    user = kernel = 0
    for p in tree_pids(pid):
        try:
            st = parse_proc_stat(_read(f"/proc/{p}/stat"))
        except (OSError, ParseError):
            if p == pid:
                raise
            continue
        user += st.user_ticks
        kernel += st.kernel_ticks
    return user, kernel


def tree_rss_kb(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        try:
            total += parse_vmrss_kb(_read(f"/proc/{p}/status"))
        except (OSError, ParseError):
            if p == pid:
                raise
    return total


def tree_socket_fds(pid: int) -> int:
    """Open sockets in the tree (listeners, clients, server connections)."""
    n = 0
    for p in tree_pids(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                n += os.readlink(f"/proc/{p}/fd/{fd}").startswith("socket:")
            except OSError:
                pass
    return n
