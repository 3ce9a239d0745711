"""The memcache codec, sans-IO: every case whole, one byte at a time, and with trailing data.

The accepted and rejected inputs are the ones checked against the nutcracker 0.5.0 binary
(in front of memcached 1.6, or of a recording fake server for the reply side).
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from keyshard.protocol.base import KIND_FORWARD, KIND_QUIT, KIND_SPLIT, MergeError, Request
from keyshard.protocol.memcache import CODEC, MemcacheReplyParser, MemcacheRequestParser

Row = tuple[bytes, int, bytes, bytes, list[bytes] | None, bool]
TRAILER = b"get zz\r\n"
TRAILER_ROW: Row = (TRAILER, KIND_FORWARD, b"get", b"zz", None, False)


def row(req: Request) -> Row:
    return (req.raw, req.kind, req.cmd, req.key, req.args, req.noreply)


def feed_requests(data: bytes, step: int = 0) -> tuple[list[Row], str | None]:
    parser = CODEC.request_parser(16336)
    reqs: list[Request] = []
    if step:
        for i in range(0, len(data), step):
            reqs += parser.feed(data[i:i + step])
    else:
        reqs = parser.feed(data)
    return [row(r) for r in reqs], parser.error


def three_ways(data: bytes) -> list[Row]:
    """Parse whole and byte by byte (same result, no error), then with a trailing request."""
    whole, err = feed_requests(data)
    assert err is None
    assert feed_requests(data, 1) == (whole, None)
    trailed, err = feed_requests(data + TRAILER)
    assert err is None
    assert trailed == [*whole, TRAILER_ROW]
    return whole


def fwd(raw: bytes, cmd: bytes, key: bytes, noreply: bool = False) -> Row:
    return (raw, KIND_FORWARD, cmd, key, None, noreply)


# -- requests: accepted -----------------------------------------------------------------------

K250 = b"k" * 250
K251 = b"k" * 251

SINGLE = [
    (b"get k\r\n", b"get", b"k"),
    (b"gets k\r\n", b"gets", b"k"),
    (b"get  k  \r\n", b"get", b"k"),
    (b"   get k\r\n", b"get", b"k"),
    (b"get " + K250 + b"\r\n", b"get", K250),
    (b"get a\tb\r\n", b"get", b"a\tb"),
    (b"get a\x00b\r\n", b"get", b"a\x00b"),
    (b"get k\n\r\n", b"get", b"k\n"),
    (b"get \xff\xfe\r\n", b"get", b"\xff\xfe"),
    (b"set k 0 0 1\r\na\r\n", b"set", b"k"),
    (b"add k 1 2 1\r\na\r\n", b"add", b"k"),
    (b"replace k 0 0 1\r\na\r\n", b"replace", b"k"),
    (b"append k 0 0 1\r\na\r\n", b"append", b"k"),
    (b"prepend k 0 0 1\r\na\r\n", b"prepend", b"k"),
    (b"set  k  0  0  1  \r\na\r\n", b"set", b"k"),
    (b"set k 0 0 1 \r\na\r\n", b"set", b"k"),
    (b"set k 00 0 01\r\na\r\n", b"set", b"k"),
    (b"set k 0 0 0\r\n\r\n", b"set", b"k"),
    (b"set k 0 0 7\r\n\r\nEND\r\n\r\n", b"set", b"k"),
    (b"set k 4294967295 99999999999 3\r\n\x00\r\n\r\n", b"set", b"k"),
    (b"set " + K250 + b" 0 0 1\r\na\r\n", b"set", K250),
    (b"set k 0 0 4294967297\r\na\r\n", b"set", b"k"),  # nutcracker's uint32 length: 1
    (b"cas k 0 0 1 5\r\na\r\n", b"cas", b"k"),
    (b"cas  k 0 0 1  5 \r\na\r\n", b"cas", b"k"),
    (b"incr k 1\r\n", b"incr", b"k"),
    (b"decr k 18446744073709551616\r\n", b"decr", b"k"),
    (b"incr k -1\r\n", b"incr", b"k"),
    (b"incr k -\r\n", b"incr", b"k"),
    (b"incr  k  1  \r\n", b"incr", b"k"),
    (b"touch k 10\r\n", b"touch", b"k"),
    (b"touch k -1\r\n", b"touch", b"k"),
    (b"delete k\r\n", b"delete", b"k"),
    (b"delete k  \r\n", b"delete", b"k"),
    (b"delete noreply\r\n", b"delete", b"noreply"),
]

NOREPLY = [
    (b"set k 0 0 1 noreply\r\na\r\n", b"set", b"k"),
    (b"set k 0 0 1  noreply \r\na\r\n", b"set", b"k"),
    (b"add k 0 0 1 noreply\r\na\r\n", b"add", b"k"),
    (b"replace k 0 0 1 noreply\r\na\r\n", b"replace", b"k"),
    (b"append k 0 0 1 noreply\r\na\r\n", b"append", b"k"),
    (b"prepend k 0 0 1 noreply\r\na\r\n", b"prepend", b"k"),
    (b"cas k 0 0 1 5 noreply\r\na\r\n", b"cas", b"k"),
    (b"incr k 5 noreply\r\n", b"incr", b"k"),
    (b"decr k 5 noreply \r\n", b"decr", b"k"),
    (b"touch k 10 noreply\r\n", b"touch", b"k"),
    (b"delete k noreply\r\n", b"delete", b"k"),
    (b"delete noreply noreply\r\n", b"delete", b"noreply"),
]


@pytest.mark.parametrize(("raw", "cmd", "key"), SINGLE)
def test_single_requests(raw: bytes, cmd: bytes, key: bytes) -> None:
    assert three_ways(raw) == [fwd(raw, cmd, key)]


@pytest.mark.parametrize(("raw", "cmd", "key"), NOREPLY)
def test_noreply_requests(raw: bytes, cmd: bytes, key: bytes) -> None:
    assert three_ways(raw) == [fwd(raw, cmd, key, noreply=True)]


@pytest.mark.parametrize(("raw", "keys"), [
    (b"get a b\r\n", [b"a", b"b"]),
    (b"gets a b c\r\n", [b"a", b"b", b"c"]),
    (b"get  a   b  \r\n", [b"a", b"b"]),
    (b"get k k\r\n", [b"k", b"k"]),
    (b"get k noreply\r\n", [b"k", b"noreply"]),
    (b"get k\nget j\r\n", [b"k\nget", b"j"]),  # LF is a key byte, as in nutcracker
    (b"get a " + K250 + b"\r\n", [b"a", K250]),
])
def test_multi_get_is_split(raw: bytes, keys: list[bytes]) -> None:
    cmd = raw.split()[0]
    assert three_ways(raw) == [(raw, KIND_SPLIT, cmd, keys[0], keys, False)]


@pytest.mark.parametrize("raw", [b"version\r\n", b"version  \r\n", b"  version\r\n"])
def test_version_goes_to_the_placeholder_key(raw: bytes) -> None:
    assert three_ways(raw) == [fwd(raw, b"version", b"placeholder")]


def test_pipeline_of_every_verb() -> None:
    reqs = [raw for raw, _, _ in SINGLE + NOREPLY] + [b"get a b\r\n", b"version\r\n"]
    rows = three_ways(b"".join(reqs))
    assert [r[0] for r in rows] == reqs


@pytest.mark.parametrize("raw", [b"quit\r\n", b"quit  \r\n", b" quit\r\n"])
def test_quit_stops_parsing(raw: bytes) -> None:
    for step in (0, 1):
        rows, err = feed_requests(b"get a\r\n" + raw + b"get b\r\nGARBAGE\r\n", step)
        assert err is None
        assert rows == [fwd(b"get a\r\n", b"get", b"a"), (raw, KIND_QUIT, b"quit", b"", None, False)]
    parser = MemcacheRequestParser()
    assert [r.kind for r in parser.feed(raw)] == [KIND_QUIT]
    assert parser.feed(b"get c\r\n") == []
    assert parser.error is None


# -- requests: rejected (nutcracker closes the connection) --------------------------------------

REJECTED = [
    b"GET k\r\n", b"Get k\r\n", b"get\tk\r\n", b"get1 k\r\n", b"gat 0 k\r\n", b"gats 0 k\r\n",
    b"stats\r\n", b"flush_all\r\n", b"verbosity 1\r\n", b"shutdown\r\n", b"mn\r\n",
    b"\r\n", b" \r\n", b"\n", b"get\r\n", b"get \r\n", b"get  \r\n",
    b"get " + K251 + b"\r\n", b"get a " + K251 + b"\r\n", b"set " + K251 + b" 0 0 1\r\na\r\n",
    b"get a\r", b"get a\rx", b"get k\r\r\n", b"version\n", b"version foo\r\n", b"quit foo\r\n",
    b"set k 0 0 1\r\nab\r\n", b"set k 0 0 1\ra\r\n", b"set k 0 0 1\r\na\rX",
    b"set k 0 0 1\r\na\nX", b"set k 0 0 1\r\n\r\n\r\n",
    b"set k 0 -1 1\r\na\r\n", b"set k -1 0 1\r\na\r\n", b"set k 0 0 -1\r\na\r\n",
    b"set k 0 0 1x\r\na\r\n", b"set k 0x 0 1\r\na\r\n", b"set k 0 0\r\n", b"set k 0\r\n",
    b"set k\r\n", b"set k 0 0 \r\n", b"set k 0 0 1 norepl\r\na\r\n",
    b"set k 0 0 1 noreplyy\r\na\r\n", b"set k 0 0 1 xyz\r\na\r\n",
    b"set k 0 0 1 NOREPLY\r\na\r\n", b"set k 0 0 1 noreply x\r\na\r\n",
    b"set k 0 0 1 noreply noreply\r\na\r\n", b"set k 0 0 1 5\r\na\r\n",
    b"cas k 0 0 1\r\na\r\n", b"cas k 0 0 1 \r\na\r\n", b"cas k 0 0 1 -5\r\na\r\n",
    b"incr k\r\n", b"incr k \r\n", b"incr k abc\r\n", b"incr k 1 2\r\n", b"incr k --1\r\n",
    b"incr k 1-\r\n", b"decr k 1 noreply x\r\n", b"touch k\r\n", b"touch k 10 20\r\n",
    b"touch k 1a\r\n", b"delete k 0\r\n", b"delete k noreply extra\r\n", b"delete k1 k2\r\n",
    b"delete\r\n",
]


@pytest.mark.parametrize("bad", REJECTED)
def test_rejected(bad: bytes) -> None:
    good = b"get a\r\nset b 0 0 1\r\nx\r\n"
    expected = feed_requests(good)[0]
    assert len(expected) == 2
    for step in (0, 1, 3):
        rows, err = feed_requests(good + bad + TRAILER, step)
        assert err is not None, step
        assert rows == expected, step


def test_after_an_error_nothing_more_is_parsed() -> None:
    parser = MemcacheRequestParser()
    assert parser.feed(b"get a\r\nGET b\r\nget c\r\n")[0].key == b"a"
    assert parser.error is not None
    assert parser.feed(b"get d\r\n") == []


PREFIXES = [
    (b"G", True), (b"get\t", True), (b"ge", False), (b"get ", False), (b"get k", False),
    (b"gat ", True), (b"quit x", True), (b"set k x", True), (b"set k 0 0 1 x", True),
    (b"set k 0 0 1 nox", False), (b"set k 0 0 1 noreply x", True), (b"incr k x", True),
    (b"incr k -", False), (b"delete k 0", True), (b"get " + K251, False),
    (b"get " + K251 + b" ", True), (b"set k 0 0 1\r\nab", True), (b"set k 0 0 1\r\na", False),
]


@pytest.mark.parametrize(("prefix", "rejected"), PREFIXES)
def test_errors_are_found_before_the_line_ends(prefix: bytes, rejected: bool) -> None:
    """Nutcracker rejects a bad byte at once; a too-long key only once it ends."""
    for step in (0, 1):
        rows, err = feed_requests(prefix, step)
        assert rows == []
        assert (err is not None) is rejected


# -- requests: cut data blocks and large lengths ----------------------------------------------

def test_storage_cut_at_every_byte() -> None:
    raw = b"set k 0 0 10 noreply\r\n0123\r\n6789\r\n"
    for cut in range(1, len(raw)):
        parser = MemcacheRequestParser()
        assert parser.feed(raw[:cut]) == []
        assert parser.error is None
        reqs = parser.feed(raw[cut:] + TRAILER)
        assert [row(r) for r in reqs] == [fwd(raw, b"set", b"k", True), TRAILER_ROW]


def test_large_value_in_chunks() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB, with CR LF inside
    raw = b"set big 0 0 %d\r\n" % len(value) + value + b"\r\n"
    parser = MemcacheRequestParser()
    out: list[Request] = []
    for i in range(0, len(raw), 16384):
        out += parser.feed(raw[i:i + 16384])
    assert [r.raw for r in out] == [raw]


@pytest.mark.parametrize("length", [2**31, 2**32 - 1, 10**40 + 2**31])  # 10**40 % 2**32 == 0
def test_huge_declared_length_allocates_nothing(length: int) -> None:
    parser = MemcacheRequestParser()
    tracemalloc.start()
    try:
        assert parser.feed(b"set k 0 0 %d\r\n" % length) == []
        for _ in range(64):
            assert parser.feed(b"x" * 1024) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parser.error is None
    assert peak < 1_000_000


def test_feed_never_raises_on_odd_input() -> None:
    for data in (b"", b"\x00" * 10, b"\r\n" * 5, b"\xff" * 300, b"set k 0 0 99999999999999999999"):
        parser = MemcacheRequestParser()
        parser.feed(data)
        parser.feed(data)


# -- replies ----------------------------------------------------------------------------------

def feed_replies(data: bytes, step: int = 0) -> tuple[list[bytes], str | None]:
    parser = CODEC.reply_parser()
    out: list[bytes] = []
    if step:
        for i in range(0, len(data), step):
            out += parser.feed(data[i:i + step])
    else:
        out = parser.feed(data)
    return out, parser.error


VALUE_DATA = b"x\r\nEND\r\nVALUE y 0 1\r\n"
REPLIES = [
    b"STORED\r\n", b"NOT_STORED\r\n", b"EXISTS\r\n", b"NOT_FOUND\r\n", b"DELETED\r\n",
    b"TOUCHED\r\n", b"ERROR\r\n", b"END\r\n", b"0\r\n", b"42\r\n", b"18446744073709551615\r\n",
    b"VERSION 1.6.18\r\n", b"VERSION\r\n", b"VERSION 1.2 3\r\n",
    b"CLIENT_ERROR bad data chunk\r\n", b"SERVER_ERROR out of memory storing object\r\n",
    b"SERVER_ERROR\r\n", b"SERVER_ERROR \r\n", b"STORED \r\n", b"DELETED  \r\n", b"ERROR \r\n",
    b"TOUCHED \r\n", b"123 \r\n",
    b"VALUE k 0 1\r\na\r\nEND\r\n",
    b"VALUE k 5 %d\r\n" % len(VALUE_DATA) + VALUE_DATA + b"\r\nEND\r\n",
    b"VALUE k 0 1 99\r\na\r\nEND\r\n",
    b"VALUE k 0 0\r\n\r\nEND\r\n",
    b"VALUE k 0 1\r\na\r\nVALUE j 0 2\r\nbb\r\nVALUE k 0 1\r\na\r\nEND\r\n",
    b"VALUE  k  0  1\r\na\r\nEND\r\n",
    b"VALUE k 0 1  \r\na\r\nEND\r\n",
    b"VALUE k 01 001\r\na\r\nEND\r\n",
    b"VALUE k 0 1 abc def\r\na\r\nEND\r\n",
    b"VALUE k 0 4294967297\r\na\r\nEND\r\n",  # uint32 length, as nutcracker
    # nutcracker ends VALUE blocks at any known word, not only END
    b"VALUE k 0 1\r\na\r\nSTORED\r\n",
    b"VALUE k 0 1\r\na\r\nNOT_FOUND\r\n",
    b"VALUE k 0 1\r\na\r\nSERVER_ERROR x\r\n",
    b"VALUE k 0 1\r\na\r\nVERSION 1\r\n",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_replies(reply: bytes) -> None:
    for step in (0, 1):
        assert feed_replies(reply, step) == ([reply], None)
        assert feed_replies(reply + b"END\r\n" + reply, step) == ([reply, b"END\r\n", reply], None)


def test_replies_pipelined_and_cut_at_every_byte() -> None:
    stream = b"".join(REPLIES)
    for cut in range(1, len(stream)):
        parser = MemcacheReplyParser()
        out = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert out == REPLIES
        assert parser.error is None


@pytest.mark.parametrize("bad", [
    b"END \r\n", b"ENDX\r\n", b"12a\r\n", b" STORED\r\n", b"\r\n", b"stored\r\n", b"OK\r\n",
    b"-1\r\n", b"ERROR foo\r\n", b"STORED foo\r\n", b"NOT_FOUND foo\r\n", b"EXISTS x\r\n",
    b"TOUCHED foo\r\n", b"STORED\nxyz\r\n", b"END\n\r\n", b"VERSION\nx\r\n", b"123 x\r\n",
    b"123\n\r\n", b"SERVER_ERROR a\rb\r\n", b"SERVER_ERRORx\r\n", b"CLIENT_ERROR\nfoo\r\n",
    b"ERROR\n\r\n", b"STORED\r\r\n",
    b"VALUE k x 1\r\na\r\nEND\r\n", b"VALUE k 0 1\r\nab\r\nEND\r\n", b"VALUE k 0\r\na\r\nEND\r\n",
    b"VALUE k 0 1\ra\r\nEND\r\n", b"VALUE k 0 1\n\r\na\r\nEND\r\n", b"VALUE k 0 1\r\na\rEND\r\n",
    b"VALUE k 0 1\r\na\r\nEND \r\n", b"VALUE k 0 1\r\na\r\nENDX\r\n", b"VALUE k 0 1\r\na\r\n\r\n",
    b"VALUE k 0 1\r\na\r\n123\r\n", b"VALUE k 0 1\r\na\r\n END\r\n", b"VALUE \r\n0 1\r\n",
    b"VALUE k\r\n0 1\r\na\r\nEND\r\n", b"VALUEX k 0 1\r\na\r\nEND\r\n",
])
def test_bad_replies(bad: bytes) -> None:
    for step in (0, 1):
        out, err = feed_replies(b"STORED\r\n" + bad + b"END\r\n", step)
        assert out == [b"STORED\r\n"]
        assert err is not None


@pytest.mark.parametrize("cut", [b"STORED\n", b"VALUE\r\n", b"VALUE \r\n", b"VALUE k\r\na\r\nEND\r\n",
                                 b"VALUE k 0 1\r\na\r\nVALUE", b"SERVER_ERROR no end"])
def test_incomplete_replies_wait(cut: bytes) -> None:
    """Nutcracker keeps reading (a VALUE key runs to the first space, CR and LF included)."""
    assert feed_replies(cut) == ([], None)


def test_large_value_reply_in_chunks() -> None:
    value = b"\r\nEND\r\n" * 150_000
    reply = b"VALUE k 0 %d\r\n" % len(value) + value + b"\r\nEND\r\n"
    parser = MemcacheReplyParser()
    out: list[bytes] = []
    for i in range(0, len(reply), 7000):
        out += parser.feed(reply[i:i + 7000])
    assert out == [reply]


def test_huge_value_reply_allocates_nothing() -> None:
    parser = MemcacheReplyParser()
    tracemalloc.start()
    try:
        assert parser.feed(b"VALUE k 0 2147483648\r\n") == []
        for _ in range(64):
            assert parser.feed(b"x" * 1024) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parser.error is None
    assert peak < 1_000_000


# -- split / merge ----------------------------------------------------------------------------

def router(table: dict[bytes, int]) -> Any:
    return lambda key: table[key]


def value(key: bytes, data: bytes | None = None, cas: bytes = b"") -> bytes:
    data = key.upper() if data is None else data
    return b"VALUE %s 0 %d%s\r\n%s\r\n" % (key, len(data), cas, data)


def get_request(raw: bytes) -> Request:
    reqs = MemcacheRequestParser().feed(raw)
    assert len(reqs) == 1 and reqs[0].kind == KIND_SPLIT
    return reqs[0]


ROUTE = {b"a1": 1, b"b1": 0, b"a2": 1, b"c1": 2, b"b2": 0, b"a3": 1}


def test_split_groups_keys_by_server_in_order_of_first_appearance() -> None:
    req = get_request(b"get  a1 b1 a2  c1 b2 a1 a3\r\n")
    frags, ctx = CODEC.split(req, router(ROUTE))
    assert frags == [
        (1, b"get a1 a2 a1 a3 \r\n"),
        (0, b"get b1 b2 \r\n"),
        (2, b"get c1 \r\n"),
    ]
    assert ctx == [0, 1, 0, 2, 1, 0, 0]


def test_split_gets_and_single_server() -> None:
    req = get_request(b"gets a1 a2\r\n")
    assert CODEC.split(req, lambda key: 4) == ([(4, b"gets a1 a2 \r\n")], [0, 0])


def test_merge_in_key_order_with_duplicates() -> None:
    req = get_request(b"get a1 b1 a2 c1 b2 a1 a3\r\n")
    _, ctx = CODEC.split(req, router(ROUTE))
    replies: list[bytes | None] = [
        value(b"a1") + value(b"a2", b"x\r\nEND\r\n") + value(b"a1") + value(b"a3") + b"END\r\n",
        value(b"b1") + value(b"b2") + b"END\r\n",
        value(b"c1") + b"END\r\n",
    ]
    merged = CODEC.merge(req, ctx, replies)
    assert merged == (value(b"a1") + value(b"b1") + value(b"a2", b"x\r\nEND\r\n") + value(b"c1")
                      + value(b"b2") + value(b"a1") + value(b"a3") + b"END\r\n")


def test_merge_missing_keys_shift_like_nutcracker() -> None:
    """Nutcracker gives each key the next unused block of its server: no key matching."""
    req = get_request(b"get a1 b1 a2 c1 b2 a3\r\n")
    _, ctx = CODEC.split(req, router(ROUTE))
    replies: list[bytes | None] = [
        value(b"a2") + value(b"a3") + b"END\r\n",  # a1 is missing
        b"END\r\n",  # b1 and b2 are missing
        value(b"c1", cas=b" 77") + b"END\r\n",
    ]
    merged = CODEC.merge(req, ctx, replies)
    # slots: a1 <- a2, b1 <- -, a2 <- a3, c1 <- c1, b2 <- -, a3 <- -
    assert merged == value(b"a2") + value(b"a3") + value(b"c1", cas=b" 77") + b"END\r\n"
    assert CODEC.merge(req, ctx, [b"END\r\n"] * 3) == b"END\r\n"


def test_merge_drops_extra_blocks() -> None:
    req = get_request(b"get a1 a2\r\n")
    _, ctx = CODEC.split(req, lambda key: 0)
    reply = value(b"a1") + value(b"a2") + value(b"zz") + b"END\r\n"
    assert CODEC.merge(req, ctx, [reply]) == value(b"a1") + value(b"a2") + b"END\r\n"


@pytest.mark.parametrize("bad", [
    b"SERVER_ERROR out of memory\r\n", b"STORED\r\n", b"ERROR\r\n", b"5\r\n",
    value(b"a1") + b"SERVER_ERROR x\r\n", value(b"a1") + b"STORED\r\n", b"END\r\nEND\r\n",
    b"VALUE a1 0 5\r\nab\r\nEND\r\n", b"", None,
])
def test_merge_rejects_other_fragment_replies(bad: bytes | None) -> None:
    req = get_request(b"get a1 b1\r\n")
    _, ctx = CODEC.split(req, router(ROUTE))
    with pytest.raises(MergeError):
        CODEC.merge(req, ctx, [bad, value(b"b1") + b"END\r\n"])


def test_codec_small_parts() -> None:
    assert CODEC.error_reply("Connection refused") == b"SERVER_ERROR Connection refused\r\n"
    assert CODEC.error_reply("Invalid argument") == b"SERVER_ERROR Invalid argument\r\n"
    assert CODEC.is_failure_reply(b"SERVER_ERROR out of memory\r\n") is False
    assert CODEC.close_on_split_error(get_request(b"get a b\r\n")) is True
    assert CODEC.server_handshake("secret", 3) == []
    assert isinstance(CODEC.request_parser(16336), MemcacheRequestParser)
    assert isinstance(CODEC.reply_parser(), MemcacheReplyParser)
