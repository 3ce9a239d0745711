"""keyshard in front of real memcached processes: pymemcache and raw sockets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymemcache.client.base import Client

from tests.support.rig import Rig, assert_cut_everywhere, exchange


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with Rig("keyshard", nbackends=3, redis=False, timeout=2000) as r:
        yield r


@pytest.fixture
def mc(rig: Rig) -> Iterator[Client]:
    rig.flush_backends()
    c = Client(("127.0.0.1", rig.port), timeout=5)
    yield c
    c.close()


def test_every_command(mc: Client) -> None:
    assert mc.set("a", b"1") is True
    assert mc.get("a") == b"1"
    assert mc.add("a", b"2", noreply=False) is False
    assert mc.add("b", b"2", noreply=False) is True
    assert mc.replace("b", b"3", noreply=False) is True
    assert mc.append("b", b"4", noreply=False) is True
    assert mc.prepend("b", b"0", noreply=False) is True
    assert mc.get("b") == b"034"
    value, cas = mc.gets("b")
    assert value == b"034"
    assert mc.cas("b", b"x", cas, noreply=False) is True
    assert mc.cas("b", b"y", cas, noreply=False) is False
    assert mc.incr("n", 1) is None
    mc.set("n", b"10")
    assert mc.incr("n", 5) == 15 and mc.decr("n", 20) == 0
    assert mc.touch("n", 100, noreply=False) is True
    assert mc.delete("n", noreply=False) is True and mc.delete("n", noreply=False) is False
    assert mc.version().startswith(b"1.")


def test_multi_get_merges_in_key_order(rig: Rig, mc: Client) -> None:
    keys = [f"item:{i * 7}" for i in range(100)]
    for k in keys:
        assert mc.set(k, k.encode() * 3, noreply=False) is True
    held = [sum(exchange(b.port, b"get %s\r\n" % k.encode()).startswith(b"VALUE") for k in keys)
            for b in rig.backends]
    assert sum(held) == 100 and min(held) > 0  # spread over every server
    query = b"get " + b" ".join(k.encode() for k in keys[::-1]) + b" nope %s %s\r\n" % (keys[0].encode(), keys[0].encode())
    got = exchange(rig.port, query)
    expected = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k.encode(), 3 * len(k), k.encode() * 3)
                        for k in keys[::-1] + [keys[0], keys[0]]) + b"END\r\n"
    assert got == expected
    assert mc.get_many(keys) == {k: k.encode() * 3 for k in keys}


def test_noreply_is_silent(rig: Rig) -> None:
    got = exchange(rig.port, b"set nr 0 0 1 noreply\r\nx\r\nget nr\r\ndelete nr noreply\r\nget nr\r\n")
    assert got == b"VALUE nr 0 1\r\nx\r\nEND\r\nEND\r\n"


@pytest.mark.parametrize("bad", [
    b"stats\r\n", b"flush_all\r\n", b"GET a\r\n", b"delete a 0\r\n", b"gat 0 a\r\n",
    b"get " + b"k" * 251 + b"\r\n", b"set a 0 0 1\r\nxy\r\n", b"set a 0 -1 1\r\nx\r\n",
])
def test_rejected_input_closes_after_earlier_replies(rig: Rig, bad: bytes) -> None:
    got = exchange(rig.port, b"set r 0 0 1\r\n1\r\nget r\r\n" + bad + b"get r\r\n")
    assert got == b"STORED\r\nVALUE r 0 1\r\n1\r\nEND\r\n"


def test_key_of_250_bytes(rig: Rig) -> None:
    key = b"k" * 250
    got = exchange(rig.port, b"set %s 0 0 1\r\nv\r\nget %s\r\n" % (key, key))
    assert got == b"STORED\r\nVALUE %s 0 1\r\nv\r\nEND\r\n" % key


def test_quit(rig: Rig) -> None:
    assert exchange(rig.port, b"set q 0 0 1\r\n1\r\nquit\r\nget q\r\n") == b"STORED\r\n"


def test_large_values(mc: Client) -> None:
    for size in (1, 1000, 100_000, 1_000_000 - 100):
        assert mc.set(f"big{size}", b"v" * size) is True
        assert mc.get(f"big{size}") == b"v" * size


def test_pipelined_large_sets_arrive_whole(rig: Rig, mc: Client) -> None:
    """Sets of a few KB to 45 KB pipelined in one stream, several to a memcached per write:
    each stored whole."""
    values = {b"pl%d" % i: bytes([97 + i % 26]) * (2000 + 731 * i) for i in range(60)}
    stream = b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in values.items())
    assert exchange(rig.port, stream) == b"STORED\r\n" * len(values)
    assert mc.get_many(list(values)) == values
    assert mc.gets(b"pl7")[0] == values[b"pl7"]


def test_stream_cut_at_every_byte(rig: Rig) -> None:
    stream = b"set c 5 0 3\r\nabc\r\nget c x c\r\nincr n 1\r\n"
    expected = b"STORED\r\nVALUE c 5 3\r\nabc\r\nVALUE c 5 3\r\nabc\r\nEND\r\nNOT_FOUND\r\n"
    assert_cut_everywhere(rig, stream, expected)
