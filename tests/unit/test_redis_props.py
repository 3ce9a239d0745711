"""Property tests of the Redis framers (hypothesis).

1. Any valid stream (commands drawn from the table with random binary arguments; nested RESP2
   replies) parses to the same requests / replies whole, byte by byte and in random chunks,
   and to exactly what was generated.
2. Any stream at all (random bytes, mutated valid streams, RESP-looking token soup) gives the
   same verdict as a small reference model written straight from the rules in the module
   docstrings (one byte at a time, whole buffer, no fast paths), under any cut, and never
   raises.
"""

from __future__ import annotations

from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyshard.protocol.base import KIND_FORWARD, Request
from keyshard.protocol.redis import MAX_HEADER_DIGITS, RedisReplyParser, RedisRequestParser
from keyshard.protocol.redis_commands import (
    ARGEVAL,
    ARGKVX,
    CLASS_NAMES,
    COMMANDS,
    KEYS_ALL,
    KEYS_ODD,
    LOOKUP,
    MAX_NAME_LEN,
    PLACEHOLDER,
    CommandSpec,
)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAXK = 300  # a small max_key_len, so that the limit is hit by generated keys
ReqView = tuple[bytes, int, bytes, bytes, list[bytes] | None]

# --- generating valid requests ---------------------------------------------------------------

SPECS = sorted((s for s in COMMANDS.values() if s.supported), key=lambda s: s.name)
ARG = st.one_of(st.binary(max_size=12), st.binary(min_size=90, max_size=1100))
KEY = st.one_of(st.binary(max_size=12), st.binary(min_size=95, max_size=MAXK - 1))


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, ReqView]:
    """One valid request and what the parser must make of it."""
    spec: CommandSpec = draw(st.sampled_from(SPECS))
    extra = draw(st.integers(0, 12))
    narg = min(max(spec.min_narg, spec.min_narg + extra), spec.max_narg)
    if spec.cls == ARGKVX and narg % 2 == 0:
        narg += 1
    args = [draw(KEY) if _is_key(spec, i) else draw(ARG) for i in range(1, narg)]
    if spec.cls == ARGEVAL:
        args[1] = str(draw(st.integers(1, 10 ** 6))).encode()
    name = draw(st.sampled_from([spec.name, spec.name.upper(), spec.name.capitalize()]))
    raw = b"*%d\r\n" % narg + _bulk(name) + b"".join(_bulk(a) for a in args)
    kind = spec.kind_for(narg)
    key = args[spec.key_index - 1] if spec.key_index else PLACEHOLDER
    want_args = spec.local or narg >= spec.split_narg
    return raw, (raw, kind, spec.name, key, args if want_args else None)


def _is_key(spec: CommandSpec, idx: int) -> bool:
    if idx == spec.key_index:
        return True
    return spec.key_elements == KEYS_ALL or (spec.key_elements == KEYS_ODD and idx % 2 == 1)


def cuts(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """`data` cut at random places."""
    def chop(points: list[int]) -> list[bytes]:
        edges = [0, *sorted(set(points)), len(data)]
        return [data[a:b] for a, b in pairwise(edges)]
    return st.lists(st.integers(0, len(data)), max_size=20).map(chop)


def _run(parser: RedisRequestParser, chunks: list[bytes]) -> tuple[list[ReqView], str | None]:
    out: list[Request] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return [(r.raw, r.kind, r.cmd, r.key, r.args) for r in out], parser.error


@SETTINGS
@given(st.lists(requests(), min_size=1, max_size=8), st.data())
def test_valid_request_streams_parse_the_same_under_any_cut(
        reqs: list[tuple[bytes, ReqView]], data: st.DataObject) -> None:
    stream = b"".join(raw for raw, _ in reqs)
    expected = ([view for _, view in reqs], None)
    assert _run(RedisRequestParser(MAXK), [stream]) == expected
    assert _run(RedisRequestParser(MAXK), data.draw(cuts(stream))) == expected
    single = [stream[i:i + 1] for i in range(len(stream))]
    assert _run(RedisRequestParser(MAXK), single) == expected


# --- the reference model of the request rules ------------------------------------------------

class Incomplete(Exception):
    pass


class Bad(Exception):
    pass


def ref_header(data: bytes, p: int, lead: int, allow_empty: bool) -> tuple[int, int]:
    """`<lead><digits>\\r\\n`, byte by byte: (value mod 2**32, next position)."""
    if p >= len(data):
        raise Incomplete
    if data[p] != lead:
        raise Bad
    j = p + 1
    while True:
        if j >= len(data):
            raise Incomplete
        if data[j] == 13:
            break
        if not 48 <= data[j] <= 57 or j - p > MAX_HEADER_DIGITS:
            raise Bad
        j += 1
    if j == p + 1 and not allow_empty:
        raise Bad
    if j + 1 >= len(data):
        raise Incomplete
    if data[j + 1] != 10:
        raise Bad
    return int(data[p + 1:j] or b"0") % 2 ** 32, j + 2


def ref_body(data: bytes, p: int, size: int) -> tuple[bytes, int]:
    end = p + size
    if end < len(data) and data[end] != 13:
        raise Bad
    if end + 1 >= len(data):
        raise Incomplete
    if data[end + 1] != 10:
        raise Bad
    return data[p:end], end + 2


def ref_request(data: bytes, p: int, maxk: int) -> tuple[ReqView, int]:
    start = p
    narg, p = ref_header(data, p, 42, False)
    if narg == 0:
        raise Bad
    size, p = ref_header(data, p, 36, False)
    if not 0 < size <= MAX_NAME_LEN:
        raise Bad
    name, p = ref_body(data, p, size)
    spec = COMMANDS.get(name.lower())
    if spec is None or name.lower() == b"move" or not _ref_arity(spec, narg):
        raise Bad
    key, args = PLACEHOLDER, []
    for idx in range(1, narg):
        iskey = _is_key(spec, idx)
        size, p = ref_header(data, p, 36, iskey)
        if iskey and size >= maxk:
            raise Bad
        arg, p = ref_body(data, p, size)
        if idx == spec.key_index:
            key = arg
        if spec.cls == ARGEVAL and idx == 2 and (not arg.isdigit() or int(arg) % 2 ** 32 == 0):
            raise Bad
        args.append(arg)
    kind = spec.kind_for(narg)
    keep = spec.local or narg >= spec.split_narg
    return (data[start:p], kind, spec.name, key, args if keep else None), p


# class -> (min narg, max narg), as in the table of the reference (§7.2)
REF_ARITY = {"argz": (1, 1), "nokey": (1, None), "arg0": (2, 2), "arg1": (3, 3), "arg2": (4, 4),
             "arg3": (5, 5), "argn": (2, None), "argx": (2, None), "argkvx": (3, None),
             "argeval": (4, None)}


def _ref_arity(spec: CommandSpec, narg: int) -> bool:
    low, high = REF_ARITY[CLASS_NAMES[spec.cls]]
    if narg < low or (high is not None and narg > high):
        return False
    return CLASS_NAMES[spec.cls] != "argkvx" or narg % 2 == 1


def ref_requests(data: bytes, maxk: int) -> tuple[list[ReqView], bool]:
    """(the requests, whether the stream is refused)."""
    out: list[ReqView] = []
    p = 0
    while p < len(data):
        try:
            view, p = ref_request(data, p, maxk)
        except Incomplete:
            return out, False
        except Bad:
            return out, True
        out.append(view)
    return out, False


# --- any stream: same verdict as the model ---------------------------------------------------

TOKENS = [b"*", b"$", b"\r\n", b"\r", b"\n", b"0", b"1", b"2", b"3", b"9", b"12", b"-1", b"a",
          b"GET", b"get", b"MGET", b"mset", b"EVAL", b"ping", b"lolwut", b"COMMAND", b"quit",
          b"DEL", b"hello", b" ", b"4294967297", b"*2\r\n$3\r\nGET\r\n", b"$1\r\nk\r\n",
          b"*3\r\n$4\r\nmget\r\n", b"*1\r\n$4\r\nPING\r\n", b"$0\r\n\r\n", b"$\r\n\r\n"]


def mutated(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(valid))
        for _ in range(draw(st.integers(1, 3))):
            if not data:
                break
            i = draw(st.integers(0, len(data) - 1))
            op = draw(st.sampled_from(["flip", "insert", "delete"]))
            if op == "flip":
                data[i] = draw(st.sampled_from([0, 10, 13, 36, 42, 45, 48, 49, 57, 97, 255]))
            elif op == "insert":
                data[i:i] = draw(st.sampled_from(TOKENS))
            else:
                del data[i:i + draw(st.integers(1, 4))]
        return bytes(data)
    return mutate()


ANY_REQUESTS = st.one_of(
    st.binary(max_size=120),
    st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join),
    mutated(st.lists(requests(), min_size=1, max_size=4).map(
        lambda rs: b"".join(raw for raw, _ in rs))),
)


@SETTINGS
@given(ANY_REQUESTS, st.data())
def test_any_request_stream_gets_the_verdict_of_the_model(stream: bytes,
                                                           data: st.DataObject) -> None:
    expected_reqs, refused = ref_requests(stream, MAXK)
    for chunks in ([stream], data.draw(cuts(stream)), [bytes([b]) for b in stream]):
        reqs, error = _run(RedisRequestParser(MAXK), chunks)
        assert reqs == expected_reqs
        assert (error is not None) == refused, error
        assert error is None or not error.startswith("internal")


def test_the_model_agrees_on_a_few_known_cases() -> None:
    assert ref_requests(b"*2\r\n$3\r\nget\r\n$1\r\na\r\n", MAXK)[0][0][3] == b"a"
    assert ref_requests(b"PING\r\n", MAXK) == ([], True)
    assert ref_requests(b"*2\r\n$3\r\nget", MAXK) == ([], False)
    assert LOOKUP[b"GET"].kind == KIND_FORWARD


# --- replies ---------------------------------------------------------------------------------

LINE = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b""))
SCALARS = st.one_of(
    LINE.map(lambda t: b"+" + t + b"\r\n"),
    LINE.map(lambda t: b"-" + t + b"\r\n"),
    st.from_regex(rb"\A[-0-9]{0,12}\Z").map(lambda t: b":" + t + b"\r\n"),
    st.one_of(st.binary(max_size=30), st.binary(min_size=95, max_size=1200)).map(_bulk),
    st.sampled_from([b"$-1\r\n", b"*-1\r\n", b"*0\r\n", b"$0\r\n\r\n", b"$-2\r\n"]),
)
REPLY = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, min_size=1, max_size=6).map(
        lambda items: b"*%d\r\n" % len(items) + b"".join(items)),
    max_leaves=25,
)


def _replies(chunks: list[bytes]) -> tuple[list[bytes], str | None]:
    parser = RedisReplyParser()
    out: list[bytes] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out, parser.error


@SETTINGS
@given(st.lists(REPLY, min_size=1, max_size=6), st.data())
def test_valid_reply_streams_parse_the_same_under_any_cut(replies: list[bytes],
                                                          data: st.DataObject) -> None:
    stream = b"".join(replies)
    assert _replies([stream]) == (replies, None)
    assert _replies(data.draw(cuts(stream))) == (replies, None)
    assert _replies([stream[i:i + 1] for i in range(len(stream))]) == (replies, None)


def ref_reply(data: bytes, p: int) -> int:
    """The end of the reply at `p` (raises Incomplete / Bad)."""
    if p >= len(data):
        raise Incomplete
    c = data[p]
    if c in b"+-:":
        j = p + 1
        while j < len(data) and data[j] != 13:
            if c == 58 and data[j] not in b"-0123456789":
                raise Bad
            j += 1
        if j + 1 >= len(data):
            raise Incomplete
        if data[j + 1] != 10:
            raise Bad
        return j + 2
    if c not in b"$*":
        raise Bad
    null = p + 1 < len(data) and data[p + 1] == 45
    value, q = ref_header(data, p + 1 if null else p, 45 if null else c, False)
    if null:
        return q
    if c == 36:
        return ref_body(data, q, value)[1]
    for _ in range(value):
        q = ref_reply(data, q)
    return q


def ref_replies(data: bytes) -> tuple[list[bytes], bool]:
    out: list[bytes] = []
    p = 0
    while p < len(data):
        try:
            end = ref_reply(data, p)
        except Incomplete:
            return out, False
        except Bad:
            return out, True
        out.append(data[p:end])
        p = end
    return out, False


REPLY_TOKENS = [b"*", b"$", b":", b"+", b"-", b"_", b"\r\n", b"\r", b"\n", b"0", b"1", b"3",
                b"-1", b"a", b"OK", b"*2\r\n", b"$1\r\nx\r\n", b"$-1\r\n", b":12\r\n", b"+OK\r\n",
                b"4294967297"]
ANY_REPLIES = st.one_of(
    st.binary(max_size=120),
    st.lists(st.sampled_from(REPLY_TOKENS), max_size=40).map(b"".join),
    mutated(st.lists(REPLY, min_size=1, max_size=4).map(b"".join)),
)


@SETTINGS
@given(ANY_REPLIES, st.data())
def test_any_reply_stream_gets_the_verdict_of_the_model(stream: bytes,
                                                         data: st.DataObject) -> None:
    expected, refused = ref_replies(stream)
    for chunks in ([stream], data.draw(cuts(stream)), [bytes([b]) for b in stream]):
        replies, error = _replies(chunks)
        assert replies == expected
        assert (error is not None) == refused, error
        assert error is None or not error.startswith("internal")

