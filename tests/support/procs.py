"""Real processes for the tests: redis-server, memcached, nutcracker and keyshard on 127.0.0.1.

Rule 1: every process is started on a free port, in a temporary directory, and stopped by its
        own PID (never by name) when the test is done.
Rule 2: `start()` returns only once the process accepts connections, or raises with its log.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"

_used_ports: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections (32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


PORTS = range(20000, max(_ephemeral_low(), 21000))


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (and that this run has not handed out),
    below the kernel's range for outgoing connections: a port from `bind(0)` is in that
    range, and between its check and the server's bind an outgoing connection of another
    test could take it (a redis-server exited "before listening" on 55087 that way)."""
    for _ in range(500):
        port = random.choice(PORTS)
        if port in _used_ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _used_ports.add(port)
        return port
    raise RuntimeError("no free port")


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Proc:
    """A child process with a working directory and a log file, stopped by PID."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix=f"ks-{type(self).__name__.lower()}-"))
        self.log_path = self.dir / "out.log"

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir, env=env,
            )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout / 2)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(sig)  # a second signal skips keyshard's stop grace
                try:
                    self.proc.wait(timeout / 2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout)
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class RedisServer(Proc):
    def __init__(self, port: int | None = None, *extra: str) -> None:
        super().__init__()
        self.port = port or free_port()
        self.extra = list(extra)

    def start(self) -> RedisServer:
        self._spawn([
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no", *self.extra,
        ])
        wait_port(self.port, self.proc)
        return self

    def client(self, **kw: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


class Memcached(Proc):
    def __init__(self, port: int | None = None, *extra: str) -> None:
        super().__init__()
        self.port = port or free_port()
        self.extra = list(extra)

    def start(self) -> Memcached:
        self._spawn([MEMCACHED, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-u", "root",
                     "-m", "64", *self.extra])
        wait_port(self.port, self.proc)
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


def pool_yaml(name: str, listen_port: int, servers: list[str], **opts: Any) -> str:
    """One pool of a nutcracker.yml. `servers` are full entries ("127.0.0.1:6379:1 name")."""
    lines = [f"{name}:", f"  listen: 127.0.0.1:{listen_port}"]
    for key, value in opts.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        lines.append(f"  {key}: {value}")
    lines.append("  servers:")
    lines += [f"   - {s}" for s in servers]
    return "\n".join(lines) + "\n"


class _Proxy(Proc):
    """Shared by nutcracker and keyshard: same config text, same flags."""

    def __init__(self, conf_text: str, stats_port: int | None = None, verbose: int = 4,
                 extra: list[str] | None = None) -> None:
        super().__init__()
        self.conf_path = self.dir / "nutcracker.yml"
        self.conf_path.write_text(conf_text)
        self.stats_port = stats_port or free_port()
        self.verbose = verbose
        self.extra = extra or []

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def start(self, *ports: int) -> Any:
        self._spawn(self.argv() + [
            "-c", str(self.conf_path), "-s", str(self.stats_port), "-a", "127.0.0.1",
            "-v", str(self.verbose), *self.extra,
        ], env=self.env())
        # started means every port listens: a test's first stats() must not race the listener
        for port in dict.fromkeys((*ports, self.stats_port)):
            try:
                wait_port(port, self.proc)
            except RuntimeError as err:
                raise RuntimeError(f"{err}\n--- log:\n{self.log()}") from None
        return self


class Nutcracker(_Proxy):
    def argv(self) -> list[str]:
        return [NUTCRACKER]


class Keyshard(_Proxy):
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "keyshard"]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
        return env
