"""The listener's parked clients (keyshard.net.listener Rule 3), in process, on asyncio's own
loop and on uvloop, in front of a real redis-server: a client that sent nothing holds no
transport, is counted as a client connection, and becomes a normal client at its first byte
or its EOF; a listener that closes closes its parked clients; running out of descriptors
pauses accepting instead of spinning or crashing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from keyshard.config import parse_config
from keyshard.net.listener import Listener, listen
from keyshard.net.runtime import PoolRuntime
from keyshard.net.writer import Flusher
from tests.support.procs import Keyshard, RedisServer, free_port, pool_yaml
from tests.support.rig import resp

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer().start() as server:
        yield server


def in_process(redis: RedisServer, loop_name: str, scenario: Any, unix_path: str = "",
               parking: bool = True, **opts: Any) -> None:
    """Run `scenario(runtime, listener, port)` against a pool listening on a free port (or on
    `unix_path`); `parking=False` expects the loop's own server (no epoll)."""
    port = free_port()
    text = pool_yaml("alpha", port, [f"{redis.addr}:1 s0"], redis=True, **opts)
    if unix_path:
        text = text.replace(f"127.0.0.1:{port}", unix_path)
    (conf,) = parse_config(text, "t.yml")
    loop = LOOPS[loop_name]()
    try:
        async def main() -> None:
            runtime = PoolRuntime(conf, loop, Flusher(loop))
            listener = await listen(runtime)
            assert isinstance(listener, Listener) == parking
            try:
                await scenario(runtime, listener, port)
            finally:
                listener.close()
                runtime.close()
                await asyncio.sleep(0.05)

        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    assert check(), "condition not reached"


async def talk(sock: socket.socket, payload: bytes, want: bytes) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, payload)
    got = b""
    while len(got) < len(want):
        chunk = await loop.sock_recv(sock, 65536)
        assert chunk, f"closed after {got!r}"
        got += chunk
    assert got == want


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_idle_client_is_parked_then_promoted_by_its_first_request(redis: RedisServer,
                                                                   loop_name: str) -> None:
    async def scenario(runtime: PoolRuntime, listener: Listener, port: int) -> None:
        socks = [connect(port) for _ in range(20)]
        await until(lambda: runtime.parked == 20)
        assert not runtime.clients, "an idle client got a transport"
        assert len(listener.parked) == 20
        assert runtime.view()[1]["client_connections"] == 20
        assert runtime.connection_counts() == (20, 20)
        # the first request of one client makes it a ClientConn; the others stay parked
        await talk(socks[3], resp("SET", "k", "v") + resp("GET", "k"), b"+OK\r\n$1\r\nv\r\n")
        assert len(runtime.clients) == 1 and runtime.parked == 19
        assert runtime.view()[1]["client_connections"] == 20
        for sock in socks:
            sock.close()
        await until(lambda: not runtime.clients and runtime.parked == 0)
        assert runtime.view()[1]["client_connections"] == 0
        assert runtime.stats.client_eof == 20  # parked ones are promoted by their EOF
        assert runtime.stats.client_err == 0
        assert runtime.total_clients == 20

    in_process(redis, loop_name, scenario)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_client_connections_never_dip_while_parked_clients_are_promoted(
        redis: RedisServer, loop_name: str) -> None:
    """A promotion takes a loop iteration (the loop calls connection_made with call_soon):
    meanwhile the client is still counted as parked, so at every iteration each of the clients
    is counted once, as a connection or as an EOF. (It dipped: under a stalled machine a test
    caught the counts in that iteration.)"""
    count = 10

    async def scenario(runtime: PoolRuntime, listener: Listener, port: int) -> None:
        socks = [connect(port) for _ in range(count)]
        await until(lambda: runtime.parked == count)
        seen = []
        for sock in socks[:5]:
            sock.sendall(resp("PING"))  # promoted by a request ...
        for sock in socks[5:]:
            sock.close()  # ... or by its EOF
        for _ in range(2000):
            connections = runtime.view()[1]["client_connections"]
            seen.append(connections)
            assert connections + runtime.stats.client_eof == count, seen
            if runtime.stats.client_eof == 5 and len(runtime.clients) == 5:
                break
            await asyncio.sleep(0)
        assert runtime.parked == 0 and len(runtime.clients) == 5, seen
        for sock in socks[:5]:
            sock.close()

    in_process(redis, loop_name, scenario)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_parked_client_reset_counts_an_error(redis: RedisServer, loop_name: str) -> None:
    async def scenario(runtime: PoolRuntime, listener: Listener, port: int) -> None:
        sock = connect(port)
        await until(lambda: runtime.parked == 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
        await until(lambda: runtime.parked == 0 and not runtime.clients)
        assert runtime.stats.client_err == 1 and runtime.stats.client_eof == 0

    in_process(redis, loop_name, scenario)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_closing_the_listener_closes_parked_clients(redis: RedisServer, loop_name: str) -> None:
    async def scenario(runtime: PoolRuntime, listener: Listener, port: int) -> None:
        loop = asyncio.get_running_loop()
        idle = connect(port)
        busy = connect(port)
        await talk(busy, resp("PING"), b"+PONG\r\n")
        await until(lambda: runtime.parked == 1 and len(runtime.clients) == 1)
        listener.close()
        assert runtime.parked == 0 and not listener.parked
        assert await asyncio.wait_for(loop.sock_recv(idle, 10), 5) == b""
        with pytest.raises(OSError):  # nobody accepts any more
            socket.create_connection(("127.0.0.1", port), timeout=2).recv(1)
        await talk(busy, resp("PING"), b"+PONG\r\n")  # a promoted client is the app's to close
        idle.close()
        busy.close()

    in_process(redis, loop_name, scenario)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_parked_client_costs_a_fraction_of_a_promoted_one(redis: RedisServer,
                                                            loop_name: str) -> None:
    """Python-heap bytes per connection (tracemalloc), parked and then promoted by a PING."""
    count = 200

    async def scenario(runtime: PoolRuntime, listener: Listener, port: int) -> None:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            socks = [connect(port) for _ in range(count)]
            await until(lambda: runtime.parked == count)
            parked = tracemalloc.get_traced_memory()[0]
            for sock in socks:
                await talk(sock, resp("PING"), b"+PONG\r\n")
            await until(lambda: len(runtime.clients) == count)
            promoted = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
            for sock in socks:
                sock.close()
        per_parked = (parked - before) / count
        per_promoted = (promoted - before) / count
        assert per_parked < 200, f"{per_parked:.0f} bytes per parked client"
        assert per_promoted > 3 * per_parked, (per_parked, per_promoted)

    in_process(redis, loop_name, scenario)


def test_unix_socket_listener_parks_too(redis: RedisServer, tmp_path: Any) -> None:
    path = str(tmp_path / "ks.sock")

    async def scenario(runtime: PoolRuntime, listener: Listener, port: int) -> None:
        assert runtime.conf.listen_unix
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        sock.setblocking(False)
        await until(lambda: runtime.parked == 1)
        await talk(sock, resp("PING"), b"+PONG\r\n")
        assert runtime.parked == 0 and len(runtime.clients) == 1
        sock.close()

    in_process(redis, "uvloop", scenario, unix_path=path)


class LimitedKeyshard(Keyshard):
    """keyshard with few file descriptors (prlimit): it runs out while accepting."""

    def argv(self) -> list[str]:
        return ["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", *super().argv()]


FD_LIMIT = 40


def test_out_of_descriptors_pauses_accepting_and_recovers(redis: RedisServer) -> None:
    """Listener Rule 4: EMFILE stops accepting for a second (no spinning, no crash); once
    descriptors are free again, new clients are served."""
    port = free_port()
    conf = pool_yaml("alpha", port, [f"{redis.addr}:1 s0"], redis=True, backlog=512)
    with LimitedKeyshard(conf, verbose=5).start(port) as proxy:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]
        try:
            time.sleep(1.5)
            assert proxy.alive()
            assert "Too many open files" in proxy.log()
            cpu = proxy_cpu_seconds(proxy.pid)
            time.sleep(1.0)
            assert proxy_cpu_seconds(proxy.pid) - cpu < 0.5, "spinning on the listener"
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    sock.sendall(resp("PING"))
                    assert sock.recv(100) == b"+PONG\r\n"
                    break
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert proxy.alive()


def proxy_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ping_and_check_tcp_options(runtime: PoolRuntime, port: int) -> None:
    """One client PINGs; its accepted socket has TCP_NODELAY and SO_KEEPALIVE."""
    sock = connect(port)
    await talk(sock, resp("PING"), b"+PONG\r\n")
    (client,) = runtime.clients
    accepted = client.transport.get_extra_info("socket")
    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    assert runtime.total_clients == 1 and runtime.parked == 0
    sock.close()


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
@pytest.mark.parametrize("parking", [True, False])
def test_accepted_clients_get_tcp_options(redis: RedisServer, loop_name: str, parking: bool,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Set at accept when parked; by the transport's connection_made in Rule 3's fallback
    (no epoll: the loop's own server accepts, nothing is parked)."""
    if not parking:
        import select

        monkeypatch.delattr(select, "epoll")

    async def scenario(runtime: PoolRuntime, listener: Any, port: int) -> None:
        await ping_and_check_tcp_options(runtime, port)

    in_process(redis, loop_name, scenario, parking=parking, tcpkeepalive=True)
