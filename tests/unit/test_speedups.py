"""The compiled twins (keyshard._speedups) against the pure-Python reference.

1. Selection: which implementation each module picked, in this process and in a child process
   with and without KEYSHARD_NO_EXTENSIONS. With KEYSHARD_EXPECT_EXTENSIONS=1 (set by
   scripts/test.sh for the compiled run) a missing extension is a failure, not a skip.
2. Differential properties: the same streams, cut the same way, fed to both framers give the
   same frames and the same `error` after every feed (valid streams, garbage, mutations).
3. Hashes and routers: the same numbers and the same server for any key, hash, tag and pool.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keyshard
from keyshard import hashing, pool
from keyshard.distribution import KetamaContinuum, build_continuum
from keyshard.protocol import memcache, redis, redis_merge
from keyshard.protocol.base import KIND_FORWARD, KIND_SPLIT, PyRequest, Request
from tests.unit import test_memcache_props as mc_props
from tests.unit.test_redis_props import (
    ANY_REPLIES,
    ANY_REQUESTS,
    REPLY,
    TOKENS,
    cuts,
    mutated,
    requests,
)

try:
    from keyshard import _speedups
except ImportError:
    _speedups = None

ROOT = Path(__file__).resolve().parents[2]
FORCED_PURE = os.environ.get("KEYSHARD_NO_EXTENSIONS", "").strip() not in ("", "0")
EXPECTED = os.environ.get("KEYSHARD_EXPECT_EXTENSIONS") == "1"

needs_ext = pytest.mark.skipif(_speedups is None and not EXPECTED,
                               reason="keyshard._speedups is not built")
SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- 1. selection ----------------------------------------------------------------------------

_PROBE = """
import keyshard, keyshard.hashing as h, keyshard.pool as p, keyshard.protocol.redis as r
import keyshard.protocol.memcache as m
print(keyshard.speedups_in_use(), r.RedisRequestParser.__module__,
      r.RedisReplyParser.__module__, type(h.HASHES['fnv1a_64']).__name__,
      p._ketama_router.__module__, m.MemcacheRequestParser.__module__,
      m.MemcacheReplyParser.__module__)
"""


def _probe(**env: str) -> list[str]:
    full = {k: v for k, v in os.environ.items()
            if k not in ("KEYSHARD_NO_EXTENSIONS", "KEYSHARD_EXPECT_EXTENSIONS")}
    full.update(env)
    full["PYTHONPATH"] = str(ROOT / "src")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=full, capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.split()


def test_this_run_uses_what_it_expects() -> None:
    compiled = redis.RedisRequestParser is not redis.PyRedisRequestParser
    if EXPECTED:
        assert not FORCED_PURE, "KEYSHARD_EXPECT_EXTENSIONS=1 with KEYSHARD_NO_EXTENSIONS set"
        assert _speedups is not None, "the compiled run has no keyshard._speedups (not built?)"
        assert keyshard.speedups_in_use()
    assert keyshard.speedups_in_use() == compiled == (_speedups is not None and not FORCED_PURE)
    assert (redis.RedisReplyParser is not redis.PyRedisReplyParser) == compiled
    assert (hashing.HASHES["fnv1a_64"] is not hashing.PY_HASHES["fnv1a_64"]) == compiled
    assert (hashing.fnv1a_64 is hashing.HASHES["fnv1a_64"])
    assert (pool._ketama_router is not pool._py_ketama_router) == compiled
    assert (pool._modula_router is not pool._py_modula_router) == compiled
    assert (redis_merge.split is not redis_merge.py_split) == compiled
    assert (redis.RedisCodec.merge is not redis_merge.py_merge) == compiled
    assert redis.CODEC.request_parser().__class__ is redis.RedisRequestParser
    assert redis.CODEC.reply_parser().__class__ is redis.RedisReplyParser
    assert (memcache.MemcacheRequestParser is not memcache.PyMemcacheRequestParser) == compiled
    assert (memcache.MemcacheReplyParser is not memcache.PyMemcacheReplyParser) == compiled
    assert type(memcache.CODEC.request_parser()) is memcache.MemcacheRequestParser
    assert type(memcache.CODEC.reply_parser()) is memcache.MemcacheReplyParser


def test_no_extensions_forces_pure_python() -> None:
    assert _probe(KEYSHARD_NO_EXTENSIONS="1") == [
        "False", "keyshard.protocol.redis", "keyshard.protocol.redis_resp", "function",
        "keyshard.pool", "keyshard.protocol.memcache", "keyshard.protocol.memcache"]


@needs_ext
def test_the_extension_is_used_by_default() -> None:
    assert _probe() == ["True", "keyshard._speedups", "keyshard._speedups",
                        "cython_function_or_method", "keyshard._speedups", "keyshard._speedups",
                        "keyshard._speedups"]


@needs_ext
def test_the_existing_tests_see_the_selected_classes() -> None:
    """tests/unit/test_redis_codec.py etc. import by name, so they test what is selected."""
    from tests.unit import test_hashing, test_memcache_codec, test_redis_codec, test_redis_props

    assert test_redis_codec.RedisRequestParser is redis.RedisRequestParser
    assert test_redis_props.RedisReplyParser is redis.RedisReplyParser
    assert test_hashing.fnv1a_64 is hashing.HASHES["fnv1a_64"]
    assert mc_props.MemcacheRequestParser is memcache.MemcacheRequestParser
    assert test_memcache_codec.CODEC.request_parser().__class__ is memcache.MemcacheRequestParser


def test_version_says_which() -> None:
    from keyshard.cli import banner_lines

    lines = banner_lines()
    assert lines[0] == f"This is keyshard-{keyshard.__version__}"
    assert lines[1] == ("extensions: compiled (Cython)" if keyshard.speedups_in_use()
                        else "extensions: pure Python")


# --- the Request record ----------------------------------------------------------------------

def _slots(req: Request) -> dict[str, Any]:
    return {name: getattr(req, name) for name in PyRequest.__slots__}


@needs_ext
@pytest.mark.parametrize("fields", [
    (b"raw", KIND_FORWARD, b"get", b"k"),
    (b"raw", KIND_SPLIT, b"mget", b"a", [b"a", b"b"], False),
    (b"", 3, b"quit", b"", None, True),
])
def test_requests_are_built_slot_by_slot_like_the_class(fields: tuple[Any, ...]) -> None:
    assert _speedups is not None and _speedups.request_fast_path()
    fast = _speedups.new_request(*fields)
    assert type(fast) is _speedups.Request  # what base.Request is when the extension is used
    assert _slots(fast) == _slots(Request(*fields))
    fast.owner = object()  # every slot is writable, the net layer's too
    fast.reply = b"+OK\r\n"
    assert repr(fast) == repr(Request(*fields)) == repr(PyRequest(*fields))
    assert _slots(Request(*fields)) == _slots(PyRequest(*fields))
    with pytest.raises(AttributeError):
        fast.stray = 1  # fixed fields, as the slots class


@needs_ext
def test_compiled_requests_are_the_compiled_class_and_collectable() -> None:
    import gc
    import weakref

    class Owner:
        pass

    (req,) = _speedups.RedisRequestParser().feed(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
    assert type(req) is _speedups.Request and gc.is_tracked(req)
    assert (Request is _speedups.Request) == keyshard.speedups_in_use()
    owner = Owner()
    owner.queue = [req]  # type: ignore[attr-defined]
    req.owner = owner  # a cycle, as between a client and its queue
    ref = weakref.ref(owner)
    del owner, req
    gc.collect()
    assert ref() is None


# --- 2. framers, differential ----------------------------------------------------------------

def _views(reqs: list[Request]) -> list[tuple[Any, ...]]:
    return [(r.raw, r.kind, r.cmd, r.key, r.args, r.noreply) for r in reqs]


def _steps_requests(cls: Any, chunks: list[bytes], maxk: int) -> list[tuple[Any, ...]]:
    parser = cls(maxk)
    return [(_views(parser.feed(chunk)), parser.error) for chunk in chunks]


def _steps_replies(cls: Any, chunks: list[bytes]) -> list[tuple[Any, ...]]:
    parser = cls()
    return [(parser.feed(chunk), parser.error) for chunk in chunks]


def _same_requests(chunks: list[bytes], maxk: int) -> None:
    ours = _steps_requests(_speedups.RedisRequestParser, chunks, maxk)
    assert ours == _steps_requests(redis.PyRedisRequestParser, chunks, maxk)
    for _, error in ours:
        assert error is None or not error.startswith("internal")


def _same_replies(chunks: list[bytes]) -> None:
    ours = _steps_replies(_speedups.RedisReplyParser, chunks)
    assert ours == _steps_replies(redis.PyRedisReplyParser, chunks)
    for _, error in ours:
        assert error is None or not error.startswith("internal")


# headers near the limits: long digit runs, wrap-around, missing digits, key lengths
LIMIT_TOKENS = [b"*" + b"9" * 31, b"$" + b"0" * 32, b"$" + b"1" * 33, b"4294967296",
                b"$299\r\n", b"$300\r\n", b"$301\r\n", b"*4\r\n$4\r\nEVAL\r\n$1\r\nx\r\n",
                b"$1\r\n0\r\n", b"$2\r\n00\r\n", b"$1\r\n3\r\n", b"$3\r\nx1y\r\n",
                b"*2\r\n$4\r\nMOVE\r\n", b"*1\r\n$17\r\ngeoradiusbymember\r\n",
                b"*1\r\n$18\r\ngeoradiusbymemberx\r\n", b"*3\r\n$4\r\nGeT\r\n", b"\r\r\n"]
STREAMS = st.one_of(
    ANY_REQUESTS,
    st.lists(st.sampled_from(TOKENS + LIMIT_TOKENS), max_size=40).map(b"".join),
    mutated(st.lists(requests(), min_size=1, max_size=6).map(
        lambda rs: b"".join(raw for raw, _ in rs))),
)


@needs_ext
@SETTINGS
@given(STREAMS, st.sampled_from([1, 3, 300, 16336]), st.data())
def test_request_framers_agree_on_any_stream_and_cut(stream: bytes, maxk: int,
                                                     data: st.DataObject) -> None:
    for chunks in ([stream], data.draw(cuts(stream)), [bytes([b]) for b in stream]):
        _same_requests(chunks, maxk)


@needs_ext
@SETTINGS
@given(st.lists(requests(), min_size=1, max_size=10), st.data())
def test_request_framers_agree_on_valid_streams(reqs: list[tuple[bytes, Any]],
                                                data: st.DataObject) -> None:
    stream = b"".join(raw for raw, _ in reqs)
    _same_requests([stream], 300)
    _same_requests(data.draw(cuts(stream)), 300)


@needs_ext
def test_request_framers_agree_on_big_and_chunked_input() -> None:
    value = b"v" * 300_000
    stream = (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$300000\r\n" + value + b"\r\n"
              + b"*11\r\n$4\r\nMGET\r\n" + b"$2\r\nab\r\n" * 10)
    for size in (1, 7, 1000, 65536):
        _same_requests([stream[i:i + size] for i in range(0, len(stream), size)], 16336)


REPLY_LIMITS = [b"$" + b"9" * 32, b"*" + b"1" * 33, b"$-" + b"1" * 40, b":" + b"-" * 5,
                b"*1\r\n" * 40, b"$4294967296\r\n\r\n", b"*4294967297\r\n", b"~1\r\n"]
REPLY_STREAMS = st.one_of(
    ANY_REPLIES,
    st.lists(st.sampled_from(REPLY_LIMITS + [b"\r\n", b":1\r\n", b"+OK\r\n"]), max_size=30)
    .map(b"".join),
    mutated(st.lists(REPLY, min_size=1, max_size=4).map(b"".join)),
)


@needs_ext
@SETTINGS
@given(REPLY_STREAMS, st.data())
def test_reply_framers_agree_on_any_stream_and_cut(stream: bytes, data: st.DataObject) -> None:
    for chunks in ([stream], data.draw(cuts(stream)), [bytes([b]) for b in stream]):
        _same_replies(chunks)


@needs_ext
@SETTINGS
@given(st.lists(REPLY, min_size=1, max_size=8), st.data())
def test_reply_framers_agree_on_valid_streams(replies: list[bytes],
                                              data: st.DataObject) -> None:
    stream = b"".join(replies)
    _same_replies([stream])
    _same_replies(data.draw(cuts(stream)))


@needs_ext
def test_framers_stop_after_an_error() -> None:
    for cls in (_speedups.RedisRequestParser, redis.PyRedisRequestParser):
        parser = cls()
        assert [r.key for r in parser.feed(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")] == [b"k"]
        assert parser.feed(b"PING\r\n") == [] and parser.error is not None
        assert parser.feed(b"*1\r\n$4\r\nPING\r\n") == []
    with pytest.raises(ValueError):
        _speedups.RedisRequestParser(0)


# split / merge of multi-key Redis requests

SPLIT_CMDS = [b"mget", b"del", b"touch", b"unlink", b"mset"]
SPLIT_KEYS = st.lists(st.one_of(st.sampled_from([b"a", b"b", b"c", b"", b"k" * 300]),
                                st.binary(max_size=20)), min_size=2, max_size=12)


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return "ok", fn(*args)
    except Exception as exc:  # noqa: BLE001 - the same exception, type and text, is the point
        return type(exc).__name__, str(exc)


def _split_request(cmd: bytes, keys: list[bytes]) -> Request:
    args = [x for k in keys for x in (k, b"v" + k)] if cmd == b"mset" else keys
    raw = b"*%d\r\n$%d\r\n%s\r\n" % (len(args) + 1, len(cmd), cmd) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    (req,) = redis.PyRedisRequestParser().feed(raw)
    assert req.kind == KIND_SPLIT
    return req


def _bulk_of(value: bytes | None, zeros: int) -> bytes:
    return b"$-1\r\n" if value is None else b"$%s%d\r\n%s\r\n" % (b"0" * zeros, len(value), value)


@st.composite
def fragment_replies(draw: st.DrawFn, cmd: bytes, count: int) -> bytes:
    """A fragment's reply: usually the right shape, sometimes anything a server may send."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.one_of(REPLY, st.sampled_from(
            [b"-ERR boom\r\n", b"*-1\r\n", b"*%d\r\n" % (count + 1) + b"$-1\r\n" * (count + 1),
             b":-3\r\n", b":12-1\r\n", b"+OK\r\n", b"$4294967297\r\na\r\n"])))
    if cmd == b"mget":
        values = draw(st.lists(st.one_of(st.none(), st.binary(max_size=30)),
                               min_size=count, max_size=count))
        head = b"*%s%d\r\n" % (b"0" * draw(st.integers(0, 1)), count)
        return head + b"".join(_bulk_of(v, draw(st.integers(0, 1))) for v in values)
    if cmd == b"mset":
        return draw(st.sampled_from([b"+OK\r\n", b":1\r\n"]))
    return b":%d\r\n" % draw(st.integers(-(2**33), 2**33))


@needs_ext
@SETTINGS
@given(st.sampled_from(SPLIT_CMDS), SPLIT_KEYS, st.integers(1, 4), st.data())
def test_split_and_merge_agree(cmd: bytes, keys: list[bytes], nservers: int,
                               data: st.DataObject) -> None:
    req = _split_request(cmd, keys)
    place = {k: hashing.PY_HASHES["fnv1a_64"](k) % nservers for k in keys}.__getitem__
    frags, ctx = _speedups.split(req, place)
    assert (frags, ctx) == redis_merge.py_split(req, place)
    counts = [ctx.count(i) for i in range(len(frags))]
    replies = [data.draw(fragment_replies(cmd, c)) for c in counts]
    assert _outcome(_speedups.merge, req, ctx, replies) == _outcome(
        redis_merge.py_merge, req, ctx, replies)


@needs_ext
def test_merge_agrees_off_the_usual_path() -> None:
    req = _split_request(b"mget", [b"a", b"b", b"c"])
    cases = [
        ([0, 0, 0], [b"*3\r\n$1\r\nx\r\n$-1\r\n$0\r\n\r\n"]),
        ([0, 1, 0], [b"*2\r\n$1\r\nx\r\n$-1\r\n", b"*1\r\n$2\r\nyy\r\n"]),
        ([0, 0], [b"*2\r\n$\r\n\r\n$1\r\nx\r\n"]),  # a header without digits
        ([0], [b"*1\r\n$5\r\nab\r\n"]),  # a length past the end
        ([0], [b"*1\r\n$-1"]), ([0], [b"*1\r\n$"]), ([0], [b"*1\r\n"]), ([0], [b"*1"]),
        ([0], [b"*x\r\n"]), ([0], [b"\r\n"]), ([0], [b""]), ([0], [None]),
        ([0], [b"*1\r\n$ 1\r\nx\r\n"]), ([0], [b"*1\r\n$1_0\r\n" + b"x" * 10 + b"\r\n"]),
        ([-1], [b"*1\r\n$-1\r\n"]), ([1], [b"*1\r\n$-1\r\n"]),
        ([0], [b"*1\r\n$1\r\nx\r\n", b"*0\r\n"]),
    ]
    for ctx, replies in cases:
        assert _outcome(_speedups.merge, req, ctx, replies) == _outcome(
            redis_merge.py_merge, req, ctx, replies), (ctx, replies)
    for cmd in (b"del", b"mset"):
        other = _split_request(cmd, [b"a", b"b"])
        for replies in ([b":1\r\n", b":-2\r\n"], [b"+OK\r\n", b"-ERR x\r\n"], [b""]):
            assert _outcome(_speedups.merge, other, [0, 1], replies) == _outcome(
                redis_merge.py_merge, other, [0, 1], replies)
    assert _outcome(_speedups.split, Request(b"", KIND_FORWARD, b"get", b"k"), len) == _outcome(
        redis_merge.py_split, Request(b"", KIND_FORWARD, b"get", b"k"), len)


# memcache: subclasses of the reference with a compiled `_parse` (made here, whatever the mode)
if _speedups is not None:
    MC_REQUEST, MC_REPLY = _speedups.memcache_framers(
        memcache.PyMemcacheRequestParser, memcache.PyMemcacheReplyParser,
        memcache.LINE_REPLIES, memcache.TEXT_PREFIXES)


def _mc_steps(cls: Any, chunks: list[bytes], frame: Any) -> list[tuple[Any, ...]]:
    parser = cls()
    return [([frame(x) for x in parser.feed(chunk)], parser.error) for chunk in chunks]


def _mc_same(stream: bytes, cuts_: list[list[bytes]], request: bool) -> None:
    ours, ref, frame = ((MC_REQUEST, memcache.PyMemcacheRequestParser, mc_props.req_row)
                        if request else (MC_REPLY, memcache.PyMemcacheReplyParser, bytes))
    for chunks in cuts_:
        got = _mc_steps(ours, chunks, frame)
        assert got == _mc_steps(ref, chunks, frame)
        for _, error in got:
            assert error is None or not error.startswith("internal")


MC_WORDS = mc_props.WORDS + [b"get k\r\n", b"get a b\r\n", b"set k 0 0 1\r\n", b" noreply",
                             b"prepend ", b"append ", b"k" * 250, b"4294967297", b"1\r\nx\r\n"]
MC_REQUESTS = st.one_of(
    st.lists(mc_props.requests(), min_size=1, max_size=8).map(
        lambda rs: b"".join(r for r, _ in rs)),
    st.lists(st.sampled_from(MC_WORDS), max_size=30).map(b"".join),
    mc_props.mutated(st.lists(mc_props.requests(), min_size=1, max_size=4).map(
        lambda rs: b"".join(r for r, _ in rs)), MC_WORDS),
    st.binary(max_size=120),
)
MC_REPLY_WORDS = mc_props.REPLY_WORDS + [b"VALUE k 0 1\r\nx\r\n", b"END\r\n", b"VALUE ",
                                         b"STORED\r\n", b"4294967297", b"  "]
MC_REPLIES = st.one_of(
    st.lists(mc_props.replies(), min_size=1, max_size=8).map(b"".join),
    st.lists(st.sampled_from(MC_REPLY_WORDS), max_size=30).map(b"".join),
    mc_props.mutated(st.lists(mc_props.replies(), min_size=1, max_size=4).map(b"".join),
                     MC_REPLY_WORDS),
    st.binary(max_size=120),
)


@needs_ext
@SETTINGS
@given(MC_REQUESTS, st.data())
def test_memcache_request_framers_agree(stream: bytes, data: st.DataObject) -> None:
    _mc_same(stream, [[stream], data.draw(cuts(stream)), [bytes([b]) for b in stream]], True)


@needs_ext
@SETTINGS
@given(MC_REPLIES, st.data())
def test_memcache_reply_framers_agree(stream: bytes, data: st.DataObject) -> None:
    _mc_same(stream, [[stream], data.draw(cuts(stream)), [bytes([b]) for b in stream]], False)


@needs_ext
def test_memcache_framers_agree_on_big_and_long_input() -> None:
    value = b"v" * 200_000
    keys = b" ".join(b"k%d" % i for i in range(1500))  # more keys than the compiled fast path
    requests_ = (b"set k 0 0 200000\r\n" + value + b"\r\n" + b"get " + keys + b"\r\n"
                 + b"gets " + b"x" * 250 + b"\r\n" + b"get " + b"x" * 251 + b"\r\n")
    replies = (b"VALUE k 0 200000\r\n" + value + b"\r\n" + b"VALUE a 1 1 99\r\nx\r\nEND\r\n"
               + b"4294967297 \r\n")
    for stream, request in ((requests_, True), (replies, False)):
        _mc_same(stream, [[stream[i:i + size] for i in range(0, len(stream), size)]
                          for size in (3, 4096, 1 << 20)], request)


# --- 3. hashes and routers -------------------------------------------------------------------

KEYS = st.one_of(st.binary(max_size=40), st.binary(min_size=200, max_size=600),
                 st.text(max_size=20).map(lambda t: t.encode()))
C_HASHES = [name for name in hashing.HASHES if name != "md5"]


@needs_ext
@settings(max_examples=500, deadline=None)
@given(KEYS)
def test_hashes_agree(key: bytes) -> None:
    for name in C_HASHES:
        compiled = getattr(_speedups, name)
        assert compiled(key) == hashing.PY_HASHES[name](key), name


@needs_ext
def test_hashes_agree_on_every_length_and_byte() -> None:
    keys = [bytes(range(n)) for n in range(40)] + [bytes([b]) * 13 for b in range(256)]
    for name in C_HASHES:
        compiled, pure = getattr(_speedups, name), hashing.PY_HASHES[name]
        assert [compiled(k) for k in keys] == [pure(k) for k in keys], name


def _servers(n: int, weights: list[int]) -> list[tuple[bytes, int]]:
    return [(b"10.0.0.%d:6379" % i, weights[i % len(weights)]) for i in range(n)]


TAGS = st.sampled_from([None, b"{}", b"$$", b"{", b"ab", b":x"])
TAGGED_KEYS = st.one_of(KEYS, st.lists(st.sampled_from([b"{", b"}", b"$", b"a", b"b", b":", b"x"]),
                                       max_size=12).map(b"".join))


@needs_ext
@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["ketama", "modula"]), st.sampled_from(list(hashing.HASHES)),
       TAGS, st.integers(2, 6), st.lists(st.integers(1, 5), min_size=1, max_size=3),
       st.lists(st.booleans(), min_size=6, max_size=6), st.lists(TAGGED_KEYS, max_size=30))
def test_routers_agree(dist: str, hash_name: str, tag: bytes | None, n: int,
                       weights: list[int], live: list[bool], keys: list[bytes]) -> None:
    live = live[:n]
    if not any(live):
        live[0] = True
    cont = build_continuum(dist, _servers(n, weights), live)
    routers: dict[str, tuple[Any, Callable[..., pool.Router]]] = {
        "ketama": (_speedups.ketama_router, pool._py_ketama_router),
        "modula": (_speedups.modula_router, pool._py_modula_router)}
    make = routers[dist]
    for fn in {hashing.HASHES[hash_name], hashing.PY_HASHES[hash_name]}:
        compiled = make[0](cont, fn, tag)
        pure = make[1](cont, hashing.PY_HASHES[hash_name], tag)
        assert [compiled(k) for k in keys] == [pure(k) for k in keys]


@needs_ext
def test_router_with_a_python_hash_and_an_empty_continuum() -> None:
    calls: list[bytes] = []

    def odd_hash(key: bytes) -> int:
        calls.append(key)
        return len(key) * 1000003 & 0xFFFFFFFF

    cont = cast(KetamaContinuum, build_continuum("ketama", _servers(3, [1]), [True] * 3))
    route = _speedups.ketama_router(cont, odd_hash, b"{}")
    pure = pool._py_ketama_router(cont, odd_hash, b"{}")
    for key in (b"", b"a{bc}d", b"{}", b"x" * 50):
        assert route(key) == pure(key)
    assert b"bc" in calls and b"" not in calls
    empty = KetamaContinuum(0, [])  # no points: owners == [-1]
    assert _speedups.ketama_router(empty, hashing.fnv1a_64, None)(b"k") == -1


@needs_ext
@pytest.mark.parametrize("n", [1, 2, 3, 40])
def test_ketama_buckets_agree_at_every_point_edge(n: int) -> None:
    """The compiled router looks in a bucket of the hash space, not the whole continuum: a
    hash equal to each point, one either side, and the ends of the space route as a bisect."""
    def as_hash(key: bytes) -> int:
        return int.from_bytes(key, "big")

    cont = cast(KetamaContinuum, build_continuum("ketama", _servers(n, [1]), [True] * n))
    compiled = _speedups.ketama_router(cont, as_hash, None)
    pure = pool._py_ketama_router(cont, as_hash, None)
    hashes = {0, 1, 0xFFFFFFFF, 0xFFFFFFFE, 1 << 31}
    for v in cont.values:
        hashes.update(h for h in (v - 1, v, v + 1) if 0 <= h <= 0xFFFFFFFF)
    keys = [h.to_bytes(4, "big") for h in sorted(hashes)]
    assert [compiled(k) for k in keys] == [pure(k) for k in keys]
    assert len({compiled(k) for k in keys}) == n  # every server owns some of these edges


# --- 4. the net layer's twins (keyshard._netfast) ------------------------------------------

try:
    from keyshard import _netfast
except ImportError:
    _netfast = None

needs_net = pytest.mark.skipif(_netfast is None and not EXPECTED,
                               reason="keyshard._netfast is not built")


def test_net_twins_selected() -> None:
    from keyshard import stats
    from keyshard.net import client, fields, runtime, server, writer
    from keyshard.protocol import memcache

    compiled = keyshard.speedups_in_use()
    if EXPECTED:
        assert _netfast is not None, "the compiled run has no keyshard._netfast (not built?)"
    assert (runtime.PoolRuntime.dispatch is not runtime.py_dispatch) == compiled
    assert (runtime.PoolRuntime.split is not runtime.py_split) == compiled
    assert (runtime.SplitOwner is not runtime.PySplitOwner) == compiled
    assert (server.ServerConn.data_received is not server.py_data_received) == compiled
    assert (client.ClientConn.drain is not client.py_drain) == compiled
    assert (client.ClientConn.req_done is not client.py_req_done) == compiled
    assert (client.ClientConn.data_received is not client.py_data_received) == compiled
    assert (writer.Flusher is not writer.PyFlusher) == compiled
    assert (writer.Writer.flush is not writer.py_writer_flush) == compiled
    assert (fields.ClientFields is not fields.PyClientFields) == compiled
    assert (fields.ServerFields is not fields.PyServerFields) == compiled
    assert (fields.RuntimeFields is not fields.PyRuntimeFields) == compiled
    assert (fields.SlotFields is not fields.PySlotFields) == compiled
    assert (pool.PoolFields is not pool.PyPoolFields) == compiled
    assert (stats.ServerCounters is not stats.PyServerCounters) == compiled
    assert (stats.PoolCounters is not stats.PyPoolCounters) == compiled
    assert (memcache.FramerFields is not memcache.PyFramerFields) == compiled
    assert issubclass(memcache.PyMemcacheReplyParser, memcache.FramerFields)
    assert (Request is not PyRequest) == compiled
    assert issubclass(runtime.ServerSlot, fields.SlotFields)
    assert issubclass(runtime.PoolRuntime, fields.RuntimeFields)
    assert issubclass(client.ClientConn, fields.ClientFields)
    assert issubclass(server.ServerConn, fields.ServerFields)
    assert issubclass(pool.ServerPool, pool.PoolFields)
    if compiled:
        assert _netfast is not None and _netfast.request_slots_direct()
        assert runtime.PoolRuntime.dispatch is _netfast.dispatch


def test_field_annotations_are_the_slots() -> None:
    """net.fields Rule 3: each reference annotates exactly its own slots, in their order, and
    only annotates them (the slots stay the storage)."""
    from keyshard.net import fields

    for ref in (fields.PyConnFields, fields.PyClientFields, fields.PyServerFields,
                fields.PyRuntimeFields, fields.PySlotFields, pool.PyPoolFields):
        slots = tuple(name for name in ref.__slots__ if name != "__dict__")
        assert tuple(inspect.get_annotations(ref)) == slots, ref
        assert all(type(ref.__dict__[n]).__name__ == "member_descriptor" for n in slots), ref


class _Timer:
    def __init__(self, when: float, cb: Any) -> None:
        self.when, self.cb, self.cancelled = when, cb, False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    def __init__(self) -> None:
        self.soon: list[Any] = []
        self.timers: list[_Timer] = []  # every call_at, in order (fired by the test)

    def time(self) -> float:
        return 1.0

    def call_soon(self, cb: Any, *args: Any) -> None:
        self.soon.append((cb, args))

    def call_at(self, when: float, cb: Any) -> _Timer:
        self.timers.append(_Timer(when, cb))
        return self.timers[-1]

    def run(self) -> None:
        while self.soon:
            cb, args = self.soon.pop(0)
            cb(*args)


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.gathered: list[int] = []  # per writelines call, its number of buffers
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def writelines(self, bufs: list[bytes]) -> None:
        self.gathered.append(len(bufs))
        self.out.append(b"".join(bufs))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return None


def _cmd(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _runtime(nservers: int, connected: bool = True, redis: bool = True,
             loop: _Loop | None = None, per_server: int = 1) -> tuple[Any, _Loop, list[Any]]:
    """A pool runtime (redis, or memcache) on a fake loop; with `connected`, each server has
    `per_server` connections (server_connections) over fake transports, the one of a single
    connection ready. Flusher is looked up at call time (tests swap it). bench/micro.py
    drives it too."""
    from keyshard.config import PoolConf, ServerConf
    from keyshard.net.runtime import PoolRuntime
    from keyshard.net.server import ServerConn
    from keyshard.net.writer import Flusher

    servers = [ServerConf(pname=f"127.0.0.1:{7000 + i}:1", name=f"s{i}", host="127.0.0.1",
                          port=7000 + i, weight=1, is_unix=False) for i in range(nservers)]
    conf = PoolConf(name="alpha", listen="127.0.0.1:22121", listen_host="127.0.0.1",
                    listen_port=22121, redis=redis, servers=servers,
                    server_connections=per_server)
    loop = loop or _Loop()
    rt = PoolRuntime(conf, loop, Flusher(loop))  # type: ignore[arg-type]
    conns = []
    for slot in rt.slots if connected else []:
        for _ in range(per_server):
            conn = ServerConn(rt, slot)
            conn.transport = _Transport()
            conn.connected = True
            slot.conns.append(conn)
            conns.append(conn)
        if per_server == 1:
            slot.ready = conn
    return rt, loop, conns


def _edges() -> list[float]:
    from keyshard.prometheus import BOUNDS

    return [x for b in BOUNDS for x in (b, math.nextafter(b, 0.0), math.nextafter(b, 99.0))]


BOUNDS_EDGES = _edges()


class _Recorder:
    """A latency hook that is not the histogram: the twins call its `observe` in Python."""

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    def observe(self, cmd: bytes, seconds: float) -> None:
        self.seen.append((cmd, seconds))


def _net_transcript(latency: str, timeout: float = 0.0, per_server: int = 1) -> list[Any]:
    """One client, three servers: pipelined forwards, a split, a local request, noreply-free
    replies in several reads and a failure reply; everything written and counted (with a
    `timeout`: the requests' deadlines and the timers armed too; with `per_server`
    connections to each server, which of them each request took; with a `latency` hook,
    "recorder" or "histogram" (prometheus.LatencyRows), what it saw, the clock moving on
    before every read)."""
    from keyshard import prometheus
    from keyshard.net.client import ClientConn
    from keyshard.net.server import ServerConn
    from keyshard.stats import counters

    clock = _Clock()
    rt, loop, conns = _runtime(3, per_server=per_server, loop=clock)
    for conn in conns:
        conn.timeout = timeout
    seen: list[Any] = []
    tick = 0.0
    if latency == "recorder":
        rt.latency = _Recorder(seen)
    elif latency == "histogram":
        rt.latency = prometheus.LatencyRows(prometheus.BOUNDS)
    if latency:
        tick = 0.00007  # a few buckets' worth over the transcript
    client = ClientConn(rt)
    ct = _Transport()
    client.connection_made(ct)  # type: ignore[arg-type]
    stream = b"".join([_cmd(b"GET", b"k%d" % i) for i in range(20)]
                      + [_cmd(b"SET", b"s%d" % i, b"v") for i in range(10)]
                      + [_cmd(b"MGET", *[b"m%d" % i for i in range(8)]), _cmd(b"PING")]
                      + [_cmd(b"GET", b"z%d" % i) for i in range(10)])
    cuts = [0, 100, 180, 260, 400, 520, len(stream)]  # reads: each takes a connection in turn
    for start, end in itertools.pairwise(cuts):
        clock.now += tick
        client.data_received(stream[start:end])
    loop.run()
    out: list[Any] = [[b"".join(c.transport.out) for c in conns]]
    out.append([[req.deadline for req in c.outq] for c in conns])

    def answer(conn: ServerConn, fail_at: int = -1) -> bytes:
        parts = []
        for n, req in enumerate(conn.outq):
            if n == fail_at:
                parts.append(b"-LOADING busy\r\n")
            elif req.cmd == b"mget":
                nkeys = int(req.raw[1:req.raw.index(b"\r\n")]) - 1
                parts.append(b"*%d\r\n" % nkeys + b"$2\r\nvv\r\n" * nkeys)
            elif req.cmd == b"set":
                parts.append(b"+OK\r\n")
            else:
                parts.append(b"$1\r\nv\r\n")
        return b"".join(parts)

    for i, conn in enumerate(conns):
        data = answer(conn, fail_at=3 if i == 2 else -1)
        for cut in range(0, len(data), 37):
            clock.now += 3 * tick
            conn.data_received(data[cut:cut + 37])
            loop.run()
            out.append(b"".join(ct.out))
    out.append([counters(s.stats) for s in rt.slots])
    out.append(counters(rt.stats))
    out.append((len(client.queue), client.closing, ct.closed, seen))
    if latency == "histogram":
        out.append(rt.latency.rows)
    out.append([(t.when, t.cb.__self__ is conn, t.cancelled)
                for conn in conns for t in loop.timers if t.cb.__self__ is conn])
    return out


@needs_net
@pytest.mark.parametrize(("latency", "timeout", "per_server"),
                         [("", 0.0, 1), ("recorder", 0.0, 1), ("histogram", 0.0, 1),
                          ("histogram", 0.4, 2), ("", 0.4, 1), ("", 0.0, 2), ("", 0.4, 3)])
def test_net_twins_match_the_reference(latency: str, timeout: float, per_server: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from keyshard import prometheus
    from keyshard.net import client, runtime, server, writer

    assert _netfast is not None
    compiled = _net_transcript(latency, timeout, per_server)
    monkeypatch.setattr(runtime.PoolRuntime, "dispatch", runtime.py_dispatch)
    monkeypatch.setattr(runtime.PoolRuntime, "split", runtime.py_split)
    monkeypatch.setattr(runtime, "SplitOwner", runtime.PySplitOwner)
    monkeypatch.setattr(server.ServerConn, "data_received", server.py_data_received)
    monkeypatch.setattr(client.ClientConn, "drain", client.py_drain)
    monkeypatch.setattr(client.ClientConn, "req_done", client.py_req_done)
    monkeypatch.setattr(client.ClientConn, "data_received", client.py_data_received)
    monkeypatch.setattr(writer, "Flusher", writer.PyFlusher)
    monkeypatch.setattr(writer.Writer, "flush", writer.py_writer_flush)
    monkeypatch.setattr(prometheus, "LatencyRows", prometheus.PyLatencyRows)
    pure = _net_transcript(latency, timeout, per_server)
    assert compiled == pure
    if latency:
        _assert_latency_seen(latency, pure)
        return
    assert len(pure[-4]) > 0
    deadlines = [d for conn_deadlines in pure[1] for d in conn_deadlines]
    assert deadlines and set(deadlines) == {1.0 + timeout if timeout else 0.0}
    if per_server > 1:  # server_connections: every connection of a server that got requests
        written = [bool(w) for w in pure[0]]  # took some (round robin over the reads)
        by_server = [written[i:i + per_server] for i in range(0, len(written), per_server)]
        assert [all(w) for w in by_server if any(w)] == [True] * sum(map(any, by_server))
        return
    # a timer per connection that was sent something (the second and third), armed once; the
    # replies do not cancel it, the third's failure (-LOADING) does
    assert pure[-1] == ([(1.0 + timeout, True, False), (1.0 + timeout, True, True)]
                        if timeout else [])


def _assert_latency_seen(latency: str, transcript: list[Any]) -> None:
    """Every reply written was observed once, at more than one latency."""
    nreplies = 20 + 10 + 1 + 1 + 10
    if latency == "recorder":
        seen = transcript[-2][3]
        assert len(seen) == nreplies and {cmd for cmd, _ in seen} == {b"get", b"set", b"mget",
                                                                       b"ping"}
        assert len({secs for _, secs in seen}) > 3 and min(secs for _, secs in seen) > 0
    else:
        rows = transcript[-2]
        assert sum(sum(row[:-1]) for row in rows.values()) == nreplies
        assert sum(1 for row in rows.values() for count in row[:-1] if count) > 3


def _flushes(values: list[int]) -> list[tuple[list[int], bytes]]:
    """One read of pipelined SETs with values of these sizes, to one server: what its
    transport was given, per loop run (the gathered writes' buffer counts, the bytes)."""
    from keyshard.net.client import ClientConn

    rt, loop, conns = _runtime(1)
    client = ClientConn(rt)
    client.connection_made(_Transport())  # type: ignore[arg-type]
    out = []
    for size in values:
        client.data_received(_cmd(b"SET", b"k%d" % size, b"v" * size) * 3)
        loop.run()
        t = conns[0].transport
        out.append((t.gathered, b"".join(t.out)))
        t.gathered, t.out = [], []
    return out


@needs_net
def test_writer_gathers_large_flushes_in_both_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer Rule 5: a flush of several buffers adding up to GATHER_BYTES goes out as one
    writelines of the buffers themselves; smaller flushes as one joined write. The compiled
    writer and the reference do the same, with the same threshold."""
    from keyshard.net import writer

    assert _netfast is not None
    assert _netfast.WRITER_GATHER_BYTES == writer.GATHER_BYTES
    third = writer.GATHER_BYTES // 3
    sizes = [10, third - 40, third + 40, 100_000]  # 3 requests a read: below, at, above
    compiled = _flushes(sizes)
    monkeypatch.setattr(writer, "Flusher", writer.PyFlusher)
    monkeypatch.setattr(writer.Writer, "flush", writer.py_writer_flush)
    assert _flushes(sizes) == compiled
    assert [gathered for gathered, _ in compiled] == [[], [], [3], [3]]
    for size, (_, data) in zip(sizes, compiled, strict=True):
        assert data == _cmd(b"SET", b"k%d" % size, b"v" * size) * 3


class _WritingBackTransport(_Transport):
    """Its first write writes to its connection again, from inside (as a callback could)."""

    conn: Any = None

    def write(self, data: bytes) -> None:
        super().write(data)
        if data == b"first":
            self.conn.write(b"from inside")


def _rule7_transcript() -> list[Any]:
    """What a client's transport got and whether its `wbuf` stayed the same list, after a
    flush of one buffer (that writes again from inside), of two, of two gathered, and of
    one to a closing transport."""
    from keyshard.net import writer
    from keyshard.net.client import ClientConn

    rt, loop, _ = _runtime(1)
    client = ClientConn(rt)
    t = _WritingBackTransport()
    t.conn = client
    client.connection_made(t)  # type: ignore[arg-type]
    half = writer.GATHER_BYTES // 2
    steps: list[tuple[bytes, ...]] = [(b"first",), (b"a", b"b"), (b"x" * half, b"y" * half),
                                      (b"lost",)]
    out = []
    for i, data in enumerate(steps):
        t.closed = i == len(steps) - 1
        wbuf = client.wbuf
        for d in data:
            client.write(d)
        loop.run()
        out.append((client.wbuf is wbuf, list(client.wbuf), t.out, t.gathered))
        t.out, t.gathered = [], []
    return out


@needs_net
def test_writer_keeps_its_list_in_both_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer Rule 7: a flush empties `wbuf` in place (no new list per flush), except a
    gathered one, which hands its list to writelines; what is written from inside the
    transport's write is flushed after it; a closing transport's buffers are dropped."""
    from keyshard.net import writer

    compiled = _rule7_transcript()
    monkeypatch.setattr(writer, "Flusher", writer.PyFlusher)
    monkeypatch.setattr(writer.Writer, "flush", writer.py_writer_flush)
    assert _rule7_transcript() == compiled
    half = writer.GATHER_BYTES // 2
    assert compiled == [
        (True, [], [b"first", b"from inside"], []),
        (True, [], [b"ab"], []),
        (False, [], [b"x" * half + b"y" * half], [2]),
        (True, [], [], []),
    ]


class _UvloopLikeTransport(_Transport):
    """Says it is uvloop's (writer Rule 8 writes to its socket itself), over a real socket;
    `held` is what it says it still holds of earlier writes."""

    __module__ = "uvloop.fake"

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.held = 0
        self.forced: Exception | None = None

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def get_write_buffer_size(self) -> int:
        return self.held

    def _force_close(self, exc: Exception | None) -> None:  # what uvloop's failed write calls
        self.forced = exc
        self.closed = True


def _received(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        out += chunk


@needs_net
def test_writer_writes_uvloop_sockets_itself_only_when_nothing_is_held() -> None:
    """Writer Rule 8 (compiled only): a flush to a uvloop transport that holds nothing goes
    to the socket itself; what the socket does not take goes to the transport, and so does
    every flush while the transport holds some of an earlier one (a gathered one, the rest
    of a partial one), so nothing overtakes it; a failed write closes the transport with its
    error (`_force_close`). The reference gives all to the transport."""
    from keyshard.net import writer
    from keyshard.net.client import ClientConn

    direct = not FORCED_PURE
    rt, loop, _ = _runtime(1)
    client = ClientConn(rt)
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    t = _UvloopLikeTransport(ours)
    client.connection_made(t)  # type: ignore[arg-type]
    try:
        client.write(b"one")
        loop.run()
        assert (_received(peer), t.out) == ((b"one", []) if direct else (b"", [b"one"]))
        half = writer.GATHER_BYTES // 2
        client.write(b"x" * half)
        client.write(b"y" * half)
        t.held = 7  # gathered: the transport has it, and holds part of it
        loop.run()
        assert t.gathered == [2] and t.out[-1] == b"x" * half + b"y" * half
        client.write(b"two")
        loop.run()
        assert (_received(peer), t.out[-1]) == (b"", b"two")
        t.held = 0
        client.write(b"three")
        loop.run()
        assert (_received(peer), t.out[-1]) == ((b"three", b"two") if direct else (b"", b"three"))
        big = bytes(range(256)) * (64 << 10)  # 16 MB: more than the socket takes
        client.write(big)
        loop.run()
        first = _received(peer)
        if direct:
            assert 0 < len(first) < len(big) and first + t.out[-1] == big
            t.held = len(big) - len(first)  # the transport holds the rest
            client.write(b"four")
            loop.run()
            assert (_received(peer), t.out[-1]) == (b"", b"four")
        else:
            assert (first, t.out[-1]) == (b"", big)
        t.held = 0
        _received(peer)
        client.write(b"five")
        loop.run()
        peer.close()  # the socket's error is taken by the direct write: the transport is
        client.write(b"lost")  # closed with it, as uvloop closes it when its write fails
        loop.run()
        if direct:
            assert isinstance(t.forced, BrokenPipeError) and t.closed and t.out[-1] == b"four"
        else:
            assert t.out[-2:] == [b"five", b"lost"]
    finally:
        ours.close()
        peer.close()


@needs_net
@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([b"get", b"mget", b"set", b"x" * 40]),
                          st.one_of(st.sampled_from(BOUNDS_EDGES),
                                    st.floats(-1.0, 20.0, allow_nan=False))), max_size=60))
def test_latency_rows_twin_counts_as_the_reference(seen: list[tuple[bytes, float]]) -> None:
    """The compiled histogram (`_netfast.LatencyRows`) puts every observation in the bucket
    the reference's bisect does (a bound itself, just above it, past the last, negative),
    and sums the same floats in the same order: equal rows, exactly."""
    from keyshard import prometheus

    assert (prometheus.LatencyRows is _netfast.LatencyRows) is not FORCED_PURE
    compiled = _netfast.LatencyRows(prometheus.BOUNDS)
    pure = prometheus.PyLatencyRows(prometheus.BOUNDS)
    for cmd, seconds in seen:
        compiled.observe(cmd, seconds)
        pure.observe(cmd, seconds)
    assert compiled.rows == pure.rows
    assert sum(sum(row[:-1]) for row in pure.rows.values()) == len(seen)
    assert compiled.bounds == pure.bounds == prometheus.BOUNDS


def test_counters_are_the_metric_tables_and_count_in_both_modes() -> None:
    """keyshard.stats counters: the compiled twins declare exactly the table's counters (C
    integers), start at zero, and the twins' additions land where Python reads them."""
    from keyshard import stats
    from keyshard.net.client import ClientConn

    for cls, names in ((stats.PoolStats, stats.POOL_COUNTERS),
                       (stats.ServerStats, stats.SERVER_COUNTERS)):
        obj = cls()
        assert stats.counters(obj) == dict.fromkeys(names, 0)
        declared = {n for n in dir(cls.__mro__[1]) if not n.startswith("_")}
        assert declared == set(names)
        with pytest.raises(AttributeError):
            obj.stray = 1  # type: ignore[union-attr]
    # the references' annotations (for the type checker) are the table's counters, in order,
    # and only annotations: the slots stay the storage
    for ref, names in ((stats.PyPoolCounters, stats.POOL_COUNTERS),
                       (stats.PyServerCounters, stats.SERVER_COUNTERS)):
        assert tuple(inspect.get_annotations(ref)) == names
        assert ref.__slots__ == names
        assert all(type(ref.__dict__[n]).__name__ == "member_descriptor" for n in names)
    rt, loop, conns = _runtime(1)
    client = ClientConn(rt)
    client.connection_made(_Transport())  # type: ignore[arg-type]
    client.data_received(_cmd(b"GET", b"a") + _cmd(b"GET", b"b"))
    loop.run()
    conns[0].data_received(b"$1\r\nx\r\n$-1\r\n")
    counted = stats.counters(rt.slots[0].stats)
    assert counted["requests"] == 2 and counted["responses"] == 2
    assert counted["request_bytes"] == 2 * len(_cmd(b"GET", b"a"))
    assert counted["response_bytes"] == len(b"$1\r\nx\r\n$-1\r\n")
    rt.slots[0].stats.server_ejected_at = 1_790_000_000_000_000  # microseconds fit
    assert stats.counters(rt.slots[0].stats)["server_ejected_at"] == 1_790_000_000_000_000


def test_connections_have_declared_fields_only() -> None:
    """keyshard.net.fields Rule 1, in both modes: no __dict__, a stray attribute is an error."""
    from keyshard.net.client import ClientConn
    from keyshard.net.server import ServerConn

    rt, _, _ = _runtime(1, connected=False)
    for conn in (ClientConn(rt), ServerConn(rt, rt.slots[0])):
        assert not hasattr(conn, "__dict__")
        with pytest.raises(AttributeError):
            conn.qeue = None  # type: ignore[union-attr]
        assert conn.wbuf == [] and conn.dirty is False and conn.closed is False
    server = ServerConn(rt, rt.slots[0])
    server.swallowed += 1
    assert server.swallowed == 1 and server.timeout == 0.0


class _Clock(_Loop):
    """A fake loop whose clock is set by the test and counts its reads."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1.0
        self.reads = 0

    def time(self) -> float:
        self.reads += 1
        return self.now


@pytest.mark.parametrize("mget", [False, True])
def test_a_server_timer_outlives_its_replies_and_re_arms_itself(mget: bool) -> None:
    """ServerConn Rule 3, in both modes, for a forwarded request and a split one: the first
    request arms the connection's timer, replies do not cancel it, a firing re-arms it at the
    head's deadline or lets it lapse on an empty queue, and a head past its deadline fails the
    connection with the timeout error."""
    from keyshard.net.client import ClientConn

    clock = _Clock()
    rt, _, conns = _runtime(1, loop=clock)
    conn = conns[0]
    conn.timeout = 0.4
    client = ClientConn(rt)
    out = _Transport()
    client.connection_made(out)  # type: ignore[arg-type]

    def ask(at: float, key: bytes) -> None:
        clock.now = at
        client.data_received(_cmd(b"MGET", key, key + b"2") if mget else _cmd(b"GET", key))
        clock.run()

    def answer() -> None:
        conn.data_received(b"*2\r\n$1\r\nx\r\n$1\r\ny\r\n" if mget else b"$1\r\nx\r\n")
        clock.run()

    def fire(at: float) -> None:
        clock.now = at
        clock.timers[-1].cb()

    ask(1.0, b"a")
    assert [t.when for t in clock.timers] == [pytest.approx(1.4)]
    answer()
    assert not conn.outq and conn.timer is clock.timers[0] and not conn.timer.cancelled
    ask(1.2, b"b")  # the pending timer watches it: none armed
    assert len(clock.timers) == 1 and conn.outq[0].deadline == pytest.approx(1.6)
    fire(1.4)  # early for the head: re-armed at its deadline
    assert [t.when for t in clock.timers][1:] == [pytest.approx(1.6)]
    assert conn.timer is clock.timers[1]
    answer()
    fire(1.6)  # nothing waits: the timer lapses
    assert conn.timer is None and len(clock.timers) == 2 and not conn.closed
    ask(1.7, b"c")
    assert conn.timer is clock.timers[2] and clock.timers[2].when == pytest.approx(2.1)
    fire(2.1)
    clock.run()
    assert conn.closed and rt.slots[0].stats.server_timedout == 1
    assert out.out[-1] == b"-ERR Connection timed out\r\n"
    reply = b"*2\r\n$1\r\nx\r\n$1\r\ny\r\n" if mget else b"$1\r\nx\r\n"
    assert out.out[:2] == [reply, reply]


@pytest.mark.parametrize("mget", [False, True])
def test_dispatch_rebuilds_once_a_retry_is_due(mget: bool) -> None:
    """In both modes: the routing of a read rebuilds the continuum once an ejected server's
    retry is due (the reference reads the clock per read; the compiled dispatch only while a
    rebuild is pending), for a forwarded request and for a split one alike."""
    from keyshard.net.client import ClientConn

    clock = _Clock()
    rt, _, conns = _runtime(2, loop=clock)
    placement = rt.pool
    placement.auto_eject = True
    key = next(b"k%d" % i for i in range(100) if placement.route(b"k%d" % i, 0.0) == 0)
    while not placement.failure(0, 1.0):  # ejected until 1.0 + server_retry_timeout
        pass
    due = placement.next_rebuild
    assert 1.0 < due < math.inf
    client = ClientConn(rt)
    client.connection_made(_Transport())  # type: ignore[arg-type]
    request = _cmd(b"MGET", key, key) if mget else _cmd(b"GET", key)

    def sent_to_first() -> bool:
        clock.run()
        sent = b"".join(conns[0].transport.out), b"".join(conns[1].transport.out)
        conns[0].transport.out.clear()
        conns[1].transport.out.clear()
        assert (key in sent[0]) != (key in sent[1])
        return key in sent[0]

    client.data_received(request)
    assert not sent_to_first()  # retry not due: the key's next server on the continuum
    clock.now = due + 1.0
    client.data_received(request)
    assert sent_to_first() and placement.next_rebuild == math.inf
    reads = clock.reads
    client.data_received(request)
    assert sent_to_first()
    if keyshard.speedups_in_use():
        assert clock.reads == reads  # nothing pending: the compiled dispatch skips the clock


def test_flush_of_a_half_answered_client_waits_one_iteration() -> None:
    """keyshard.net.writer Rule 3, in both modes: a client whose queue still waits is written
    one loop iteration later (once); a client with nothing pending is written at once."""
    from keyshard.net.client import ClientConn
    from keyshard.protocol.base import KIND_FORWARD, Request

    rt, loop, _ = _runtime(1, connected=False)
    waiting, idle = ClientConn(rt), ClientConn(rt)
    for client in (waiting, idle):
        client.connection_made(_Transport())  # type: ignore[arg-type]
    waiting.queue.append(Request(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", KIND_FORWARD, b"get", b"k"))
    for client in (waiting, idle):
        client.write(b"+OK\r\n")

    def step() -> None:
        cb, args = loop.soon.pop(0)
        cb(*args)

    step()  # the first flush: the idle client is written, the waiting one put off
    assert idle.transport.out == [b"+OK\r\n"] and waiting.transport.out == []
    assert waiting.dirty and waiting.deferred and len(loop.soon) == 1
    waiting.write(b"+MORE\r\n")  # the rest of its replies, read in the next iteration
    step()
    assert waiting.transport.out == [b"+OK\r\n+MORE\r\n"]
    assert not waiting.dirty and not waiting.deferred and not loop.soon
    waiting.write(b"+AGAIN\r\n")  # put off once more, then written even though it waits
    step()
    assert waiting.transport.out == [b"+OK\r\n+MORE\r\n"]
    step()
    assert waiting.transport.out[-1] == b"+AGAIN\r\n"


def test_server_writes_wait_one_iteration() -> None:
    """keyshard.net.writer Rule 4, in both modes: a server connection's requests leave one
    loop iteration after the first was buffered, together with those dispatched meanwhile."""
    from keyshard.net.client import ClientConn

    rt, loop, conns = _runtime(1)
    first, second = ClientConn(rt), ClientConn(rt)
    for client in (first, second):
        client.connection_made(_Transport())  # type: ignore[arg-type]

    def step() -> None:
        cb, args = loop.soon.pop(0)
        cb(*args)

    first.data_received(_cmd(b"GET", b"a"))
    step()  # the first flush puts the server off
    assert conns[0].transport.out == [] and conns[0].deferred and len(loop.soon) == 1
    second.data_received(_cmd(b"GET", b"b"))  # read by the next poll
    step()
    assert conns[0].transport.out == [_cmd(b"GET", b"a") + _cmd(b"GET", b"b")]
    assert not conns[0].dirty and not conns[0].deferred and not loop.soon
    conns[0].data_received(b"$1\r\nx\r\n$1\r\ny\r\n")
    step()  # clients with nothing more to wait for are written at once (Rule 3)
    assert first.transport.out == [b"$1\r\nx\r\n"] and second.transport.out == [b"$1\r\ny\r\n"]


def test_memcache_server_writes_leave_at_once() -> None:
    """keyshard.net.writer Rules 4 and 6, in both modes: a memcache server connection is
    written by the first flush after its request was buffered (Rule 4 is for Redis pools),
    and its read writes the replies of a client that waits for nothing more at once (Rule
    6); a client still waiting goes through the flusher."""
    from keyshard.net.client import ClientConn

    rt, loop, conns = _runtime(1, redis=False)
    assert conns[0].hold is False

    def step() -> None:
        cb, args = loop.soon.pop(0)
        cb(*args)

    client, waiting = ClientConn(rt), ClientConn(rt)
    for c in (client, waiting):
        c.connection_made(_Transport())  # type: ignore[arg-type]
    client.data_received(b"get a\r\n")
    step()
    assert conns[0].transport.out == [b"get a\r\n"]
    assert not conns[0].dirty and not conns[0].deferred and not loop.soon
    conns[0].data_received(b"VALUE a 0 1\r\nx\r\nEND\r\n")
    assert client.transport.out == [b"VALUE a 0 1\r\nx\r\nEND\r\n"]  # no flusher round
    assert not client.dirty and not loop.soon
    waiting.data_received(b"get b\r\nget c\r\n")
    step()
    conns[0].data_received(b"END\r\n")  # b answered, c not yet
    assert waiting.transport.out == [] and waiting.dirty and len(loop.soon) == 1
    conns[0].data_received(b"END\r\n")  # c too, before the flusher's round: one write
    step()
    assert waiting.transport.out == [b"END\r\nEND\r\n"] and not loop.soon
    _, _, redis_conns = _runtime(1)
    assert redis_conns[0].hold is True  # Rules 4 and 3 as before: the tests above


def test_split_fragments_are_plain_requests() -> None:
    """The split (either twin) builds each fragment as Request(raw, KIND_FORWARD, cmd, b"")
    would, except for what the net layer sets (owner, ctx, server)."""
    from keyshard.net.client import ClientConn

    rt, _, _ = _runtime(2)
    client = ClientConn(rt)
    client.connection_made(_Transport())  # type: ignore[arg-type]
    client.data_received(_cmd(b"MGET", *[b"k%d" % i for i in range(20)]))
    frags = [req for slot in rt.slots for req in slot.ready.outq]
    assert len(frags) == 2
    for frag in frags:
        want = _slots(PyRequest(frag.raw, KIND_FORWARD, b"mget", b""))
        got = _slots(frag)
        assert got.pop("server") is frag.server and got.pop("owner") is frag.owner
        assert isinstance(got.pop("ctx"), int)
        for name in ("server", "owner", "ctx"):
            want.pop(name)
        assert got == want
