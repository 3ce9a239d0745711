"""Redis codec, example by example: framers, command table, split/merge, local replies.

Every parser case runs three ways (whole, one byte at a time, with trailing data), see
`requests_3` / `replies_3`. Expected behaviour is nutcracker 0.5.0's, as observed with the
binary (tests/compat/test_redis_reject.py re-checks the accept/reject decisions live).
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from keyshard.protocol.base import (
    KIND_AUTH,
    KIND_FORWARD,
    KIND_PING,
    KIND_QUIT,
    KIND_SPLIT,
    MergeError,
    Request,
)
from keyshard.protocol.redis import (
    CODEC,
    DEFAULT_MAX_KEY_LEN,
    NOAUTH,
    PONG,
    RedisCodec,
    RedisReplyParser,
    RedisRequestParser,
    auth_reply,
    close_on_split_error,
    error_reply,
    is_failure_reply,
    merge,
    server_handshake,
    split,
)
from keyshard.protocol.redis_commands import CLASS_NAMES, COMMANDS, LOOKUP

K = DEFAULT_MAX_KEY_LEN  # 16336


def cmd(*args: bytes | str) -> bytes:
    out = b"*%d\r\n" % len(args)
    for arg in args:
        raw = arg.encode("latin-1") if isinstance(arg, str) else arg
        out += b"$%d\r\n%s\r\n" % (len(raw), raw)
    return out


Parsed = tuple[list[tuple[bytes, int, bytes, bytes, list[bytes] | None]], str | None]


def _view(reqs: list[Request]) -> list[tuple[bytes, int, bytes, bytes, list[bytes] | None]]:
    return [(r.raw, r.kind, r.cmd, r.key, r.args) for r in reqs]


def _feed_requests(chunks: list[bytes], max_key_len: int) -> Parsed:
    parser = RedisRequestParser(max_key_len)
    out: list[Request] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return _view(out), parser.error


TRAILER = b"*2\r\n$3\r\nGET\r\n$2\r\nh"  # the start of a next request


def requests_3(data: bytes, max_key_len: int = K, trailer: bytes = TRAILER) -> Parsed:
    """Parse `data` whole, byte by byte, and followed by a cut request: all must agree."""
    whole = _feed_requests([data], max_key_len)
    single = _feed_requests([data[i:i + 1] for i in range(len(data))], max_key_len)
    trailing = _feed_requests([data + trailer], max_key_len)
    assert single == whole
    assert trailing[0] == whole[0]
    assert (trailing[1] is None) == (whole[1] is None)
    assert data.startswith(b"".join(r[0] for r in whole[0]))
    assert whole[1] is None or not whole[1].startswith("internal")
    return whole


def one(data: bytes, max_key_len: int = K) -> tuple[bytes, int, bytes, bytes, list[bytes] | None]:
    reqs, error = requests_3(data, max_key_len)
    assert error is None
    assert len(reqs) == 1 and reqs[0][0] == data
    return reqs[0]


def rejected(data: bytes, max_key_len: int = K) -> None:
    """`data` is refused, and what came before it is still returned."""
    prefix = cmd("GET", "b")
    reqs, error = requests_3(prefix + data, max_key_len)
    assert error is not None, data[:80]
    assert [r[0] for r in reqs] == [prefix]


def pending(data: bytes, max_key_len: int = K) -> None:
    """`data` is neither a request nor an error yet: the parser waits for more bytes."""
    reqs, error = requests_3(data, max_key_len, trailer=b"")
    assert (reqs, error) == ([], None)


# --- the command table -----------------------------------------------------------------------

REFERENCE_TABLE = {
    "argz": "PING QUIT COMMAND",
    "nokey": "LOLWUT",
    "arg0": "AUTH DECR DUMP GET GETDEL HGETALL HKEYS HLEN HVALS INCR LLEN PERSIST PTTL SCARD "
            "SMEMBERS STRLEN TTL TYPE ZCARD",
    "arg1": "APPEND DECRBY EXPIRE EXPIREAT GETBIT GETSET HEXISTS HGET HSTRLEN INCRBY INCRBYFLOAT "
            "LINDEX MOVE PEXPIRE PEXPIREAT RPOPLPUSH SETNX SISMEMBER ZRANK ZREVRANK ZSCORE",
    "arg2": "GETRANGE HINCRBY HINCRBYFLOAT HSETNX LRANGE LREM LSET LTRIM PSETEX SETBIT SETEX "
            "SETRANGE SMOVE ZCOUNT ZINCRBY ZLEXCOUNT ZREMRANGEBYLEX ZREMRANGEBYRANK "
            "ZREMRANGEBYSCORE",
    "arg3": "LINSERT LMOVE",
    "argn": "BITCOUNT BITFIELD BITPOS COPY EXISTS GEOADD GEODIST GEOHASH GEOPOS GEORADIUS "
            "GEORADIUSBYMEMBER GEOSEARCH GEOSEARCHSTORE GETEX HDEL HMGET HMSET HRANDFIELD HSCAN "
            "HSET LPOP LPOS LPUSH LPUSHX PFADD PFCOUNT PFMERGE RESTORE RPOP RPUSH RPUSHX SADD "
            "SDIFF SDIFFSTORE SET SINTER SINTERSTORE SMISMEMBER SORT SPOP SRANDMEMBER SREM SSCAN "
            "SUNION SUNIONSTORE ZADD ZDIFF ZDIFFSTORE ZINTER ZINTERSTORE ZMSCORE ZPOPMAX ZPOPMIN "
            "ZRANDMEMBER ZRANGE ZRANGEBYLEX ZRANGEBYSCORE ZRANGESTORE ZREM ZREVRANGE "
            "ZREVRANGEBYLEX ZREVRANGEBYSCORE ZSCAN ZUNION ZUNIONSTORE",
    "argx": "DEL MGET TOUCH UNLINK",
    "argkvx": "MSET",
    "argeval": "EVAL EVALSHA",
}


def test_table_has_the_137_commands_of_the_reference_in_their_classes() -> None:
    expected = {name.lower().encode(): cls for cls, names in REFERENCE_TABLE.items()
                for name in names.split()}
    assert len(COMMANDS) == len(expected) == 137
    assert {name: CLASS_NAMES[spec.cls] for name, spec in COMMANDS.items()} == expected
    assert all(LOOKUP[name.upper()] is spec for name, spec in COMMANDS.items())


def test_table_kinds() -> None:
    assert COMMANDS[b"ping"].kind == KIND_PING
    assert COMMANDS[b"quit"].kind == KIND_QUIT
    assert COMMANDS[b"auth"].kind == KIND_AUTH
    assert [name for name, spec in COMMANDS.items() if not spec.supported] == [b"move"]
    split_at = {name: spec.split_narg for name, spec in COMMANDS.items() if spec.split_narg < 99}
    assert split_at == {b"del": 3, b"mget": 3, b"touch": 3, b"unlink": 3, b"mset": 5}


# (class, accepted extra-argument counts among 0..6) as the binary answered, command by command
ARITY = {"argz": [0], "nokey": [0, 1, 2, 3, 4, 5, 6], "arg0": [1], "arg1": [2], "arg2": [3],
         "arg3": [4], "argn": [1, 2, 3, 4, 5, 6], "argx": [1, 2, 3, 4, 5, 6], "argkvx": [2, 4, 6],
         "argeval": [3, 4, 5, 6]}


@pytest.mark.parametrize("name", sorted(n.decode() for n in COMMANDS))
def test_arity_of_every_command(name: str) -> None:
    spec = COMMANDS[name.encode()]
    for extra in range(7):
        data = cmd(name.upper(), *["1"] * extra)
        ok = extra in ARITY[CLASS_NAMES[spec.cls]] and name != "move"
        if ok:
            assert one(data)[2] == name.encode()
        else:
            rejected(data)


# --- requests: accepted ----------------------------------------------------------------------

def test_get_is_a_plain_forward_without_args() -> None:
    data = cmd("GET", "foo")
    assert one(data) == (data, KIND_FORWARD, b"get", b"foo", None)


@pytest.mark.parametrize("name", ["get", "GET", "Get", "gEt"])
def test_command_names_are_case_insensitive(name: str) -> None:
    assert one(cmd(name, "k"))[2] == b"get"


@pytest.mark.parametrize("data, kind, name, key, args", [
    (cmd("PING"), KIND_PING, b"ping", b"placeholder", []),
    (cmd("quit"), KIND_QUIT, b"quit", b"placeholder", []),
    (cmd("COMMAND"), KIND_FORWARD, b"command", b"placeholder", None),
    (cmd("LOLWUT"), KIND_FORWARD, b"lolwut", b"placeholder", None),
    (cmd("lolwut", "VERSION", "5"), KIND_FORWARD, b"lolwut", b"placeholder", None),
    (cmd("AUTH", "s3cret"), KIND_AUTH, b"auth", b"s3cret", [b"s3cret"]),
    (cmd("EXPIRE", "k", "100"), KIND_FORWARD, b"expire", b"k", None),
    (cmd("SETEX", "k", "10", "v"), KIND_FORWARD, b"setex", b"k", None),
    (cmd("LINSERT", "l", "BEFORE", "p", "v"), KIND_FORWARD, b"linsert", b"l", None),
    (cmd("LMOVE", "a", "b", "LEFT", "RIGHT"), KIND_FORWARD, b"lmove", b"a", None),
    (cmd("SET", "k", "v", "EX", "10", "NX"), KIND_FORWARD, b"set", b"k", None),
    (cmd("EXISTS", "k1", "k2", "k3"), KIND_FORWARD, b"exists", b"k1", None),
    (cmd("SUNIONSTORE", "dst", "a", "b"), KIND_FORWARD, b"sunionstore", b"dst", None),
    (cmd("ZDIFF", "2", "a", "b"), KIND_FORWARD, b"zdiff", b"2", None),
    (cmd("ZINTER", "2", "a", "b"), KIND_FORWARD, b"zinter", b"2", None),
    (cmd("ZUNION", "2", "a", "b", "WITHSCORES"), KIND_FORWARD, b"zunion", b"2", None),
    (cmd("MGET", "a"), KIND_FORWARD, b"mget", b"a", None),
    (cmd("MGET", "a", "b", "a"), KIND_SPLIT, b"mget", b"a", [b"a", b"b", b"a"]),
    (cmd("DEL", "a"), KIND_FORWARD, b"del", b"a", None),
    (cmd("del", "a", "b"), KIND_SPLIT, b"del", b"a", [b"a", b"b"]),
    (cmd("TOUCH", "a", "b"), KIND_SPLIT, b"touch", b"a", [b"a", b"b"]),
    (cmd("UNLINK", "a", "b"), KIND_SPLIT, b"unlink", b"a", [b"a", b"b"]),
    (cmd("MSET", "a", "1"), KIND_FORWARD, b"mset", b"a", None),
    (cmd("MSET", "a", "1", "b", "2"), KIND_SPLIT, b"mset", b"a", [b"a", b"1", b"b", b"2"]),
    (cmd("EVAL", "return KEYS[1]", "1", "evk", "arg"), KIND_FORWARD, b"eval", b"evk", None),
    (cmd("EVALSHA", "abc", "2", "k1", "k2"), KIND_FORWARD, b"evalsha", b"k1", None),
    (cmd("EVAL", "s", "3", "k"), KIND_FORWARD, b"eval", b"k", None),  # redis says no
    (cmd("EVAL", "s", "01", "k"), KIND_FORWARD, b"eval", b"k", None),
    (cmd("EVAL", "s", "1", ""), KIND_FORWARD, b"eval", b"", None),
    (cmd("GET", ""), KIND_FORWARD, b"get", b"", None),
    (cmd("GET", "a\r\nb\x00\xff"), KIND_FORWARD, b"get", b"a\r\nb\x00\xff", None),
    (cmd("GEORADIUSBYMEMBER", "g", "m", "1", "km"), KIND_FORWARD, b"georadiusbymember", b"g",
     None),
])
def test_accepted(data: bytes, kind: int, name: bytes, key: bytes,
                  args: list[bytes] | None) -> None:
    assert one(data) == (data, kind, name, key, args)


def test_pipeline_of_every_shape() -> None:
    stream = [cmd("SET", "k", "v" * n) for n in (0, 1, 9, 10, 99, 100, 999, 1000, 70000)]
    stream += [cmd("MGET", *[f"k{i}" for i in range(n)]) for n in (1, 2, 9, 10, 120)]
    stream += [cmd("hincrbyfloat", "h", "f", "1.5"), cmd("PING"), cmd("GET", "x" * 5000)]
    reqs, error = requests_3(b"".join(stream))
    assert error is None
    assert [r[0] for r in reqs] == stream
    assert reqs[-4][4] == [b"k%d" % i for i in range(120)]


@pytest.mark.parametrize("data, key", [
    (b"*02\r\n$3\r\nget\r\n$1\r\na\r\n", b"a"),  # leading zeros: digits are digits
    (b"*2\r\n$03\r\nget\r\n$001\r\na\r\n", b"a"),
    (b"*4294967298\r\n$3\r\nget\r\n$1\r\na\r\n", b"a"),  # uint32: 2**32 + 2 is 2
    (b"*2\r\n$4294967299\r\nget\r\n$1\r\na\r\n", b"a"),
    (b"*2\r\n$3\r\nget\r\n$4294967297\r\na\r\n", b"a"),
    (b"*2\r\n$3\r\nget\r\n$\r\n\r\n", b""),  # a key element may have no digits
    (b"*3\r\n$4\r\nmget\r\n$1\r\na\r\n$\r\n\r\n", b"a"),
    (b"*5\r\n$4\r\nmset\r\n$1\r\na\r\n$1\r\n1\r\n$\r\n\r\n$1\r\n1\r\n", b"a"),
    (b"*4\r\n$4\r\neval\r\n$1\r\ns\r\n$1\r\n1\r\n$\r\n\r\n", b""),
    (b"*2\r\n$4\r\nauth\r\n$\r\n\r\n", b""),
    (b"*3\r\n$3\r\nset\r\n$1\r\na\r\n$4294967297\r\nb\r\n", b"a"),
    (b"*2\r\n$3\r\nget\r\n$" + b"0" * 31 + b"1\r\na\r\n", b"a"),  # 32 digits
])
def test_accepted_like_nutcracker_although_redis_will_refuse(data: bytes, key: bytes) -> None:
    assert one(data)[3] == key


# --- requests: refused -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["KEYS", "SELECT", "INFO", "MULTI", "FLUSHALL", "ECHO", "TIME",
                                  "SCAN", "BITOP", "BLPOP", "PUBLISH", "MSETNX", "RENAME",
                                  "OBJECT", "WAIT", "CLIENT", "HELLO", "XADD", "MOVE", "GETT",
                                  "G", "GEORADIUSBYMEMBERX"])
def test_unknown_or_unsupported_commands(name: str) -> None:
    rejected(cmd(name, "a", "b"))
    rejected(cmd(name, "a"))


@pytest.mark.parametrize("data", [
    cmd("PING", "hello"), cmd("GET"), cmd("GET", "k", "extra"), cmd("MSET", "a", "1", "b"),
    cmd("MSET", "a"), cmd("EXPIRE", "k", "100", "NX"), cmd("AUTH", "user", "pass"), cmd("AUTH"),
    cmd("COMMAND", "COUNT"), cmd("QUIT", "now"), cmd("MGET"), cmd("SET"), cmd("LINSERT"),
    cmd("EVAL", "s", "1"), cmd("EVAL", "s"), cmd("EVAL", "s", "0", "k"),
    cmd("EVAL", "s", "x", "k"), cmd("EVAL", "s", "-1", "k"), cmd("EVAL", "s", "", "k"),
    cmd("EVAL", "s", " 1", "k"), cmd("EVALSHA", "s", "4294967296", "k"),
])
def test_wrong_arguments(data: bytes) -> None:
    rejected(data)


@pytest.mark.parametrize("data", [
    b"PING\r\n", b"GET a\r\n", b"\r\n", b"*0\r\n", b"*\r\n", b"*-1\r\n", b"*+2\r\n",
    b"*2 \r\n", b"*2\n", b"*2\r\r", b"*2\rX", b"*1\r\n$0\r\n\r\n", b"*1\r\n$\r\n\r\n",
    b"*4294967296\r\n", b"$3\r\nget\r\n", b":1\r\n", b"*2\r\n:3\r\n",
    b"*2\r\n$3\r\nget\r\n$1\r\nab\r\n", b"*2\r\n$3\r\nget\r\n$1\r\na\rX",
    b"*2\r\n$3\r\nget\r\n$1\r\na\n\r", b"*1\r\n$4\r\nping\r\r", b"*1\r\n$4\r\npingX\n",
    b"*2\r\n$3\r\nget\r\n$-1\r\n", b"*2\r\n$3\r\nget\r\n$1x\r\n",
    b"*2\r\n$3\r\nget\r\n$" + b"0" * 32 + b"1\r\na\r\n",  # 33 digits
    b"*" + b"0" * 40, b"*1\r\n$18\r\n", b"*1\r\n$30\r\n", b"*1\r\n$2147483647\r\n",
    b"*1\r\n$20000\r\n" + b"a" * 20000 + b"\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\rX" + b"v" * 100 + b"\r\n",  # LF of a 3-digit header
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\rX" + b"v" * 10 + b"\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\rX" + b"v" + b"\r\n",
])
def test_bad_framing(data: bytes) -> None:
    rejected(data)


@pytest.mark.parametrize("data", [
    cmd("SET", "a", ""),  # (accepted: control) -- a $0 argument
])
def test_empty_argument_with_digits_is_fine(data: bytes) -> None:
    assert one(data)[2] == b"set"


@pytest.mark.parametrize("data", [
    b"*3\r\n$3\r\nset\r\n$1\r\na\r\n$\r\n\r\n",
    b"*3\r\n$6\r\nexpire\r\n$1\r\nk\r\n$\r\n\r\n",
    b"*4\r\n$8\r\ngetrange\r\n$1\r\nk\r\n$\r\n\r\n$1\r\n1\r\n",
    b"*4\r\n$8\r\ngetrange\r\n$1\r\nk\r\n$1\r\n1\r\n$\r\n\r\n",
    b"*5\r\n$7\r\nlinsert\r\n$1\r\nk\r\n$1\r\na\r\n$1\r\nb\r\n$\r\n\r\n",
    b"*3\r\n$4\r\nmset\r\n$1\r\na\r\n$\r\n\r\n",
    b"*2\r\n$6\r\nlolwut\r\n$\r\n\r\n",
    b"*4\r\n$4\r\neval\r\n$\r\n\r\n$1\r\n1\r\n$1\r\nk\r\n",
    b"*5\r\n$4\r\neval\r\n$1\r\ns\r\n$1\r\n1\r\n$1\r\nk\r\n$\r\n\r\n",
    b"*5\r\n$4\r\neval\r\n$1\r\ns\r\n$1\r\n2\r\n$1\r\nk\r\n$\r\n\r\n",
])
def test_empty_digits_outside_key_elements(data: bytes) -> None:
    rejected(data)


def test_nothing_after_an_error() -> None:
    parser = RedisRequestParser()
    good = cmd("SET", "a", "1")
    assert _view(parser.feed(good + b"PING\r\n" + good)) == [
        (good, KIND_FORWARD, b"set", b"a", None)]
    assert parser.error is not None
    assert parser.feed(good) == []
    assert parser.feed(b"") == []


def test_arity_is_refused_before_the_arguments_arrive() -> None:
    rejected(b"*3\r\n$3\r\nGET\r\n")  # GET with narg 3: refused at the name
    rejected(b"*2\r\n$4\r\nPING\r\n")
    rejected(b"*2\r\n$4\r\nMOVE\r\n")


# --- requests: key length --------------------------------------------------------------------

@pytest.mark.parametrize("data, ok", [
    (cmd("GET", "a" * (K - 1)), True),
    (cmd("GET", "a" * K), False),
    (cmd("MGET", "a", "b" * (K - 1)), True),
    (cmd("MGET", "a", "b" * K), False),  # every argx key is checked
    (cmd("DEL", "b" * K, "a"), False),
    (cmd("MSET", "a", "1", "b" * K, "1"), False),  # every argkvx key
    (cmd("MSET", "a", "v" * K), True),  # values are not keys
    (cmd("SET", "a", "v" * 1_000_000), True),
    (cmd("HSET", "a", "f" * K, "1"), True),  # argn: only the first key
    (cmd("EVAL", "return 1", "1", "k" * (K - 1)), True),
    (cmd("EVAL", "return 1", "1", "k" * K), False),
    (cmd("EVAL", "s" * K, "1", "k"), True),
    (cmd("EVAL", "return 1", "2", "k", "k" * K), True),  # only the first key after numkeys
    (cmd("AUTH", "p" * K), False),  # AUTH's password is its key element
    (cmd("LOLWUT", "x" * K), True),
])
def test_key_length_limit(data: bytes, ok: bool) -> None:
    if ok:
        one(data)
    else:
        rejected(data)


def test_key_length_is_checked_at_the_header() -> None:
    rejected(b"*2\r\n$3\r\nGET\r\n$16336\r\n")
    pending(b"*2\r\n$3\r\nGET\r\n$16335\r\n")


@pytest.mark.parametrize("size", [5, 50, 99, 100, 101, 150, 999, 1000, 2000])
def test_key_length_limit_from_the_constructor(size: int) -> None:
    for n in (size - 1, size):
        for data in (cmd("GET", "k" * n), cmd("MGET", "a", "k" * n), cmd("SET", "k" * n, "v")):
            if n < size:
                assert one(data, max_key_len=size)[0] == data
            else:
                rejected(data, max_key_len=size)


def test_max_key_len_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RedisRequestParser(0)


# --- requests: incomplete input, memory ------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"*", b"*2", b"*2\r", b"*2\r\n", b"*2\r\n$", b"*2\r\n$3", b"*2\r\n$3\r\nGE",
    b"*2\r\n$3\r\nGET\r\n", b"*2\r\n$3\r\nGET\r\n$5\r\nhel", b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2147483648\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4294967295\r\nabc",
    b"*2147483647\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nb\r\n",
    b"*2\r\n$3\r\nget\r\n$" + b"9" * 20,
])
def test_pending(data: bytes) -> None:
    pending(data)


@pytest.mark.parametrize("data", [
    b"*1\r\n$2147483647\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2147483648\r\n",
    b"*2147483647\r\n$4\r\nMGET\r\n$1\r\na\r\n",
    b"*2147483647\r\n$6\r\nLOLWUT\r\n",
    b"*4294967295\r\n$4\r\nMSET\r\n",
])
def test_declared_sizes_allocate_nothing(data: bytes) -> None:
    tracemalloc.start()
    try:
        parser = RedisRequestParser()
        for i in range(len(data)):
            parser.feed(data[i:i + 1])
        parser.feed(b"$1\r\nx\r\n" * 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_a_huge_value_in_small_chunks_is_linear() -> None:
    value = b"v" * 8_000_000
    data = cmd("SET", "k", value) + cmd("GET", "k")
    parser = RedisRequestParser()
    out: list[Request] = []
    began = time.process_time()
    for i in range(0, len(data), 1024):  # ~8000 feeds; quadratic copying would take minutes
        out += parser.feed(data[i:i + 1024])
    assert time.process_time() - began < 3.0
    assert parser.error is None
    assert [r.raw for r in out] == [cmd("SET", "k", value), cmd("GET", "k")]


def test_many_small_elements_in_small_chunks_are_linear() -> None:
    args = [b"k%d" % i for i in range(100_000)]
    data = cmd("MGET", *args)
    parser = RedisRequestParser()
    out: list[Request] = []
    began = time.process_time()
    for i in range(0, len(data), 100):  # ~13000 feeds
        out += parser.feed(data[i:i + 100])
    assert time.process_time() - began < 3.0
    assert parser.error is None
    assert len(out) == 1 and out[0].raw == data and out[0].args == args


# --- replies ---------------------------------------------------------------------------------

def _feed_replies(chunks: list[bytes]) -> tuple[list[bytes], str | None]:
    parser = RedisReplyParser()
    out: list[bytes] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out, parser.error


def replies_3(data: bytes, trailer: bytes = b"*2\r\n$3\r\nabc\r\n$2\r\nx"
              ) -> tuple[list[bytes], str | None]:
    whole = _feed_replies([data])
    assert _feed_replies([data[i:i + 1] for i in range(len(data))]) == whole
    trailing = _feed_replies([data + trailer])
    assert trailing[0] == whole[0] and (trailing[1] is None) == (whole[1] is None)
    return whole


@pytest.mark.parametrize("reply", [
    b"+OK\r\n", b"+\r\n", b"+a\nb\r\n", b"-ERR x\r\n", b"-\r\n", b"-WRONGTYPE Operation\r\n",
    b":0\r\n", b":-5\r\n", b":1-2\r\n", b":\r\n", b":-\r\n", b":99999999999999999999\r\n",
    b"$-1\r\n", b"$-2\r\n", b"$-10\r\n", b"$0\r\n\r\n", b"$3\r\nbar\r\n", b"$03\r\nabc\r\n",
    b"$2\r\na\r\r\n", b"$2\r\n\r\n\r\n", b"$4294967297\r\na\r\n", b"$100\r\n" + b"x" * 100 + b"\r\n",
    b"$5000\r\n" + b"x" * 5000 + b"\r\n",
    b"*-1\r\n", b"*-2\r\n", b"*0\r\n", b"*1\r\n$-1\r\n", b"*1\r\n*-1\r\n", b"*1\r\n*0\r\n",
    b"*2\r\n:1\r\n*1\r\n+a\r\n", b"*2\r\n-ERR x\r\n+ok\r\n", b"*1\r\n-OOM x\r\n",
    b"*3\r\n*2\r\n*1\r\n:1\r\n$1\r\na\r\n$-1\r\n+x\r\n", b"*4294967297\r\n:1\r\n",
    b"*1\r\n$4294967296\r\n\r\n", b"*2\r\n$100\r\n" + b"y" * 100 + b"\r\n$0\r\n\r\n",
    b"*1\r\n" * 500 + b":1\r\n",
])
def test_replies_accepted(reply: bytes) -> None:
    assert replies_3(reply) == ([reply], None)
    assert replies_3(reply * 3) == ([reply] * 3, None)


@pytest.mark.parametrize("reply", [
    b":abc\r\n", b":+5\r\n", b":1.5\r\n", b"$3\r\nabcX", b"$1\r\nab\r\n", b"$\r\n\r\n", b"*\r\n",
    b"$1x\r\n", b"*1x\r\n", b"$-1\rX\r\n", b":1\rX", b"+O\rK\r\n", b"+OK\r\r\n", b"-ERR a\rb\r\n",
    b"_\r\n", b"%1\r\n", b"#t\r\n", b",1.5\r\n", b"(1\r\n", b"=1\r\n", b"~1\r\n", b">1\r\n",
    b"|1\r\n", b"!1\r\n", b"*1\r\n_\r\n", b"*1\r\n*\r\n", b"*1\r\n$\r\n", b"*1\r\n$-x\r\n",
    b"$-x\r\n", b"*-\r\n", b"OK\r\n", b"\r\n", b"$" + b"1" * 33 + b"\r\n",
    b"$100\rX" + b"v" * 100 + b"\r\n", b"*1\r\n$100\rX" + b"v" * 100 + b"\r\n",
    b"$10\rX" + b"v" * 10 + b"\r\n", b"*1\r\n$1\rXv\r\n",
])
def test_replies_refused(reply: bytes) -> None:
    out, error = replies_3(b"+before\r\n" + reply)
    assert out == [b"+before\r\n"]
    assert error is not None and not error.startswith("internal")


@pytest.mark.parametrize("data", [
    b"+OK", b"+OK\r", b"+OK\n", b":1", b"$3\r\nab", b"$3\r\nabc\r", b"$2147483648\r\n",
    b"*2\r\n$1\r\na\r\n", b"*3\r\n*1\r\n:1\r\n", b"*2147483647\r\n:1\r\n", b"$", b"*", b"$-1",
])
def test_replies_pending(data: bytes) -> None:
    assert replies_3(data, trailer=b"") == ([], None)


def test_reply_parser_stops_after_an_error() -> None:
    parser = RedisReplyParser()
    assert parser.feed(b"+OK\r\n~\r\n+OK\r\n") == [b"+OK\r\n"]
    assert parser.error is not None
    assert parser.feed(b"+OK\r\n") == []


def test_a_huge_reply_in_small_chunks_is_linear() -> None:
    reply = b"*100000\r\n" + b"$3\r\nabc\r\n" * 99_999 + b"$5000000\r\n" + b"z" * 5_000_000 + b"\r\n"
    parser = RedisReplyParser()
    out: list[bytes] = []
    began = time.process_time()
    for i in range(0, len(reply), 1000):
        out += parser.feed(reply[i:i + 1000])
    assert time.process_time() - began < 3.0
    assert out == [reply] and parser.error is None


def test_declared_reply_sizes_allocate_nothing() -> None:
    tracemalloc.start()
    try:
        parser = RedisReplyParser()
        for data in (b"*2147483647\r\n", b"$2147483647\r\n", b"abc" * 10):
            for i in range(len(data)):
                parser.feed(data[i:i + 1])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


# --- split / merge ---------------------------------------------------------------------------

ROUTE = {b"a": 0, b"b": 1, b"c": 2, b"d": 1, b"e": 0}.__getitem__


def _request(*args: str) -> Request:
    (req,) = RedisRequestParser().feed(cmd(*args))
    assert req.kind == KIND_SPLIT
    return req


def test_split_mget_groups_by_server_in_order_of_first_appearance() -> None:
    req = _request("MGET", "b", "a", "d", "b", "c")
    frags, ctx = split(req, ROUTE)
    assert frags == [
        (1, b"*4\r\n$4\r\nmget\r\n$1\r\nb\r\n$1\r\nd\r\n$1\r\nb\r\n"),
        (0, b"*2\r\n$4\r\nmget\r\n$1\r\na\r\n"),
        (2, b"*2\r\n$4\r\nmget\r\n$1\r\nc\r\n"),
    ]
    replies = [b"*3\r\n$2\r\nB1\r\n$-1\r\n$02\r\nB2\r\n", b"*1\r\n$0\r\n\r\n", b"*1\r\n$-1\r\n"]
    assert merge(req, ctx, replies) == (
        b"*5\r\n$2\r\nB1\r\n$0\r\n\r\n$-1\r\n$02\r\nB2\r\n$-1\r\n")


def test_split_mget_single_server_keeps_duplicates() -> None:
    req = _request("mget", "a", "e", "a")
    frags, ctx = split(req, ROUTE)
    assert frags == [(0, b"*4\r\n$4\r\nmget\r\n$1\r\na\r\n$1\r\ne\r\n$1\r\na\r\n")]
    assert merge(req, ctx, [b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n1\r\n"]) == (
        b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n1\r\n")


def test_split_mget_binary_and_long_keys() -> None:
    key = "x\r\n\x00" * 300
    req = _request("MGET", key, "a")
    frags, ctx = split(req, lambda k: 0 if k == b"a" else 1)
    assert frags[0] == (1, b"*2\r\n$4\r\nmget\r\n$1200\r\n" + key.encode("latin-1") + b"\r\n")
    value = b"$1000\r\n" + b"v" * 1000 + b"\r\n"
    assert merge(req, ctx, [b"*1\r\n" + value, b"*1\r\n$-1\r\n"]) == b"*2\r\n" + value + b"$-1\r\n"


@pytest.mark.parametrize("name", ["DEL", "TOUCH", "UNLINK", "del"])
def test_split_del_touch_unlink_sum(name: str) -> None:
    req = _request(name, "a", "b", "c", "a")
    frags, ctx = split(req, ROUTE)
    low = name.lower().encode()
    head = b"$%d\r\n%s\r\n" % (len(low), low)
    assert frags == [(0, b"*3\r\n" + head + b"$1\r\na\r\n$1\r\na\r\n"),
                     (1, b"*2\r\n" + head + b"$1\r\nb\r\n"),
                     (2, b"*2\r\n" + head + b"$1\r\nc\r\n")]
    assert merge(req, ctx, [b":2\r\n", b":0\r\n", b":1\r\n"]) == b":3\r\n"


def _signed32(value: int) -> int:
    return value - 2 ** 32 if value >= 2 ** 31 else value


@pytest.mark.parametrize("replies, merged", [
    ([b":-5\r\n", b":1\r\n"], b":6\r\n"),  # nutcracker skips the '-'
    ([b":1-2\r\n", b":0\r\n"], b":12\r\n"),
    ([b":\r\n", b":0\r\n"], b":0\r\n"),
    ([b":99999999999\r\n", b":0\r\n"], b":1215752191\r\n"),  # modulo 2**32
    ([b":4294967295\r\n", b":0\r\n"], b":-1\r\n"),  # printed as a signed 32-bit int
    ([b":2147483648\r\n", b":0\r\n"], b":-2147483648\r\n"),
    ([b":2147483647\r\n", b":1\r\n"], b":-2147483648\r\n"),
    ([b":" + b"9" * 5000 + b"\r\n", b":0\r\n"], b":%d\r\n" % _signed32((10 ** 5000 - 1) % 2 ** 32)),
])
def test_merge_del_integers_as_nutcracker_reads_them(replies: list[bytes], merged: bytes) -> None:
    req = _request("DEL", "a", "b")
    _, ctx = split(req, ROUTE)
    assert merge(req, ctx, replies) == merged


def test_split_mset_pairs() -> None:
    req = _request("MSET", "a", "1", "b", "", "a", "3", "c", "v\r\n")
    frags, ctx = split(req, ROUTE)
    assert frags == [
        (0, b"*5\r\n$4\r\nmset\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\na\r\n$1\r\n3\r\n"),
        (1, b"*3\r\n$4\r\nmset\r\n$1\r\nb\r\n$0\r\n\r\n"),
        (2, b"*3\r\n$4\r\nmset\r\n$1\r\nc\r\n$3\r\nv\r\n\r\n"),
    ]
    assert merge(req, ctx, [b"+OK\r\n", b"+QUEUED\r\n", b":1\r\n"]) == b"+OK\r\n"


@pytest.mark.parametrize("args, replies", [
    (("MGET", "a", "b"), [b"*1\r\n$1\r\nx\r\n", b"-ERR x\r\n"]),
    (("MGET", "a", "b"), [b"-WRONGTYPE x\r\n", b"*1\r\n$1\r\nx\r\n"]),
    (("MGET", "a", "b"), [b"*-1\r\n", b"*1\r\n$1\r\nx\r\n"]),  # nutcracker segfaults
    (("MGET", "a", "b"), [b"*0\r\n", b"*1\r\n$1\r\nx\r\n"]),
    (("MGET", "a", "b"), [b"*2\r\n$1\r\nx\r\n$1\r\ny\r\n", b"*1\r\n$1\r\nx\r\n"]),
    (("MGET", "a", "b"), [b"*1\r\n:1\r\n", b"*1\r\n$1\r\nx\r\n"]),
    (("MGET", "a", "b"), [b"*1\r\n*1\r\n:1\r\n", b"*1\r\n$1\r\nx\r\n"]),
    (("MGET", "a", "b"), [b"+OK\r\n", b"*1\r\n$1\r\nx\r\n"]),
    (("MGET", "a", "b"), [b":1\r\n", b"*1\r\n$1\r\nx\r\n"]),
    (("MGET", "a", "b"), [b"$1\r\nx\r\n", b"*1\r\n$1\r\nx\r\n"]),
    (("DEL", "a", "b"), [b":1\r\n", b"-ERR x\r\n"]),
    (("DEL", "a", "b"), [b"+OK\r\n", b":1\r\n"]),  # nutcracker: a corrupt stream
    (("TOUCH", "a", "b"), [b"*1\r\n:5\r\n", b":1\r\n"]),
    (("UNLINK", "a", "b"), [b"$1\r\n1\r\n", b":1\r\n"]),
    (("MSET", "a", "1", "b", "2"), [b"+OK\r\n", b"-ERR x\r\n"]),
    (("MSET", "a", "1", "b", "2"), [b"$1\r\n1\r\n", b"+OK\r\n"]),
    (("MSET", "a", "1", "b", "2"), [b"*0\r\n", b"+OK\r\n"]),
])
def test_merge_wrong_fragment_type(args: tuple[str, ...], replies: list[bytes]) -> None:
    req = _request(*args)
    _, ctx = split(req, ROUTE)
    with pytest.raises(MergeError):
        merge(req, ctx, replies)


def test_close_on_split_error_is_for_mget_only() -> None:
    assert close_on_split_error(_request("MGET", "a", "b"))
    for args in (("DEL", "a", "b"), ("TOUCH", "a", "b"), ("UNLINK", "a", "b"),
                 ("MSET", "a", "1", "b", "2")):
        assert not close_on_split_error(_request(*args))


# --- local replies, handshake ----------------------------------------------------------------

def test_constants() -> None:
    assert PONG == b"+PONG\r\n"
    assert NOAUTH == b"-NOAUTH Authentication required\r\n"


def test_auth_reply() -> None:
    (req,) = RedisRequestParser().feed(cmd("AUTH", "secret"))
    assert auth_reply(req, b"secret") == (b"+OK\r\n", True)
    assert auth_reply(req, b"secretx") == (b"-ERR invalid password\r\n", False)
    assert auth_reply(req, b"Secret") == (b"-ERR invalid password\r\n", False)
    assert auth_reply(req, None) == (b"-ERR Client sent AUTH, but no password is set\r\n", True)
    assert auth_reply(req, b"") == (b"-ERR Client sent AUTH, but no password is set\r\n", True)
    (empty,) = RedisRequestParser().feed(cmd("AUTH", ""))
    assert auth_reply(empty, b"secret") == (b"-ERR invalid password\r\n", False)


def test_server_handshake_auth_before_select() -> None:
    assert server_handshake(None, 0) == []
    assert server_handshake(b"", 0) == []
    assert server_handshake(b"secret", 0) == [b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n"]
    assert server_handshake(None, 3) == [b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"]
    # AUTH first, so that SELECT works on a redis with requirepass (nutcracker: the reverse)
    assert server_handshake(b"pw", 12) == [b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n",
                                           b"*2\r\n$6\r\nSELECT\r\n$2\r\n12\r\n"]


def test_error_reply() -> None:
    assert error_reply("Connection refused") == b"-ERR Connection refused\r\n"
    assert error_reply("Invalid argument") == b"-ERR Invalid argument\r\n"
    assert error_reply("unknown") == b"-ERR unknown\r\n"


@pytest.mark.parametrize("reply, failure", [
    (b"-OOM command not allowed\r\n", True), (b"-OOM\r\n", True),
    (b"-BUSY Redis is busy\r\n", True), (b"-BUSY\r\n", True),
    (b"-LOADING Redis is loading\r\n", True), (b"-LOADING\r\n", True),
    (b"-BUSYKEY Target key name already exists.\r\n", False), (b"-oom x\r\n", False),
    (b"-OOMING x\r\n", False), (b"-LOADINGX\r\n", False), (b"-ERR x\r\n", False),
    (b"-OOM\tx\r\n", False), (b"-OOM x y\r\n", True),
    (b"*1\r\n-OOM x\r\n", False), (b"+OOM\r\n", False), (b"$4\r\n-OOM\r\n", False),
])
def test_is_failure_reply(reply: bytes, failure: bool) -> None:
    assert is_failure_reply(reply) is failure


def test_codec_contract() -> None:
    assert isinstance(CODEC, RedisCodec)
    assert CODEC.PONG == PONG and CODEC.NOAUTH == NOAUTH
    parser = CODEC.request_parser(DEFAULT_MAX_KEY_LEN)
    assert isinstance(parser, RedisRequestParser) and parser.error is None
    assert isinstance(CODEC.reply_parser(), RedisReplyParser)
    assert CODEC.error_reply("x") == b"-ERR x\r\n"
    req = _request("MGET", "a", "b")
    _, ctx = CODEC.split(req, ROUTE)
    assert CODEC.merge(req, ctx, [b"*1\r\n$1\r\n1\r\n", b"*1\r\n$1\r\n2\r\n"]) == (
        b"*2\r\n$1\r\n1\r\n$1\r\n2\r\n")
    assert CODEC.close_on_split_error(req)
    assert CODEC.is_failure_reply(b"-LOADING\r\n")
    assert CODEC.auth_reply(RedisRequestParser().feed(cmd("AUTH", "x"))[0], b"x")[1]
    assert CODEC.server_handshake(None, 1) == [b"*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n"]
