"""Micro-benchmarks of keyshard's compiled twins against the pure-Python reference.

    .venv/bin/python scripts/speedups_micro.py

Each line feeds one input (e.g. 16 pipelined GETs, as one read of redis-benchmark -P 16
brings) to a fresh-enough parser many times and prints the best time per frame (request,
reply, key or call) of five runs. In-process and single-threaded: it measures the codec
work only, not the proxy (see the side-by-side benchmark for that).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from keyshard import hashing, pool
from keyshard.distribution import build_continuum
from keyshard.protocol import memcache, redis, redis_merge

try:
    from keyshard import _speedups
except ImportError:
    sys.exit("keyshard._speedups is not built (pip install -e . with a C compiler)")


def best(fn: Callable[[], Any], loops: int) -> float:
    """Seconds per call: the best of five runs of `loops` calls."""
    times = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append(time.perf_counter() - began)
    return min(times) / loops


def row(label: str, pure: Callable[[], Any], compiled: Callable[[], Any], per: int,
        loops: int = 3000) -> None:
    p, c = best(pure, loops) / per, best(compiled, loops) / per
    print(f"{label:34s} {p * 1e9:9.0f} {c * 1e9:9.0f} {p / c:7.1f}x")


def cmd(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def feeder(cls: Any, data: bytes) -> Callable[[], Any]:
    parser = cls()
    return lambda: parser.feed(data)


def main() -> None:
    rnd = random.Random(7)
    keys = [b"key:%012d" % rnd.randrange(100_000) for _ in range(16)]
    print(f"{'ns per frame':34s} {'pure':>9s} {'compiled':>9s} {'speedup':>8s}")
    inputs = [
        ("redis request: 16 GET", redis, "RedisRequestParser",
         b"".join(cmd(b"GET", k) for k in keys), 16),
        ("redis request: 16 SET 3 B", redis, "RedisRequestParser",
         b"".join(cmd(b"SET", k, b"xxx") for k in keys), 16),
        ("redis request: 1 GET", redis, "RedisRequestParser", cmd(b"GET", keys[0]), 1),
        ("redis request: MGET 10 keys", redis, "RedisRequestParser",
         cmd(b"MGET", *keys[:10]), 1),
        ("redis reply: 16 bulk/status", redis, "RedisReplyParser",
         b"".join(b"$3\r\nxxx\r\n" if i % 2 else b"+OK\r\n" for i in range(16)), 16),
        ("redis reply: 1 bulk", redis, "RedisReplyParser", b"$3\r\nxxx\r\n", 1),
        ("memcache request: 16 get", memcache, "MemcacheRequestParser",
         b"".join(b"get %s\r\n" % k for k in keys), 16),
        ("memcache request: 16 set 3 B", memcache, "MemcacheRequestParser",
         b"".join(b"set %s 0 0 3\r\nxxx\r\n" % k for k in keys), 16),
        ("memcache request: get 10 keys", memcache, "MemcacheRequestParser",
         b"get " + b" ".join(keys[:10]) + b"\r\n", 1),
        ("memcache reply: 16 VALUE/STORED", memcache, "MemcacheReplyParser",
         b"".join(b"VALUE %s 0 3\r\nxxx\r\nEND\r\n" % k if i % 2 else b"STORED\r\n"
                  for i, k in enumerate(keys)), 16),
    ]
    mc_request, mc_reply = _speedups.memcache_framers(
        memcache.PyMemcacheRequestParser, memcache.PyMemcacheReplyParser,
        memcache.LINE_REPLIES, memcache.TEXT_PREFIXES)
    twins = {"MemcacheRequestParser": mc_request, "MemcacheReplyParser": mc_reply}
    for label, module, name, data, per in inputs:
        twin = twins.get(name) or getattr(_speedups, name)
        row(label, feeder(getattr(module, "Py" + name), data), feeder(twin, data), per)

    (mget,) = redis.PyRedisRequestParser().feed(cmd(b"MGET", *keys[:10]))

    def place(key: bytes) -> int:
        return hashing.HASHES["fnv1a_64"](key) & 1

    frags, ctx = redis_merge.py_split(mget, place)
    replies = [b"*%d\r\n" % ctx.count(i) + b"$3\r\nxxx\r\n" * ctx.count(i)
               for i in range(len(frags))]
    row("split MGET 10 keys (2 servers)", lambda: redis_merge.py_split(mget, place),
        lambda: _speedups.split(mget, place), 1, 20000)
    row("merge MGET 10 keys (2 servers)", lambda: redis_merge.py_merge(mget, ctx, replies),
        lambda: _speedups.merge(mget, ctx, replies), 1, 20000)

    key = keys[0]
    for name in ("fnv1a_64", "murmur", "jenkins", "one_at_a_time"):
        pure, fast = hashing.PY_HASHES[name], getattr(_speedups, name)
        row(f"hash {name} (16 B key)", lambda f=pure: f(key), lambda f=fast: f(key), 1, 100_000)
    cont = build_continuum("ketama", [(b"10.0.0.1:6379", 1), (b"10.0.0.2:6379", 1)],
                           [True, True])
    pure_route = pool._py_ketama_router(cont, hashing.PY_HASHES["fnv1a_64"], None)
    fast_route = _speedups.ketama_router(cont, hashing.PY_HASHES["fnv1a_64"], None)
    row("ketama route (fnv1a_64, 16 B key)", lambda: pure_route(key), lambda: fast_route(key),
        1, 100_000)


if __name__ == "__main__":
    main()
