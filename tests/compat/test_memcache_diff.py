"""Differential test: the same random memcached command streams through nutcracker and keyshard.

Each proxy has its own three memcacheds (same config, same server names, so the same
placement); the bytes each client receives must be identical. Streams mix every command,
with and without noreply, values of 1 byte to 100 KB, multi-gets across servers with
duplicates and missing keys, and end (sometimes) with a command nutcracker rejects.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from tests.support.rig import Rig, first_difference, replies_then_tail, stream_differences

KEYS = [b"a", b"b", b"c", b"user:1", b"user:2", b"n", b"\xc3\xa9t\xc3\xa9", b"k" * 250,
        b"x:" + b"9" * 30]


def key(r: random.Random) -> bytes:
    return r.choice(KEYS)


def value(r: random.Random) -> bytes:
    """1 byte to 100 KB, plain or binary (any byte, CR and LF included)."""
    size = r.choice([1, 2, 10, 100, 1000, 20_000, 100_000])
    if r.random() < 0.5:
        return b"v" * size
    chunk = bytes(r.randrange(256) for _ in range(64))
    return (chunk * (size // 64 + 1))[:size]


def storage(verb: bytes, cas: bool = False) -> Callable[[random.Random], tuple[bytes, bool]]:
    def make(r: random.Random) -> tuple[bytes, bool]:
        data = value(r)
        noreply = r.random() < 0.2
        unique = b" %d" % r.randrange(5) if cas else b""
        line = b"%s %s %d %d %d%s%s\r\n" % (verb, key(r), r.randrange(2**16), 0, len(data),
                                           unique, b" noreply" if noreply else b"")
        return line + data + b"\r\n", noreply
    return make


def simple(fmt: Callable[[random.Random], bytes], noreply_ok: bool = True
           ) -> Callable[[random.Random], tuple[bytes, bool]]:
    def make(r: random.Random) -> tuple[bytes, bool]:
        noreply = noreply_ok and r.random() < 0.2
        return fmt(r) + (b" noreply" if noreply else b"") + b"\r\n", noreply
    return make


GENERATORS = [
    storage(b"set"), storage(b"set"), storage(b"add"), storage(b"replace"),
    storage(b"append"), storage(b"prepend"),
    simple(lambda r: b"get " + key(r), False),
    simple(lambda r: b"get " + b" ".join(key(r) for _ in range(r.randint(2, 8))), False),
    simple(lambda r: b"gets " + b" ".join(key(r) for _ in range(r.randint(1, 4))), False),
    simple(lambda r: b"incr %s %d" % (key(r), r.randrange(100))),
    simple(lambda r: b"decr %s %d" % (key(r), r.randrange(100))),
    simple(lambda r: b"touch %s %d" % (key(r), r.randrange(1000, 5000))),
    simple(lambda r: b"delete " + key(r)),
    storage(b"cas", cas=True),
]

REJECTED = [b"stats\r\n", b"flush_all\r\n", b"GET a\r\n", b"delete a 0\r\n",
            b"get " + b"k" * 251 + b"\r\n", b"set a 0 0 1\r\nxy\r\n", b"gat 0 a\r\n"]


def stream(seed: int) -> tuple[bytes, int, bytes]:
    rng = random.Random(seed)
    parts = [rng.choice(GENERATORS)(rng) for _ in range(rng.randint(5, 40))]
    payload = b"".join(p for p, _ in parts)
    count = sum(1 for _, noreply in parts if not noreply)
    tail = rng.choice(REJECTED) + b"get a\r\n" if rng.random() < 0.3 else b""
    return payload, count, tail


@pytest.fixture(scope="module")
def rigs() -> Iterator[tuple[Rig, Rig]]:
    with Rig("nutcracker", nbackends=3, redis=False, timeout=3000) as nut, \
            Rig("keyshard", nbackends=3, redis=False, timeout=3000) as ks:
        yield nut, ks


def test_random_streams_match_nutcracker(rigs: tuple[Rig, Rig]) -> None:
    differences = stream_differences(*rigs, ((seed, *stream(seed)) for seed in range(120)))
    assert not differences, "\n".join(differences[:3])


def test_multi_get_across_servers_matches(rigs: tuple[Rig, Rig]) -> None:
    keys = [b"mg:%d" % i for i in range(60)]
    load = b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(k), k) for k in keys[::2])
    query = b"get " + b" ".join(keys + keys[:5]) + b"\r\n"
    got = []
    for rig in rigs:
        rig.flush_backends()
        got.append(replies_then_tail(rig, load + query, 31, b""))
    assert got[0] == got[1], first_difference(got[0], got[1])
    assert got[0].count(b"VALUE") == 33
