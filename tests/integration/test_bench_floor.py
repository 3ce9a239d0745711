"""bench/floor.c, the floor proxy of `python -m bench --proxies ...,floor`, answers right.

It is a measuring instrument, not keyshard; but a floor that answered wrong (or fast because it
skipped the work) would make its figures worthless, so its replies are checked here against
the real redis-servers and memcached it sits in front of.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import fleet
from tests.support.procs import Memcached, Proc, RedisServer, free_port, wait_port
from tests.support.rig import exchange, read_exactly, resp


class Floor(Proc):
    def __init__(self, binary: Path, redis_ports: list[int], mc_port: int,
                 window_us: int = 0) -> None:
        super().__init__()
        self.env = {**os.environ, "FLOOR_HOLD_US": str(window_us)} if window_us else None
        self.port, self.mc_port = free_port(), free_port()
        self.argv = [str(binary), str(self.port), str(self.mc_port), str(mc_port),
                     *map(str, redis_ports)]

    def start(self) -> Floor:
        self._spawn(self.argv, self.env)
        wait_port(self.port, self.proc)
        wait_port(self.mc_port, self.proc)
        return self


@pytest.fixture(scope="module", params=[0, 200], ids=["no-window", "window-200us"])
def floor(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Floor, list[RedisServer]]]:
    binary = fleet.build_floor(tmp_path_factory.mktemp("floor"))
    with RedisServer() as r1, RedisServer() as r2, Memcached() as mc:
        r1.start()
        r2.start()
        mc.start()
        with Floor(binary, [r1.port, r2.port], mc.port, request.param) as f:
            f.start()
            yield f, [r1, r2]
            assert f.alive(), f.log()


def test_mget_is_split_over_both_servers_and_merged_in_key_order(
        floor: tuple[Floor, list[RedisServer]]) -> None:
    f, servers = floor
    keys = [f"floor:{i}" for i in range(40)]
    sets = b"".join(resp("SET", k, f"v{i}") for i, k in enumerate(keys))
    assert exchange(f.port, sets) == b"+OK\r\n" * len(keys)
    held = [set(s.client().keys("floor:*")) for s in servers]
    assert held[0] and held[1] and not held[0] & held[1]  # each key on one server, both used
    ask = keys[::-1] + ["floor:missing"] + keys[:3]
    want = b"*%d\r\n" % len(ask) + b"".join(
        b"$-1\r\n" if k == "floor:missing" else b"$%d\r\nv%d\r\n" % (len(f"v{keys.index(k)}"),
                                                                   keys.index(k))
        for k in ask)
    assert exchange(f.port, resp("MGET", *ask)) == want


def test_pipelined_requests_cut_at_every_byte_are_answered_in_order(
        floor: tuple[Floor, list[RedisServer]]) -> None:
    f, _ = floor
    reqs = (resp("SET", "floor:a", "1") + resp("MGET", "floor:a", "floor:b", "floor:a")
            + resp("GET", "floor:a") + resp("PING") + resp("INCR", "floor:n"))
    with socket.create_connection(("127.0.0.1", f.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(reqs)):
            s.sendall(reqs[i:i + 1])
        head = b"+OK\r\n*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n1\r\n$1\r\n1\r\n+PONG\r\n:"
        got = read_exactly(s, len(head) + 3)
    assert got.startswith(head) and got.endswith(b"\r\n"), got


def test_memcache_requests_and_quit(floor: tuple[Floor, list[RedisServer]]) -> None:
    f, _ = floor
    assert exchange(f.mc_port, b"set fk 5 0 3\r\nabc\r\nget fk nokey fk\r\n") == (
        b"STORED\r\nVALUE fk 5 3\r\nabc\r\nVALUE fk 5 3\r\nabc\r\nEND\r\n")
    with socket.create_connection(("127.0.0.1", f.mc_port), timeout=5) as s:
        s.sendall(b"quit\r\n")
        assert s.recv(16) == b""  # the client is closed, memcached's connection is not
    assert exchange(f.mc_port, b"get fk\r\n") == b"VALUE fk 5 3\r\nabc\r\nEND\r\n"


def test_load_tools_run_through_it(floor: tuple[Floor, list[RedisServer]]) -> None:
    f, servers = floor
    key = "key:__rand_int__"
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(f.port), "-c", "20", "-n", "4000",
         "-r", "1000", "-P", "4", "--csv", "MGET", *[key] * 10],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith('"MGET')]
    assert rows and float(rows[0].split(",")[1].strip('"')) > 0, out.stdout
    calls = [int(s.client().info("commandstats")["cmdstat_mget"]["calls"]) for s in servers]
    assert min(calls) > 0 and sum(calls) >= 4000  # split: fragments on both servers
    out = subprocess.run(
        ["memcslap", f"--servers=127.0.0.1:{f.mc_port}", "--test=set", "--concurrency=4",
         "--execute-number=500"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and "rror" not in out.stdout + out.stderr, out.stdout
    assert f.alive(), f.log()
