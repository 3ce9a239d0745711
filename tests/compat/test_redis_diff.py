"""Differential test: the same random Redis command streams through nutcracker and keyshard.

Each proxy has its own two redis-servers (same config, same ports order); the byte streams
each client receives must be identical. Streams cover every command class, multi-key split
commands with duplicates and missing keys, hash tags, EVAL, type errors, and end (sometimes)
with a command nutcracker rejects, which closes the connection.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.rig import Rig, resp, stream_differences

KEYS = ["a", "b", "c", "user:{7}:x", "user:{7}:y", "n1", "n2", "h", "l", "s", "z", "\xe9t\xe9",
        "k" * 40, ""]


def k(rng: random.Random) -> str:
    return rng.choice(KEYS)


def v(rng: random.Random) -> str:
    return rng.choice(["1", "2", "-3", "x", "hello world", "0", "3.5", "\x00\xff" * 3])


# Each generator returns one command (a list of args). Deterministic commands only.
GENERATORS: list[Callable[[random.Random], list[str]]] = [
    lambda r: ["SET", k(r), v(r)],
    lambda r: ["GET", k(r)],
    lambda r: ["GETSET", k(r), v(r)],
    lambda r: ["APPEND", k(r), v(r)],
    lambda r: ["INCR", k(r)],
    lambda r: ["INCRBY", k(r), r.choice(["5", "-2", "x"])],
    lambda r: ["INCRBYFLOAT", k(r), "1.5"],
    lambda r: ["DECR", k(r)],
    lambda r: ["STRLEN", k(r)],
    lambda r: ["SETNX", k(r), v(r)],
    lambda r: ["GETRANGE", k(r), "0", "2"],
    lambda r: ["SETRANGE", k(r), "1", v(r)],
    lambda r: ["EXISTS", k(r), k(r), k(r)],
    lambda r: ["TYPE", k(r)],
    lambda r: ["PERSIST", k(r)],
    lambda r: ["MGET"] + [k(r) for _ in range(r.randint(1, 6))],
    lambda r: ["DEL"] + [k(r) for _ in range(r.randint(1, 4))],
    lambda r: ["UNLINK"] + [k(r) for _ in range(r.randint(1, 3))],
    lambda r: ["TOUCH"] + [k(r) for _ in range(r.randint(1, 4))],
    lambda r: ["MSET"] + [x for _ in range(r.randint(1, 4)) for x in (k(r), v(r))],
    lambda r: ["HSET", k(r), "f", v(r), "g", v(r)],
    lambda r: ["HGET", k(r), "f"],
    lambda r: ["HGETALL", k(r)],
    lambda r: ["HINCRBY", k(r), "f", "2"],
    lambda r: ["HMGET", k(r), "f", "g", "nope"],
    lambda r: ["HDEL", k(r), "f"],
    lambda r: ["RPUSH", k(r), v(r), v(r)],
    lambda r: ["LPUSH", k(r), v(r)],
    lambda r: ["LRANGE", k(r), "0", "-1"],
    lambda r: ["LPOP", k(r)],
    lambda r: ["LLEN", k(r)],
    lambda r: ["LINDEX", k(r), "0"],
    lambda r: ["SADD", k(r), v(r), v(r)],
    lambda r: ["SCARD", k(r)],
    lambda r: ["SISMEMBER", k(r), v(r)],
    lambda r: ["SMISMEMBER", k(r), v(r), v(r)],
    lambda r: ["ZADD", k(r), "1", "a", "2", "b"],
    lambda r: ["ZRANGE", k(r), "0", "-1", "WITHSCORES"],
    lambda r: ["ZSCORE", k(r), "a"],
    lambda r: ["ZINCRBY", k(r), "2", "a"],
    lambda r: ["ZCOUNT", k(r), "-inf", "+inf"],
    lambda r: ["PFADD", k(r), v(r)],
    lambda r: ["PFCOUNT", k(r)],
    lambda r: ["SETBIT", k(r), "7", "1"],
    lambda r: ["BITCOUNT", k(r)],
    lambda r: ["EXPIRE", k(r), "1000"],
    lambda r: ["EVAL", "return {KEYS[1], ARGV[1]}", "1", k(r), v(r)],
    lambda r: ["EVAL", "return redis.call('incr', KEYS[1])", "1", k(r)],
    lambda r: ["EVAL", "return redis.error_reply('boom')", "1", k(r)],
    lambda r: ["PING"],
    lambda r: ["SORT", k(r), "ALPHA"],
]

REJECTED: list[list[str]] = [
    ["KEYS", "*"], ["SELECT", "1"], ["INFO"], ["MULTI"], ["FLUSHALL"], ["PING", "x"],
    ["GET"], ["MSET", "a", "1", "b"], ["EVAL", "return 1", "0"], ["MOVE", "a", "1"],
    ["EXPIRE", "a", "100", "NX"], ["XADD", "s", "*", "f", "v"],
]


def stream(seed: int) -> tuple[bytes, int, bytes]:
    """A random pipeline, its number of commands, and (sometimes) a rejected tail."""
    rng = random.Random(seed)
    cmds = [rng.choice(GENERATORS)(rng) for _ in range(rng.randint(5, 60))]
    tail = b""
    if rng.random() < 0.3:
        # never answered: the connection is closed at the rejected command
        tail = encode(rng.choice(REJECTED)) + encode(["GET", "a"])
    return b"".join(encode(c) for c in cmds), len(cmds), tail


def encode(cmd: list[str]) -> bytes:
    return resp(*[a.encode("latin-1") for a in cmd])


@pytest.fixture(scope="module")
def rigs() -> Iterator[tuple[Rig, Rig]]:
    opts: dict[str, Any] = {"hash_tag": '"{}"', "timeout": 3000}
    with Rig("nutcracker", **opts) as nut, Rig("keyshard", **opts) as ks:
        yield nut, ks


def test_random_streams_match_nutcracker(rigs: tuple[Rig, Rig]) -> None:
    differences = stream_differences(*rigs, ((seed, *stream(seed)) for seed in range(150)))
    assert not differences, "\n".join(differences[:3])


def test_same_placement_on_backends(rigs: tuple[Rig, Rig]) -> None:
    nut, ks = rigs
    for rig in rigs:
        rig.flush_backends()
        rig.exchange(b"".join(resp("SET", f"p{i}", "1") for i in range(500)))
    for a, b in zip(nut.backends, ks.backends):
        assert sorted(a.client().keys("*")) == sorted(b.client().keys("*"))
