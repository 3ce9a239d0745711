"""Property tests for both memcache framers: the way a stream is cut never changes the result.

- any valid request/reply stream parses to the expected frames, whole, byte by byte, or in
  random chunks;
- any byte string (random, or random protocol words) gives the same frames and the same
  verdict (error or not) however it is cut, and never raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyshard.protocol.base import KIND_FORWARD, KIND_SPLIT
from keyshard.protocol.memcache import MemcacheReplyParser, MemcacheRequestParser

settings.register_profile("memcache", max_examples=int(os.environ.get("KS_HYPOTHESIS_EXAMPLES", "300")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("memcache")

Row = tuple[bytes, int, bytes, bytes, list[bytes] | None, bool]

# -- generators -------------------------------------------------------------------------------

keys = st.one_of(
    st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b" ", b"_").replace(b"\r", b"_")),
    st.sampled_from([b"k" * 250, b"a\nb", b"\t", b"\x00"]),
)
sp = st.integers(1, 3).map(lambda n: b" " * n)
opt_sp = st.integers(0, 2).map(lambda n: b" " * n)
digits = st.integers(0, 2**40).map(lambda n: str(n).encode())
num = st.one_of(digits, digits.map(lambda d: b"-" + d), st.just(b"-"))
values = st.binary(max_size=40) | st.sampled_from([b"\r\nEND\r\n", b"\r\n", b""])


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, Row]:
    verb = draw(st.sampled_from([b"get", b"gets", b"set", b"add", b"replace", b"append",
                                 b"prepend", b"cas", b"incr", b"decr", b"touch", b"delete",
                                 b"version"]))
    lead, tail = draw(opt_sp), draw(opt_sp)
    if verb == b"version":
        raw = lead + verb + tail + b"\r\n"
        return raw, (raw, KIND_FORWARD, verb, b"placeholder", None, False)
    if verb in (b"get", b"gets"):
        ks = draw(st.lists(keys, min_size=1, max_size=5))
        line = verb + b"".join(draw(sp) + k for k in ks)
        raw = lead + line + tail + b"\r\n"
        if len(ks) == 1:
            return raw, (raw, KIND_FORWARD, verb, ks[0], None, False)
        return raw, (raw, KIND_SPLIT, verb, ks[0], ks, False)
    key = draw(keys)
    noreply = draw(st.booleans())
    if verb == b"delete":
        fields: list[bytes] = []
    elif verb in (b"incr", b"decr", b"touch"):
        fields = [draw(num)]
    else:
        data = draw(values)
        fields = [draw(digits), draw(digits), str(len(data)).encode()]
        if verb == b"cas":
            fields.append(draw(digits))
    line = lead + verb + draw(sp) + key + b"".join(draw(sp) + f for f in fields)
    if noreply:
        line += draw(sp) + b"noreply"
    raw = line + tail + b"\r\n"
    if verb not in (b"delete", b"incr", b"decr", b"touch"):
        raw += data + b"\r\n"
    return raw, (raw, KIND_FORWARD, verb, key, None, noreply)


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["line", "num", "text", "values"]))
    if kind == "line":
        word = draw(st.sampled_from([b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND",
                                     b"DELETED", b"TOUCHED", b"ERROR"]))
        return word + draw(opt_sp) + b"\r\n"
    if kind == "num":
        return draw(digits) + draw(opt_sp) + b"\r\n"
    if kind == "text":
        word = draw(st.sampled_from([b"SERVER_ERROR", b"CLIENT_ERROR", b"VERSION"]))
        text = draw(st.binary(max_size=20)).replace(b"\r", b"")
        return word + (b" " + text if text else b"") + b"\r\n"
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        data = draw(values)
        cas = draw(st.sampled_from([b"", b" 12345"]))
        out += b"VALUE%s%s%s%s%s%d%s\r\n%s\r\n" % (
            draw(sp), draw(keys).replace(b" ", b"_"), draw(sp), draw(digits), draw(sp),
            len(data), cas, data)
    return out + b"END\r\n"


chunkings = st.lists(st.integers(1, 64), min_size=1, max_size=40)

# -- helpers ----------------------------------------------------------------------------------


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[pos:pos + size])
        pos += size
        i += 1
    return out


def run(factory: Callable[[], Any], pieces: list[bytes], frame: Callable[[Any], Any]
        ) -> tuple[list[Any], bool]:
    parser = factory()
    out: list[Any] = []
    for piece in pieces:
        out += [frame(x) for x in parser.feed(piece)]
    assert not (parser.error or "").startswith("internal"), parser.error
    return out, parser.error is not None


def req_row(req: Any) -> Row:
    return (req.raw, req.kind, req.cmd, req.key, req.args, req.noreply)


def same_three_ways(factory: Callable[[], Any], data: bytes, sizes: list[int],
                    frame: Callable[[Any], Any]) -> tuple[list[Any], bool]:
    whole = run(factory, [data], frame)
    assert run(factory, [data[i:i + 1] for i in range(len(data))], frame) == whole
    assert run(factory, cut(data, sizes), frame) == whole
    return whole


# -- requests ---------------------------------------------------------------------------------


@given(st.lists(requests(), min_size=1, max_size=8), chunkings)
def test_valid_request_streams(reqs: list[tuple[bytes, Row]], sizes: list[int]) -> None:
    data = b"".join(raw for raw, _ in reqs)
    rows, failed = same_three_ways(MemcacheRequestParser, data, sizes, req_row)
    assert not failed
    assert rows == [r for _, r in reqs]


@given(st.lists(requests(), max_size=3), st.binary(max_size=200), chunkings)
def test_garbage_requests(reqs: list[tuple[bytes, Row]], junk: bytes, sizes: list[int]) -> None:
    data = b"".join(raw for raw, _ in reqs) + junk
    rows, _ = same_three_ways(MemcacheRequestParser, data, sizes, req_row)
    assert rows[:len(reqs)] == [r for _, r in reqs]


WORDS = [b"get", b"gets", b"set", b"cas", b"incr", b"touch", b"delete", b"version", b"quit",
         b"noreply", b"k", b"0", b"12", b"-", b"-1", b" ", b"  ", b"\r", b"\n", b"\r\n", b"x",
         b"G", b"\t", b"k" * 251]


@given(st.lists(st.sampled_from(WORDS), max_size=30), chunkings)
def test_protocol_word_soup_requests(words: list[bytes], sizes: list[int]) -> None:
    same_three_ways(MemcacheRequestParser, b"".join(words), sizes, req_row)


# -- replies ----------------------------------------------------------------------------------


def ident(x: bytes) -> bytes:
    return x


@given(st.lists(replies(), min_size=1, max_size=8), chunkings)
def test_valid_reply_streams(reps: list[bytes], sizes: list[int]) -> None:
    frames, failed = same_three_ways(MemcacheReplyParser, b"".join(reps), sizes, ident)
    assert not failed
    assert frames == reps


@given(st.lists(replies(), max_size=3), st.binary(max_size=200), chunkings)
def test_garbage_replies(reps: list[bytes], junk: bytes, sizes: list[int]) -> None:
    frames, _ = same_three_ways(MemcacheReplyParser, b"".join(reps) + junk, sizes, ident)
    assert frames[:len(reps)] == reps


REPLY_WORDS = [b"VALUE", b"END", b"STORED", b"NOT_FOUND", b"SERVER_ERROR", b"VERSION",
               b"ERROR", b"k", b"0", b"1", b"12", b" ", b"\r", b"\n", b"\r\n", b"x", b"a\r\n"]


@given(st.lists(st.sampled_from(REPLY_WORDS), max_size=30), chunkings)
def test_protocol_word_soup_replies(words: list[bytes], sizes: list[int]) -> None:
    same_three_ways(MemcacheReplyParser, b"".join(words), sizes, ident)


# -- an independent byte-at-a-time model of nutcracker's two state machines ------------------
#
# Written from the behaviour (reference doc, runs of the binary), one byte per step, to check
# *when* the framers give up, not only whether: after every byte fed, the framer's frames and
# error flag must equal the model's.

STORAGE = {b"set", b"add", b"replace", b"append", b"prepend", b"cas"}
ARITH = {b"incr", b"decr", b"touch"}
KEYED = STORAGE | ARITH | {b"get", b"gets", b"delete"}
DIGIT = frozenset(b"0123456789")
LOWER = frozenset(b"abcdefghijklmnopqrstuvwxyz")


class ReqModel:
    """Returns (frame ends, error byte index or None) for a client stream."""

    def __init__(self) -> None:
        self.state = "start"
        self.tok = b""
        self.verb = b""
        self.vlen = 0
        self.left = 0
        self.fields = 0

    def run(self, data: bytes) -> tuple[list[int], int | None]:
        ends: list[int] = []
        for i, ch in enumerate(data):
            while True:
                res = self.step(ch)
                if res != "again":
                    break
            if res == "error":
                return ends, i
            if res == "done":
                ends.append(i + 1)
                if self.verb == b"quit":
                    return ends, None
                self.__init__()  # type: ignore[misc]
        return ends, None

    def step(self, ch: int) -> str:  # one long state table, on purpose: it is the model
        s, c = self.state, bytes([ch])
        if s == "start":
            if c == b" ":
                return "ok"
            if ch not in LOWER:
                return "error"
            self.tok, self.state = c, "verb"
        elif s == "verb":
            if c in (b" ", b"\r"):
                self.verb = self.tok
                if self.verb in (b"version", b"quit"):
                    self.state = "crlf"
                    return "again"
                if self.verb not in KEYED or c == b"\r":
                    return "error"
                self.state = "sp_key"
            elif ch in LOWER:
                self.tok += c
            else:
                return "error"
        elif s in ("sp_key", "sp_keys"):
            if c == b" ":
                return "ok"
            if s == "sp_keys" and c == b"\r":
                self.state = "lf"
                return "ok"
            self.tok, self.state = b"", "key"
            return "again"
        elif s == "key":
            if c not in (b" ", b"\r"):
                self.tok += c
                return "ok"
            if not 0 < len(self.tok) <= 250:
                return "error"
            if self.verb in STORAGE or self.verb in (b"incr", b"decr"):
                if c == b"\r":
                    return "error"
                self.state = "sp_flags" if self.verb in STORAGE else "sp_num"
                self.fields = 0
                return "ok"
            self.state = {b"touch": "sp_num", b"delete": "runto"}.get(self.verb, "sp_keys")
            return "again"
        elif s == "sp_flags":  # flags, exptime, bytes, (cas): digits separated by spaces
            if c == b" ":
                return "ok"
            if ch not in DIGIT:
                return "error"
            self.tok, self.state = c, "field"
        elif s == "field":
            if ch in DIGIT:
                self.tok += c
                return "ok"
            self.fields += 1
            if self.fields == 3:
                self.vlen = int(self.tok) % 2**32
            last = 4 if self.verb == b"cas" else 3
            if self.fields < last and c == b" ":
                self.state = "sp_flags"
                return "ok"
            if self.fields == last and c in (b" ", b"\r"):
                self.state = "runto"
                return "again"
            return "error"
        elif s == "sp_num":
            if c == b" ":
                return "ok"
            if ch not in DIGIT and c != b"-":
                return "error"
            self.state = "num"
        elif s == "num":
            if ch in DIGIT:
                return "ok"
            if c not in (b" ", b"\r"):
                return "error"
            self.state = "runto"
            return "again"
        elif s in ("runto", "after_nr"):
            if c == b" ":
                return "ok"
            if c == b"\r":
                self.state = "data_lf" if self.verb in STORAGE else "lf"
                return "ok"
            if s == "runto" and c == b"n":
                self.tok, self.state = c, "noreply"
                return "ok"
            return "error"
        elif s == "noreply":
            if c not in (b" ", b"\r"):
                self.tok += c
                return "ok"
            if self.tok != b"noreply":
                return "error"
            self.state = "after_nr"
            return "again"
        elif s == "data_lf":
            if c != b"\n":
                return "error"
            self.left, self.state = self.vlen, "data"
        elif s == "data":
            if self.left:
                self.left -= 1
                return "ok"
            if c != b"\r":
                return "error"
            self.state = "lf"
        elif s == "crlf":
            if c == b" ":
                return "ok"
            if c != b"\r":
                return "error"
            self.state = "lf"
        elif s == "lf":
            return "done" if c == b"\n" else "error"
        return "ok"


class RepModel:
    """Returns (frame ends, error byte index or None) for a server stream."""

    WORDS: ClassVar[dict[bytes, str]] = {b"END": "end", b"STORED": "crlf",
                                         b"NOT_STORED": "crlf", b"EXISTS": "crlf",
                                         b"NOT_FOUND": "crlf", b"DELETED": "crlf",
                                         b"TOUCHED": "crlf", b"ERROR": "crlf",
                                         b"CLIENT_ERROR": "text", b"SERVER_ERROR": "text",
                                         b"VERSION": "text",
                                         b"VALUE": "v_sp_key"}

    def run(self, data: bytes) -> tuple[list[int], int | None]:
        ends: list[int] = []
        self.state, self.tok = "start", b""
        for i, ch in enumerate(data):
            while True:
                res = self.step(ch)
                if res != "again":
                    break
            if res == "error":
                return ends, i
            if res == "done":
                ends.append(i + 1)
                self.state, self.tok = "start", b""
        return ends, None

    def step(self, ch: int) -> str:  # one long state table, on purpose: it is the model
        s, c = self.state, bytes([ch])
        if s == "start":
            self.state = "num" if ch in DIGIT else "word"
            return "again"
        if s == "num":
            if ch in DIGIT:
                return "ok"
            if c not in (b" ", b"\r"):
                return "error"
            self.state = "crlf"
            return "again"
        if s == "word":
            if c not in (b" ", b"\r"):
                self.tok += c
                return "ok"
            kind, self.tok = self.WORDS.get(self.tok), b""
            if kind is None or kind == "end" and c != b"\r":
                return "error"
            self.state = "crlf" if kind == "end" else kind
            return "again"
        if s == "crlf":
            if c == b" ":
                return "ok"
            if c != b"\r":
                return "error"
            self.state = "lf"
        elif s == "text":
            if c == b"\r":
                self.state = "lf"
        elif s == "v_sp_key":
            if c != b" ":
                self.state = "v_key"
        elif s == "v_key":
            if c == b" ":
                self.state, self.nfield = "v_sp_num", 0
        elif s == "v_sp_num":
            if c == b" ":
                return "ok"
            if ch not in DIGIT:
                return "error"
            self.tok, self.state = c, "v_num"
        elif s == "v_num":
            if ch in DIGIT:
                self.tok += c
                return "ok"
            if self.nfield == 0:
                if c != b" ":
                    return "error"
                self.state, self.nfield = "v_sp_num", 1
                return "ok"
            if c not in (b" ", b"\r"):
                return "error"
            self.left, self.tok = int(self.tok) % 2**32, b""
            self.state = "v_runto"
            return "again"
        elif s == "v_runto":
            if c == b"\r":
                self.state = "v_lf"
        elif s == "v_lf":
            if c != b"\n":
                return "error"
            self.state = "v_data"
        elif s == "v_data":
            if self.left:
                self.left -= 1
                return "ok"
            if c != b"\r":
                return "error"
            self.state = "v_data_lf"
        elif s == "v_data_lf":
            if c != b"\n":
                return "error"
            self.state = "word"  # after VALUE blocks a digit is just a letter of an unknown word
        elif s == "lf":
            return "done" if c == b"\n" else "error"
        return "ok"


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes], words: list[bytes]) -> bytes:
    """A valid stream with a few bytes replaced, words inserted, bytes dropped, maybe cut."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["replace", "insert", "drop"]))
        if op == "insert":
            data[i:i] = draw(st.sampled_from(words))
        elif i < len(data):
            data[i:i + 1] = draw(st.sampled_from([b" ", b"\r", b"\n", b"n", b"x", b"0", b"-"]))\
                if op == "replace" else b""
    return bytes(data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


def agrees_byte_by_byte(parser: Any, model: Any, data: bytes, frame: Callable[[Any], bytes]
                        ) -> None:
    ends, err_at = model.run(data)
    seen: list[bytes] = []
    for i in range(len(data)):
        seen += [frame(x) for x in parser.feed(data[i:i + 1])]
        want = [data[a:b] for a, b in zip([0, *ends], ends, strict=False) if b <= i + 1]
        assert seen == want, (i, data)
        assert (parser.error is not None) == (err_at is not None and err_at <= i), (i, data)


def raw_of(req: Any) -> bytes:
    return bytes(req.raw)


@given(st.one_of(
    st.lists(st.sampled_from(WORDS), max_size=30).map(b"".join),
    st.lists(requests(), max_size=4).map(lambda rs: b"".join(r for r, _ in rs)),
    st.tuples(st.lists(requests(), max_size=2), st.binary(max_size=60)).map(
        lambda t: b"".join(r for r, _ in t[0]) + t[1]),
    mutated(st.lists(requests(), min_size=1, max_size=3).map(
        lambda rs: b"".join(r for r, _ in rs)), WORDS),
))
def test_requests_agree_with_the_model(data: bytes) -> None:
    agrees_byte_by_byte(MemcacheRequestParser(), ReqModel(), data, raw_of)


@given(st.one_of(
    st.lists(st.sampled_from(REPLY_WORDS), max_size=30).map(b"".join),
    st.lists(replies(), max_size=4).map(b"".join),
    st.tuples(st.lists(replies(), max_size=2), st.binary(max_size=60)).map(
        lambda t: b"".join(t[0]) + t[1]),
    mutated(st.lists(replies(), min_size=1, max_size=3).map(b"".join), REPLY_WORDS),
))
def test_replies_agree_with_the_model(data: bytes) -> None:
    agrees_byte_by_byte(MemcacheReplyParser(), RepModel(), data, ident)
