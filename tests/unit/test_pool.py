"""keyshard.pool: routing, failure counting, ejection, retry and rebuild (reference §5, §6, §9).

The clock is a plain float passed in; nothing sleeps.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from keyshard import pool as pool_module
from keyshard.config import PoolConf, ServerConf
from keyshard.distribution import build_continuum
from keyshard.hashing import fnv1a_64, hash_tag_key
from keyshard.pool import ServerPool

KEYS = [b"key:%d" % i for i in range(2000)]


def server(name: str, weight: int = 1) -> ServerConf:
    return ServerConf(pname=f"{name}:{weight}", name=name, host="127.0.0.1", port=6379,
                      weight=weight, is_unix=False)


def conf(*servers: ServerConf, **opts: Any) -> PoolConf:
    return PoolConf(name="alpha", listen="127.0.0.1:22121", listen_host="127.0.0.1",
                    listen_port=22121, redis=True, servers=list(servers), **opts)


def names(n: int) -> list[ServerConf]:
    return [server(f"s{i}") for i in range(n)]


def eject_conf(n: int = 3, **opts: Any) -> PoolConf:
    settings: dict[str, Any] = {"auto_eject_hosts": True, "server_failure_limit": 2,
                                "server_retry_timeout": 30000}
    settings.update(opts)
    return conf(*names(n), **settings)


def placement(pool: ServerPool, now: float = 0.0) -> list[int]:
    return [pool.route(k, now) for k in KEYS]


def expected(pool: ServerPool, live: list[bool]) -> list[int]:
    """A continuum built from scratch over `live`, for comparison."""
    cont = build_continuum(pool.conf.distribution,
                           [(s.conf.name.encode(), s.conf.weight) for s in pool.servers], live)
    return [cont.dispatch(fnv1a_64(k)) for k in KEYS]


# -- construction ---------------------------------------------------------------------------

def test_servers_carry_conf_index_and_state() -> None:
    p = ServerPool(conf(server("a"), server("bb", 2)))
    assert [(s.index, s.name, s.conf.weight) for s in p.servers] == [(0, b"a", 1), (1, b"bb", 2)]
    assert all(s.failure_count == 0 and s.next_retry == 0.0 and not s.ejected
               for s in p.servers)
    assert p.nlive == 2
    assert p.next_rebuild == float("inf")
    assert not p.auto_eject


def test_bad_conf() -> None:
    with pytest.raises(ValueError, match="no servers"):
        ServerPool(conf())
    with pytest.raises(ValueError, match="hash"):
        ServerPool(conf(server("a"), hash="sha1"))
    with pytest.raises(ValueError, match="distribution"):
        ServerPool(conf(server("a"), distribution="rendezvous"))


# -- routing --------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "index"), [
    (b"foo", 1), (b"bar", 1), (b"key:1", 0), (b"key:2", 0), (b"key:3", 0), (b"hello", 0),
    (b"a", 1), (b"", 0),
])
def test_example_a(key: bytes, index: int) -> None:
    p = ServerPool(conf(server("127.0.0.1:6380"), server("127.0.0.1:6381")))
    assert p.route(key, 0.0) == index


@pytest.mark.parametrize(("key", "index"), [
    (b"foo", 0), (b"bar", 3), (b"key:1", 2), (b"user:{42}:name", 2), (b"user:{42}:email", 2),
    (b"hello", 3), (b"a", 2),
])
def test_example_b_hash_tag(key: bytes, index: int) -> None:
    p = ServerPool(conf(*[server(f"server{i}") for i in range(1, 5)], hash_tag=b"{}"))
    assert p.route(key, 0.0) == index


@pytest.mark.parametrize(("key", "index"), [(b"foo", 2), (b"bar", 1), (b"key:1", 1),
                                            (b"key:2", 0)])
def test_modula_example(key: bytes, index: int) -> None:
    p = ServerPool(conf(server("a"), server("b", 2), server("c"), distribution="modula"))
    assert p.route(key, 0.0) == index


@pytest.mark.parametrize("hash_name", ["fnv1a_64", "md5", "jenkins", "crc32"])
@pytest.mark.parametrize("dist", ["ketama", "modula"])
def test_route_is_hash_then_dispatch(hash_name: str, dist: str) -> None:
    p = ServerPool(conf(*names(5), hash=hash_name, distribution=dist))
    cont = build_continuum(dist, [(b"s%d" % i, 1) for i in range(5)], [True] * 5)
    fn = pool_module.HASHES[hash_name]
    assert placement(p) == [cont.dispatch(fn(k)) for k in KEYS]


def test_hash_tag_routes_by_the_tag_content() -> None:
    p = ServerPool(conf(*names(7), hash_tag=b"$$"))
    for k in KEYS[:300]:
        tagged = b"user:$" + k + b"$:profile"
        assert p.route(tagged, 0.0) == p.route(hash_tag_key(tagged, b"$$"), 0.0) == p.route(k, 0.0)
    assert p.route(b"a$$b", 0.0) == p.route(b"a$$b", 0.0)  # empty tag: the whole key


def test_empty_key_is_hash_0_not_hash_of_empty() -> None:
    # fnv1a_64(b"") is 0x84222325, but nutcracker never hashes an empty key.
    p = ServerPool(conf(*names(6), distribution="modula"))
    assert p.route(b"", 0.0) == 0
    assert fnv1a_64(b"") % 6 != 0


def test_one_server_pool_does_not_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(key: bytes) -> int:
        raise AssertionError("hashed")

    monkeypatch.setitem(pool_module.HASHES, "md5", boom)
    p = ServerPool(conf(server("only"), hash="md5", hash_tag=b"{}"))
    assert [p.route(k, 0.0) for k in (b"", b"x", b"{y}")] == [0, 0, 0]


def test_random_spreads_over_live_servers_and_ignores_hash_and_tag() -> None:
    p = ServerPool(conf(*names(3), distribution="random", hash_tag=b"{}"), random.Random(3))
    seen = Counter(p.route(b"user:{1}:x", 0.0) for _ in range(3000))
    assert set(seen) == {0, 1, 2}
    assert all(850 < n < 1150 for n in seen.values())


def test_random_skips_ejected_servers() -> None:
    p = ServerPool(eject_conf(3, distribution="random", server_failure_limit=1),
                   random.Random(5))
    assert p.failure(1, 10.0)
    assert {p.route(b"k", 10.0) for _ in range(500)} == {0, 2}


def test_random_with_a_seeded_rng_is_reproducible() -> None:
    a = ServerPool(conf(*names(4), distribution="random"), random.Random(9))
    b = ServerPool(conf(*names(4), distribution="random"), random.Random(9))
    assert [a.route(b"k", 0.0) for _ in range(100)] == [b.route(b"k", 0.0) for _ in range(100)]


# -- failures without auto_eject_hosts ------------------------------------------------------------

def test_without_auto_eject_failures_change_nothing() -> None:
    p = ServerPool(conf(*names(3), server_failure_limit=1))
    before = placement(p)
    for _ in range(10):
        assert p.failure(1, 5.0) is False
    assert p.servers[1].failure_count == 0
    assert not p.servers[1].ejected
    assert placement(p, 6.0) == before


# -- ejection, retry, rebuild ---------------------------------------------------------------------

def test_eject_at_the_failure_limit() -> None:
    p = ServerPool(eject_conf(3))
    before = placement(p)
    assert p.failure(1, 100.0) is False
    assert p.servers[1].failure_count == 1
    assert placement(p, 100.0) == before
    assert p.failure(1, 100.5) is True
    s = p.servers[1]
    assert (s.ejected, s.failure_count, s.next_retry) == (True, 0, 130.5)
    assert p.nlive == 2
    assert p.next_rebuild == 130.5
    after = placement(p, 101.0)
    assert 1 not in after
    assert after == expected(p, [True, False, True])
    # 3 -> 2 live servers keeps 160 points each, so only server 1's keys moved.
    assert all(a == b for a, b in zip(before, after) if a != 1)


def test_retry_after_the_timeout_rebuilds_lazily() -> None:
    p = ServerPool(eject_conf(3))
    before = placement(p)
    p.failure(2, 10.0)
    assert p.failure(2, 10.0)
    assert p.servers[2].next_retry == 40.0
    assert 2 not in placement(p, 39.9)
    assert 2 not in placement(p, 40.0)  # rebuilt only strictly after next_retry
    assert p.servers[2].ejected
    assert p.route(KEYS[0], 40.001) == before[0]
    s = p.servers[2]
    assert (s.ejected, s.next_retry, s.failure_count) == (False, 0.0, 0)
    assert p.next_rebuild == float("inf")
    assert placement(p, 41.0) == before


def test_still_dead_after_retry_needs_the_full_limit_again() -> None:
    p = ServerPool(eject_conf(3, server_failure_limit=3))
    for _ in range(2):
        assert not p.failure(0, 1.0)
    assert p.failure(0, 1.0)
    p.route(b"x", 32.0)  # retry time passed: back in
    assert not p.servers[0].ejected
    assert not p.failure(0, 32.1)
    assert not p.failure(0, 32.2)
    assert p.failure(0, 32.3)
    assert p.servers[0].next_retry == pytest.approx(62.3)


def test_limit_0_and_1_eject_on_the_first_failure() -> None:
    for limit in (0, 1):
        p = ServerPool(eject_conf(3, server_failure_limit=limit))
        assert p.failure(0, 1.0) is True
        assert p.servers[0].ejected


def test_success_resets_the_failure_count() -> None:
    p = ServerPool(eject_conf(3))
    assert not p.failure(1, 1.0)
    p.success(1)
    assert p.servers[1].failure_count == 0
    assert not p.failure(1, 2.0)
    assert p.failure(1, 3.0)


def test_success_after_ejection_does_not_touch_next_retry() -> None:
    # server_ok resets next_retry only when the failure count is not 0; ejection zeroes it.
    p = ServerPool(eject_conf(3))
    p.failure(1, 1.0)
    p.failure(1, 1.0)
    p.success(1)
    assert p.servers[1].next_retry == 31.0
    assert 1 not in placement(p, 2.0)


def test_success_with_failures_pending_clears_next_retry_until_the_next_rebuild() -> None:
    # Ejected, then a failure (count 1) and a success: next_retry is cleared, but the continuum
    # keeps the server out until the pool's next rebuild time, as nutcracker does.
    p = ServerPool(eject_conf(3))
    p.failure(1, 1.0)
    p.failure(1, 1.0)
    p.failure(1, 2.0)
    p.success(1)
    assert p.servers[1].next_retry == 0.0
    assert 1 not in placement(p, 5.0)
    assert p.next_rebuild == 31.0
    assert 1 in placement(p, 31.5)


def test_ejection_revives_servers_whose_retry_passed() -> None:
    p = ServerPool(eject_conf(3, server_failure_limit=1))
    assert p.failure(0, 1.0)       # retry at 31
    assert p.failure(1, 40.0)      # the rebuild at 40 brings 0 back
    assert [s.ejected for s in p.servers] == [False, True, False]
    assert p.next_rebuild == 70.0
    assert placement(p, 41.0) == expected(p, [True, False, True])


def test_next_rebuild_is_the_earliest_retry() -> None:
    p = ServerPool(eject_conf(4, server_failure_limit=1))
    p.failure(3, 5.0)
    p.failure(1, 1.0)
    assert p.next_rebuild == 31.0
    p.route(b"k", 31.5)  # server 1 back, server 3 still out until 35
    assert [s.ejected for s in p.servers] == [False, False, False, True]
    assert p.next_rebuild == 35.0


def test_no_live_server_refuses_until_the_first_retry() -> None:
    p = ServerPool(eject_conf(2, server_failure_limit=1, server_retry_timeout=3000))
    assert p.failure(0, 10.0)
    assert p.failure(1, 11.0)
    assert p.nlive == 0
    assert set(placement(p, 12.0)) == {-1}
    assert set(placement(p, 13.0)) == {-1}
    assert set(placement(p, 13.5)) == {0}  # server 0's retry (13.0) passed; 1's (14.0) not
    assert set(placement(p, 14.5)) == {0, 1}


def test_one_server_pool_ejected_refuses() -> None:
    p = ServerPool(conf(server("only"), auto_eject_hosts=True, server_failure_limit=2,
                        server_retry_timeout=3000))
    assert p.route(b"k", 0.0) == 0
    assert not p.failure(0, 1.0)
    assert p.route(b"k", 1.0) == 0
    assert p.failure(0, 1.0)
    assert p.route(b"k", 2.0) == -1
    assert p.route(b"k", 4.5) == 0


def test_retry_timeout_0_ejects_for_no_time() -> None:
    p = ServerPool(eject_conf(3, server_failure_limit=1, server_retry_timeout=0))
    before = placement(p)
    assert p.failure(2, 7.0) is True  # counted as an ejection (stats), but live at once
    assert not p.servers[2].ejected
    assert placement(p, 7.0) == before


def test_modula_ejection_drops_the_servers_slots() -> None:
    p = ServerPool(conf(server("a"), server("b", 2), server("c"), distribution="modula",
                        auto_eject_hosts=True, server_failure_limit=1))
    assert p.failure(1, 0.0)
    assert placement(p, 0.5) == [[0, 2][fnv1a_64(k) % 2] for k in KEYS]


def test_ejection_reaches_the_156_point_case() -> None:
    # 26 servers, one ejected: the 25 left get 156 points each, as nutcracker recounts them.
    p = ServerPool(eject_conf(26, server_failure_limit=1))
    assert p.failure(25, 1.0)
    assert placement(p, 2.0) == expected(p, [True] * 25 + [False])


# -- group: the continuum as it stands, for split requests (Rule 6) --------------------------------

def test_group_is_route_without_the_lazy_rebuild() -> None:
    p = ServerPool(eject_conf(3))
    assert [p.group(k) for k in KEYS] == placement(p)
    p.failure(1, 10.0)
    assert p.failure(1, 10.0)
    ejected = [p.group(k) for k in KEYS]
    assert 1 not in ejected and ejected == placement(p, 11.0)
    # the retry time passed, nobody routed yet: group still sees the old continuum
    assert [p.group(k) for k in KEYS] == ejected
    assert p.route(KEYS[0], 41.0) >= 0  # the first route rebuilds ...
    assert [p.group(k) for k in KEYS] == placement(p, 41.0)  # ... and group follows
    assert 1 in placement(p, 41.0)


def test_group_keeps_the_last_live_continuum_when_none_is_live() -> None:
    p = ServerPool(eject_conf(2, server_failure_limit=1))
    assert p.failure(0, 1.0)
    only_1 = [p.group(k) for k in KEYS]
    assert set(only_1) == {1}
    assert p.failure(1, 2.0)
    assert set(placement(p, 3.0)) == {-1}
    assert [p.group(k) for k in KEYS] == only_1
