"""Standard load tools run clean through keyshard: redis-benchmark and memcslap."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support.rig import Rig, exchange, resp

TESTS = "get,set,incr,lpush,lpop,sadd,spop,lrange_100,mset"


@pytest.fixture(scope="module")
def redis_rig() -> Iterator[Rig]:
    with Rig("keyshard", nbackends=2, extra=["-i", "100"]) as rig:
        yield rig


def stats(rig: Rig) -> bytes:
    return exchange(rig.proxy.stats_port, b"")


@pytest.mark.parametrize("pipeline", [1, 16])
def test_redis_benchmark_runs_clean(redis_rig: Rig, pipeline: int) -> None:
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(redis_rig.port), "-t", TESTS,
         "-n", "2000", "-c", "20", "-r", "100000", "-P", str(pipeline), "--csv"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith('"') and "test" not in line]
    names = {row.split(",")[0].strip('"').split(" ")[0] for row in rows}
    assert {"GET", "SET", "INCR", "LPUSH", "LPOP", "SADD", "SPOP", "MSET"} <= names, out.stdout
    for row in rows:
        assert float(row.split(",")[1].strip('"')) > 0, row
    # the proxy is healthy afterwards and no request went wrong
    assert exchange(redis_rig.port, resp("SET", "after", "1") + resp("GET", "after")) == \
        b"+OK\r\n$1\r\n1\r\n"
    assert b'"forward_error":0' in stats(redis_rig)


@pytest.mark.parametrize("test", ["set", "get"])
def test_memcslap_runs_clean(test: str) -> None:
    with Rig("keyshard", nbackends=2, redis=False, extra=["-i", "100"]) as rig:
        out = subprocess.run(
            ["memcslap", f"--servers=127.0.0.1:{rig.port}", f"--test={test}",
             "--concurrency=4", "--execute-number=2000"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Time total" in out.stdout and "rror" not in out.stdout, out.stdout
        assert rig.proxy.alive()
        sets = sum(_stat(b.port, b"cmd_set") for b in rig.backends)
        assert sets >= 2000 and min(_stat(b.port, b"cmd_set") for b in rig.backends) > 0
        if test == "get":
            assert sum(_stat(b.port, b"get_hits") for b in rig.backends) >= 2000
        assert exchange(rig.port, b"set after 0 0 1\r\n1\r\nget after\r\n") == \
            b"STORED\r\nVALUE after 0 1\r\n1\r\nEND\r\n"


def _stat(port: int, name: bytes) -> int:
    for line in exchange(port, b"stats\r\n").split(b"\r\n"):
        if line.startswith(b"STAT " + name + b" "):
            return int(line.split()[2])
    raise AssertionError(f"no stat {name!r}")
