"""Operations on a real keyshard process: daemon mode, pid file, log file, signals, stopping.

- A daemonized keyshard (-d -p -o) is driven by signals: SIGTTIN/SIGTTOU change the level
  (and the change shows in what is logged), SIGHUP reopens the log after a rename, SIGUSR1 is
  only logged, SIGTERM stops it cleanly and removes the pid file.
- SIGTERM/SIGINT are graceful: the listener closes at once, requests already read are
  answered (a slow server), idle clients are closed, the exit status is 0; a second signal
  skips the rest of the grace; the grace itself is bounded (in process, with a short grace).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keyshard import app
from keyshard.cli import Options
from keyshard.config import parse_config
from tests.support.faults import BlackHole
from tests.support.procs import ROOT, Keyshard, free_port, pool_yaml, wait_port
from tests.support.rig import read_until_eof, resp

ENV = {**os.environ,
       "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


class SlowServer(threading.Thread):
    """Answers every redis request with `reply`, `delay` seconds after receiving it.

    Requests are counted as RESP arrays (`*` at the start of a line): enough for the plain
    GETs the tests send."""

    def __init__(self, delay: float, reply: bytes = b"+SLOW\r\n") -> None:
        super().__init__(daemon=True)
        self.delay = delay
        self.reply = reply
        self.timers: list[threading.Timer] = []
        self.running = True
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.lsock.settimeout(0.05)
        self.port = self.lsock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.start()

    def run(self) -> None:
        while self.running:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        while self.running:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            n = data.count(b"\n*") + data.startswith(b"*")
            timer = threading.Timer(self.delay, self._answer, (conn, n))
            self.timers.append(timer)
            timer.start()

    def _answer(self, conn: socket.socket, n: int) -> None:
        try:
            conn.sendall(self.reply * n)
        except OSError:
            pass

    def close(self) -> None:
        self.running = False
        for timer in self.timers:
            timer.cancel()
        self.join(5)
        for conn in self.conns:
            conn.close()
        self.lsock.close()


def wait_for(check: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.02)


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a daemon's parent may not reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def lines(path: Path) -> list[str]:
    """Log messages without the `[time] file:line ` prefix."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.split(" ", 3)[3] if line.startswith("[") else line
            for line in text.splitlines()]


def logged(path: Path, message: str) -> Callable[[], bool]:
    return lambda: message in lines(path)


def connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# --------------------------------------------------------------------------------------------
# A daemonized keyshard and its signals


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[dict[str, object]]:
    """keyshard -d -p -o over a pool whose only server is dead (a GET logs a server close
    at level 6, which is how the tests see the level change)."""
    port, stats = free_port(), free_port()
    conf = tmp_path / "nutcracker.yml"
    conf.write_text(pool_yaml("alpha", port, [f"127.0.0.1:{free_port()}:1 dead"], redis=True))
    pid_file, log_file = tmp_path / "ks.pid", tmp_path / "ks.log"
    parent = subprocess.run(
        [sys.executable, "-m", "keyshard", "-d", "-p", str(pid_file), "-o", str(log_file),
         "-c", str(conf), "-s", str(stats), "-a", "127.0.0.1", "-v", "5"],
        env=ENV, cwd=tmp_path, capture_output=True, timeout=30, check=False)
    assert (parent.returncode, parent.stdout, parent.stderr) == (0, b"", b"")
    wait_for(pid_file.exists, what="the pid file")
    pid = int(pid_file.read_text())
    try:
        wait_port(port)
        yield {"pid": pid, "port": port, "pid_file": pid_file, "log": log_file}
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)  # our own daemon, by its pid


def refused_get(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(resp("GET", "k"))
        sock.shutdown(socket.SHUT_WR)
        assert read_until_eof(sock, 5) == b"-ERR Connection refused\r\n"


def test_daemon_log_levels_reopen_and_clean_exit(daemon: dict[str, object]) -> None:
    pid, port = int(daemon["pid"]), int(daemon["port"])  # type: ignore[call-overload]
    log_file, pid_file = Path(str(daemon["log"])), Path(str(daemon["pid_file"]))
    assert pid_file.read_text() == str(pid) and running(pid)
    wait_for(lambda: any(f"started on pid {pid}" in m for m in lines(log_file)), what="start")

    refused_get(port)  # level 5: the server close (level 6) is not logged
    os.kill(pid, signal.SIGTTIN)
    wait_for(logged(log_file, "up log level to 6"), what="level up")
    assert "signal 21 (SIGTTIN) received, up logging level" in lines(log_file)
    assert not any(m.startswith("close server") for m in lines(log_file))
    refused_get(port)  # level 6: now it is
    wait_for(lambda: any(m.startswith("close server ") for m in lines(log_file)),
             what="a level-6 line")
    os.kill(pid, signal.SIGTTOU)
    wait_for(logged(log_file, "down log level to 5"), what="level down")
    assert lines(log_file).count("up log level to 6") == 1  # logged once, not twice

    rotated = log_file.with_name("ks.log.1")
    log_file.rename(rotated)  # logrotate's mv ...
    os.kill(pid, signal.SIGHUP)  # ... then HUP: the old file gets this line, the new one what follows
    wait_for(logged(rotated, "signal 1 (SIGHUP) received, reopening log file"), what="HUP")
    wait_for(log_file.exists, what="the reopened log file")
    os.kill(pid, signal.SIGUSR1)
    wait_for(logged(log_file, "signal 10 (SIGUSR1) received"), what="USR1 in the new file")
    assert "signal 10 (SIGUSR1) received" not in lines(rotated)

    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not running(pid), what="exit")
    assert not pid_file.exists()
    after = lines(log_file)
    assert "signal 15 (SIGTERM) received, exiting" in after
    assert after[-1] == "done, keyshard done"  # logged only on the exit-0 path


# --------------------------------------------------------------------------------------------
# Graceful stop of a real process


@pytest.fixture
def slow() -> Iterator[SlowServer]:
    server = SlowServer(delay=1.0)
    yield server
    server.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_answers_in_flight_requests(slow: SlowServer, sig: signal.Signals) -> None:
    port = free_port()
    proxy = Keyshard(pool_yaml("alpha", port, [f"127.0.0.1:{slow.port}:1 slow"], redis=True),
                     extra=["-o", "proxy.log"])
    proxy.start(port)
    try:
        busy = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        busy.sendall(resp("GET", "a") + resp("GET", "b"))
        wait_for(lambda: slow.timers, what="the request at the server")
        started = time.monotonic()
        proxy.send_signal(sig)
        wait_for(lambda: connect_refused(port), timeout=1, what="the listener to close")
        assert read_until_eof(idle, 2) == b""  # an idle client is closed at once
        assert read_until_eof(busy, 10) == b"+SLOW\r\n+SLOW\r\n"  # answered, then closed
        assert proxy.proc is not None
        assert proxy.proc.wait(10) == 0
        assert time.monotonic() - started < app.STOP_GRACE
        log = lines(proxy.dir / "proxy.log")
        assert f"signal {sig.value} ({sig.name}) received, exiting" in log
        assert log[-1] == "done, keyshard done"
    finally:
        proxy.cleanup()


def test_second_signal_skips_the_grace() -> None:
    hole = BlackHole()
    port = free_port()
    proxy = Keyshard(pool_yaml("alpha", port, [f"127.0.0.1:{hole.port}:1 hole"], redis=True))
    proxy.start(port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(resp("GET", "never"))
            wait_for(lambda: hole.accepted, what="the server connection")
            time.sleep(0.1)
            started = time.monotonic()
            proxy.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            proxy.send_signal(signal.SIGTERM)
            assert proxy.proc is not None
            assert proxy.proc.wait(10) == 0
            assert time.monotonic() - started < app.STOP_GRACE / 2
            assert read_until_eof(sock, 2) == b""  # unanswered: closed without a reply
    finally:
        proxy.cleanup()
        hole.close()


def test_grace_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, with a 0.3 s grace: a request that is never answered does not hold the
    stop longer than that."""
    monkeypatch.setattr(app, "STOP_GRACE", 0.3)
    hole = BlackHole()
    port = free_port()
    pools = parse_config(pool_yaml("alpha", port, [f"127.0.0.1:{hole.port}:1 h"], redis=True),
                         "t.yml")
    loop = asyncio.new_event_loop()
    try:
        proxy = app.Proxy(Options(stats_port=free_port(), stats_addr="127.0.0.1"), pools, loop)

        async def scenario() -> tuple[float, bytes]:
            serving = loop.create_task(proxy.serve())
            for _ in range(200):
                if proxy.listeners:
                    break
                await asyncio.sleep(0.01)
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 5)
            writer.write(resp("GET", "never"))
            await writer.drain()
            for _ in range(500):
                if hole.accepted:
                    break
                await asyncio.sleep(0.01)
            assert hole.accepted, "the proxy never reached the server"
            started = loop.time()
            proxy.stop(signal.SIGTERM)
            await asyncio.wait_for(serving, 5)
            elapsed = loop.time() - started
            data = await asyncio.wait_for(reader.read(), 2)
            writer.close()
            return elapsed, data

        elapsed, data = loop.run_until_complete(scenario())
        assert 0.3 <= elapsed < 1.5 and data == b""
        assert not any(r.clients for r in proxy.runtimes)
        assert not any(s.conns for r in proxy.runtimes for s in r.slots)
    finally:
        loop.close()
        hole.close()
