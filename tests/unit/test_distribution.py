"""keyshard.distribution against nutcracker 0.5.0 (reference doc §5).

tests/compat/test_placement.py checks the same continua against the real binary.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections import Counter

import pytest

from keyshard.distribution import (
    KETAMA_MAX_HOSTLEN,
    KetamaContinuum,
    ModulaContinuum,
    RandomContinuum,
    build_continuum,
    ketama_points_per_server,
    ketama_server_points,
)
from keyshard.hashing import fnv1a_64, hash_tag_key

# Equal-weight pool sizes up to 200 where float32 rounding gives 156 points, not 160.
N156 = [25, 47, 50, 55, 61, 71, 94, 100, 107, 109, 110, 115, 122, 142, 159, 163, 188, 193, 200]


def ketama(*servers: tuple[bytes, int]) -> KetamaContinuum:
    cont = build_continuum("ketama", servers, [True] * len(servers))
    assert isinstance(cont, KetamaContinuum)
    return cont


def npoints(cont: KetamaContinuum) -> Counter[int]:
    return Counter(cont.owners[:-1])


# -- ketama: points per server --------------------------------------------------------------

def test_equal_weights_give_160_except_the_float32_cases() -> None:
    odd = [n for n in range(1, 201) if ketama_points_per_server(1, n, n) != 160]
    assert odd == N156
    assert {ketama_points_per_server(1, n, n) for n in N156} == {156}


def test_25_servers_get_156_points_each() -> None:
    cont = ketama(*[(b"127.0.0.1:%d" % (7000 + i), 1) for i in range(25)])
    assert npoints(cont) == {i: 156 for i in range(25)}
    assert len(cont.values) == 25 * 156


def test_weights_1_2_3() -> None:
    cont = ketama((b"a", 1), (b"b", 2), (b"c", 3))
    assert npoints(cont) == {0: 80, 1: 160, 2: 240}


def test_omega_weight_gets_no_points() -> None:
    # README's example: 100000:1 -> the weight-1 server is never selected.
    assert ketama_points_per_server(100000, 100001, 2) == 316
    assert ketama_points_per_server(1, 100001, 2) == 0
    cont = ketama((b"big", 100000), (b"omega", 1))
    assert npoints(cont) == {0: 316}
    assert all(cont.dispatch(h) == 0 for h in range(0, 2**32, 2**20))


# -- ketama: point values -------------------------------------------------------------------

def test_md5_point_group() -> None:
    assert hashlib.md5(b"127.0.0.1:6380-0").hexdigest() == "2bf1582298ce8032194846682f2557c5"
    assert ketama_server_points(b"127.0.0.1:6380", 4) == (
        576254251, 847302296, 1749436441, 3310822703)


def test_upstream_server1_8_vectors() -> None:
    group8 = ketama_server_points(b"server1", 40)[32:36]
    assert group8[0] == 3853726576
    assert group8[3] == 2667054752


@pytest.mark.parametrize("name", [
    b"10.0.0.1",            # port 11211: the name is the host alone
    b"127.0.0.1:6379",
    b"/tmp/redis.sock:",    # unix socket: path and a trailing colon
    b"cache-node-\xc3\xa9",  # an explicit name, UTF-8
])
def test_points_hash_name_dash_index(name: bytes) -> None:
    points = ketama_server_points(name, 160)
    assert len(points) == 160
    for i in range(40):
        digest = hashlib.md5(name + b"-" + str(i).encode()).digest()
        assert points[4 * i:4 * i + 4] == struct.unpack("<4I", digest)


def test_long_names_are_cut_at_272_bytes() -> None:
    assert KETAMA_MAX_HOSTLEN == 272
    name = b"n" * 270  # "-0" .. "-9" fit; "-10" is cut to "-1", "-25" to "-2", ...
    points = ketama_server_points(name, 160)
    assert points[0:4] == struct.unpack("<4I", hashlib.md5(name + b"-0").digest())
    assert points[40:44] == points[4:8]  # "-10" -> "-1"
    assert points[100:104] == points[8:12]  # "-25" -> "-2"
    longer = b"n" * 300  # every point group is MD5 of the same 272 bytes
    assert set(ketama_server_points(longer, 160)) == set(
        struct.unpack("<4I", hashlib.md5(longer[:272]).digest()))


def test_continuum_is_sorted_and_wraps() -> None:
    cont = ketama((b"127.0.0.1:6380", 1), (b"127.0.0.1:6381", 1))
    assert cont.values == sorted(cont.values)
    assert len(cont.owners) == len(cont.values) + 1
    first, last = cont.values[0], cont.values[-1]
    assert cont.dispatch(0) == cont.owners[0]
    assert cont.dispatch(first) == cont.owners[0]
    assert cont.dispatch(first + 1) == cont.owners[1]
    assert cont.dispatch(last) == cont.owners[len(cont.values) - 1]
    assert cont.dispatch(last + 1) == cont.owners[0]  # wrap to the first point
    assert cont.dispatch(2**32 - 1) == cont.owners[0]


def test_ties_keep_server_order() -> None:
    # "a" and "t790915" (found by search) share the point 717967565. glibc's qsort is a
    # stable merge sort, so the point of the lower index ("a", sorted first) comes first and
    # takes the keys just below it; tests/compat checks this against nutcracker.
    cont = ketama((b"a", 1), (b"t790915", 1))
    i = cont.values.index(717967565)
    assert cont.values[i + 1] == 717967565
    assert cont.owners[i:i + 2] == [0, 1]
    assert cont.dispatch(717967565) == 0
    assert cont.dispatch(fnv1a_64(b"tie:5500")) == 0
    assert cont.values[i - 1] < fnv1a_64(b"tie:5500") < 717967565


# -- ketama: reference examples ---------------------------------------------------------------

def test_example_a_points() -> None:
    cont = ketama((b"127.0.0.1:6380", 1), (b"127.0.0.1:6381", 1))
    assert list(zip(cont.values[:4], cont.owners[:4])) == [
        (23409604, 0), (29345296, 0), (43450939, 1), (101479841, 0)]
    assert (cont.values[-1], cont.owners[-2]) == (4289099568, 1)
    assert npoints(cont) == {0: 160, 1: 160}


@pytest.mark.parametrize(("key", "port"), [
    (b"foo", 6381), (b"bar", 6381), (b"key:1", 6380), (b"key:2", 6380), (b"key:3", 6380),
    (b"hello", 6380), (b"a", 6381),
])
def test_example_a_keys(key: bytes, port: int) -> None:
    cont = ketama((b"127.0.0.1:6380", 1), (b"127.0.0.1:6381", 1))
    assert cont.dispatch(fnv1a_64(key)) == port - 6380


def test_example_a_empty_key_is_hash_0() -> None:
    cont = ketama((b"127.0.0.1:6380", 1), (b"127.0.0.1:6381", 1))
    assert cont.dispatch(0) == 0


@pytest.mark.parametrize(("key", "server"), [
    (b"foo", 1), (b"bar", 4), (b"key:1", 3), (b"user:{42}:name", 3), (b"user:{42}:email", 3),
    (b"hello", 4), (b"a", 3),
])
def test_example_b_keys(key: bytes, server: int) -> None:
    cont = ketama(*[(b"server%d" % i, 1) for i in range(1, 5)])
    assert cont.dispatch(fnv1a_64(hash_tag_key(key, b"{}"))) == server - 1


def test_dead_servers_keep_their_index_but_get_no_points() -> None:
    servers = [(b"s%d" % i, 1) for i in range(4)]
    cont = build_continuum("ketama", servers, [True, False, True, False])
    assert isinstance(cont, KetamaContinuum)
    assert cont.nlive == 2
    assert npoints(cont) == {0: 160, 2: 160}
    # The live servers' points are those of a two-server pool of the same names.
    assert cont.values == ketama(servers[0], servers[2]).values


def test_dead_servers_change_the_float32_count() -> None:
    # 26 servers, one dead: 25 live servers get 156 points each.
    servers = [(b"s%d" % i, 1) for i in range(26)]
    cont = build_continuum("ketama", servers, [True] * 25 + [False])
    assert isinstance(cont, KetamaContinuum)
    assert set(npoints(cont).values()) == {156}


# -- modula -----------------------------------------------------------------------------------

def test_modula_weights_are_slots() -> None:
    cont = build_continuum("modula", [(b"a", 1), (b"b", 2), (b"c", 1)], [True] * 3)
    assert isinstance(cont, ModulaContinuum)
    assert cont.slots == [0, 1, 1, 2]


@pytest.mark.parametrize(("key", "hash", "server"), [
    (b"foo", 4275688823, 2), (b"bar", 322520602, 1), (b"key:1", 2519685833, 1),
    (b"key:2", 2519684528, 0),
])
def test_modula_example(key: bytes, hash: int, server: int) -> None:
    cont = build_continuum("modula", [(b"a", 1), (b"b", 2), (b"c", 1)], [True] * 3)
    assert fnv1a_64(key) == hash
    assert cont.dispatch(hash) == server


def test_modula_skips_dead_servers() -> None:
    cont = build_continuum("modula", [(b"a", 1), (b"b", 2), (b"c", 3)], [True, False, True])
    assert isinstance(cont, ModulaContinuum)
    assert cont.slots == [0, 2, 2, 2]
    assert [cont.dispatch(h) for h in range(5)] == [0, 2, 2, 2, 0]


# -- random -----------------------------------------------------------------------------------

def test_random_one_slot_per_live_server_and_ignores_the_hash() -> None:
    servers = [(b"a", 1), (b"b", 50), (b"c", 1), (b"d", 1)]
    cont = build_continuum("random", servers, [True, True, False, True], random.Random(7))
    assert isinstance(cont, RandomContinuum)
    assert cont.slots == [0, 1, 3]
    seen = Counter(cont.dispatch(12345) for _ in range(3000))
    assert set(seen) == {0, 1, 3}
    assert all(800 < n < 1200 for n in seen.values())  # weights ignored


def test_random_uses_the_given_rng() -> None:
    servers = [(b"a", 1), (b"b", 1), (b"c", 1)]
    c1 = build_continuum("random", servers, [True] * 3, random.Random(42))
    c2 = build_continuum("random", servers, [True] * 3, random.Random(42))
    assert [c1.dispatch(0) for _ in range(50)] == [c2.dispatch(0) for _ in range(50)]


# -- no live server, bad input --------------------------------------------------------------

@pytest.mark.parametrize("dist", ["ketama", "modula", "random"])
def test_no_live_server_dispatches_minus_1(dist: str) -> None:
    cont = build_continuum(dist, [(b"a", 1), (b"b", 1)], [False, False], random.Random(0))
    assert cont.nlive == 0
    assert cont.dispatch(123) == -1


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="distribution"):
        build_continuum("rendezvous", [(b"a", 1)], [True])
    with pytest.raises(ValueError, match="live"):
        build_continuum("ketama", [(b"a", 1)], [True, True])
    with pytest.raises(ValueError, match="weight"):
        build_continuum("modula", [(b"a", 0)], [True])
