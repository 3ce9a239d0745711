"""The memcached ASCII codec: request framer, reply framer, and the codec object.

This module owns what nutcracker 0.5.0 accepts from a memcache client and from a memcached
server, and how both are handed to the net layer; `memcache_merge` owns VALUE blocks and the
split/merge of multi-key gets. The grammar below was checked byte by byte against the real
binary (tests/compat/test_memcache_reject.py keeps checking it).

Rule 1: tokens are separated by one or more spaces (never tabs); a line ends at the first CR,
        which must be followed by LF. Spaces before the verb and before the CR are allowed.
        A key is any run of bytes except space and CR (it may hold LF, TAB, NUL), 1..250 bytes.
Rule 2: verbs are lower case. Accepted lines (anything else closes the connection):
            get|gets <key>+                              1 key: forwarded; 2+: split
            set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]
            cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]
            incr|decr|touch <key> <value> [noreply]      value: [0-9-][0-9]*
            delete <key> [noreply]                       (`delete <key> 0` is rejected)
            version                                      forwarded by the key "placeholder"
            quit                                         local: close after earlier replies
        flags, exptime, bytes and cas unique are digits only. A storage line is followed by
        exactly <bytes> bytes of data and CRLF. <bytes> is taken modulo 2**32 (nutcracker keeps
        it in a uint32), and nothing is allocated before the data arrives.
Rule 3: a request is forwarded as the exact bytes received, leading spaces included
        (`Request.raw`). Multi-key gets are the only split requests.
Rule 4: errors are found as early as nutcracker finds them: a line is checked while it is
        still incomplete (a bad verb byte closes at once, a long key only at its end). After
        an error or a quit nothing more is parsed; `feed` never raises.
Rule 5: hot path: `get k`, `get k1 k2 ...` and `set k 0 0 5` in their usual spelling take
        one anchored regex match and one slice for `raw`; every other line takes the general
        path (split on spaces, checked field by field). A request cut by a read is kept as a
        tail and joined once; a long value (or a line over 64 KB) is kept as a list of chunks
        and joined once, when enough bytes have arrived.
Rule 6: replies (`MemcacheReplyParser`) are framed as nutcracker frames them; see its rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from keyshard import speedups_enabled
from keyshard.protocol.base import KIND_FORWARD, KIND_QUIT, KIND_SPLIT, Request
from keyshard.protocol.memcache_framer import (  # noqa: F401 - FramerFields: re-exported
    LONG_LINE,
    Framer,
    FramerFields,
    PyFramerFields,
)
from keyshard.protocol.memcache_merge import (
    BAD,
    BLOCK,
    block_end,
    merge_retrieval,
    span_end,
    split_retrieval,
    vlen_of,
)

MAX_KEY_LEN = 250
PLACEHOLDER_KEY = b"placeholder"
_LOWER = b"abcdefghijklmnopqrstuvwxyz"

# verb classes
GET, STORE, CAS, ARITH, DELETE, VERSION, QUIT = range(7)
VERBS: dict[bytes, int] = {
    b"get": GET, b"gets": GET,
    b"set": STORE, b"add": STORE, b"replace": STORE, b"append": STORE, b"prepend": STORE,
    b"cas": CAS,
    b"incr": ARITH, b"decr": ARITH, b"touch": ARITH,
    b"delete": DELETE,
    b"version": VERSION,
    b"quit": QUIT,
}

# argument fields, by position after the verb (GET repeats KEY)
KEY, DIGITS, NUM, NOREPLY = range(4)
FIELDS: dict[int, tuple[int, ...]] = {
    GET: (KEY,),
    STORE: (KEY, DIGITS, DIGITS, DIGITS, NOREPLY),
    CAS: (KEY, DIGITS, DIGITS, DIGITS, DIGITS, NOREPLY),
    ARITH: (KEY, NUM, NOREPLY),
    DELETE: (KEY, NOREPLY),
    VERSION: (),
    QUIT: (),
}
MIN_ARGS = {GET: 1, STORE: 4, CAS: 5, ARITH: 2, DELETE: 1, VERSION: 0, QUIT: 0}

# the usual spelling of the two hot requests (any other spelling takes the general path)
_GET1 = re.compile(rb"(gets?) ([^ \r]{1,250})\r\n")
_GETN = re.compile(rb"(gets?)((?: [^ \r]{1,250}){2,})\r\n")
_STORE1 = re.compile(
    rb"(set|add|replace|append|prepend) ([^ \r]{1,250}) [0-9]+ [0-9]+ ([0-9]+)( noreply)?\r\n")

def field_ok(field: int, tok: bytes, partial: bool) -> bool:
    """Is `tok` valid in this position (or, if `partial`, a valid start of it)?"""
    if field == KEY:
        return partial or len(tok) <= MAX_KEY_LEN
    if field == DIGITS:
        return tok.isdigit()
    if field == NUM:
        return tok[:1] in b"-0123456789" and (len(tok) == 1 or tok[1:].isdigit())
    return tok == b"noreply" or (partial and tok[0] == 110)  # 'n' starts the noreply state


def check_line(line: bytes, complete: bool) -> str | None:
    """Why this request line (the bytes before its CR) is rejected, or None.

    With `complete` False the line is still arriving: only what nutcracker's byte-by-byte
    state machine would already have rejected counts.
    """
    pieces = line.split(b" ")
    last = b"" if complete else pieces.pop()
    toks = [t for t in pieces if t]
    if not toks:
        if complete or last.translate(None, _LOWER):
            return "bad command"
        return None
    cls = VERBS.get(toks[0])
    if cls is None:
        return "unknown command"
    args = toks[1:]
    if last:
        args.append(last)
    fields = FIELDS[cls]
    for i, tok in enumerate(args):
        if cls == GET:
            field = KEY
        elif i < len(fields):
            field = fields[i]
        else:
            return "too many arguments"
        if not field_ok(field, tok, bool(last) and i == len(args) - 1):
            return "bad argument"
    if complete and len(args) < MIN_ARGS[cls]:
        return "missing argument"
    return None


def build(raw: bytes, cls: int, toks: list[bytes]) -> Request:
    """The request of a line that `check_line` accepted."""
    verb = toks[0]
    if cls == GET:
        if len(toks) == 2:
            return Request(raw, KIND_FORWARD, verb, toks[1])
        return Request(raw, KIND_SPLIT, verb, toks[1], toks[1:])
    if cls == VERSION:
        return Request(raw, KIND_FORWARD, verb, PLACEHOLDER_KEY)
    if cls == QUIT:
        return Request(raw, KIND_QUIT, verb, b"")
    noreply = len(toks) > len(FIELDS[cls])  # the optional last field is present
    return Request(raw, KIND_FORWARD, verb, toks[1], None, noreply)


class MemcacheRequestParser(Framer[Request]):
    """Client bytes in, `Request`s out (see the module rules)."""

    __slots__ = ()

    def _parse(self, data: bytes) -> list[Request]:
        # The hot loop: the fast paths are inlined on purpose (a call per request costs ~10%).
        out: list[Request] = []
        append = out.append
        get1, getn, store1 = _GET1.match, _GETN.match, _STORE1.match
        n = len(data)
        pos = 0
        while pos < n:
            m = get1(data, pos)
            if m is not None:  # `get <key>\r\n`
                end = m.end()
                append(Request(data[pos:end], KIND_FORWARD, m.group(1), m.group(2)))
                pos = end
                continue
            m = getn(data, pos)
            if m is not None:  # `get <key> <key>...\r\n`
                end = m.end()
                keys = m.group(2)[1:].split(b" ")
                append(Request(data[pos:end], KIND_SPLIT, m.group(1), keys[0], keys))
                pos = end
                continue
            m = store1(data, pos)
            if m is not None:  # `set <key> <flags> <exptime> <bytes>[ noreply]\r\n<data>\r\n`
                cmd, key, vlen, noreply = m.groups()
                end = m.end() + (int(vlen) if len(vlen) < 10 else vlen_of(vlen)) + 2
                if end > n or data[end - 2] != 13 or data[end - 1] != 10:  # cut, or bad
                    end = self._data_end(data, pos, m.end(), vlen)
                    if end < 0:
                        break
                append(Request(data[pos:end], KIND_FORWARD, cmd, key, None, noreply is not None))
                pos = end
                continue
            req = self._general(data, pos, n)
            if req is None:
                break
            append(req)
            if req.kind == KIND_QUIT:
                self._stop()  # nutcracker reads nothing after quit
                break
            pos += len(req.raw)
        return out

    def _general(self, data: bytes, pos: int, n: int) -> Request | None:
        """Any other line (odd spacing, other verbs, bad input); None if cut or rejected."""
        cr = data.find(b"\r", pos)
        if cr < 0:
            self._wait_line(data, pos)
            return None
        if cr + 2 > n or data[cr + 1] != 10:
            self._line_end(data, pos, cr)
            return None
        line = data[pos:cr]
        reason = check_line(line, True)
        if reason is not None:
            self._fail(reason)
            return None
        toks = [t for t in line.split(b" ") if t]
        cls = VERBS[toks[0]]
        end = cr + 2
        if cls == STORE or cls == CAS:
            end = self._data_end(data, pos, end, toks[4])
            if end < 0:
                return None
        return build(data[pos:end], cls, toks)

    def _data_end(self, data: bytes, pos: int, end: int, vlen: bytes) -> int:
        """End of the data block that starts at `end`; -1 if it is cut or rejected."""
        stop = end + vlen_of(vlen)  # the CR after the data
        n = len(data)
        if stop < n and data[stop] != 13 or stop + 1 < n and data[stop + 1] != 10:
            self._fail("bad data chunk")
            return -1
        if stop + 2 > n:
            # wake up once the CR (or, if it is here, the LF) can be checked
            self._stash(data, pos, (stop + 2 if stop < n else stop + 1) - pos)
            return -1
        return stop + 2

    def _line_end(self, data: bytes, pos: int, cr: int) -> None:
        """A line whose CR is the last byte read, or is not followed by LF."""
        reason = check_line(data[pos:cr], True)
        if reason is None and cr + 1 < len(data):
            reason = "CR without LF"
        if reason is None:
            self._stash(data, pos)
        else:
            self._fail(reason)

    def _wait_line(self, data: bytes, pos: int) -> None:
        if len(data) - pos <= LONG_LINE:
            reason = check_line(data[pos:], False)
            if reason is not None:
                self._fail(reason)
                return
        self._stash(data, pos)


# one-line replies whose line is exactly the token (then CRLF)
LINE_REPLIES = frozenset({
    b"END", b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED", b"TOUCHED",
    b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR", b"VERSION",
})
R_END, R_SPACES, R_TEXT, R_VALUE = range(4)
REPLY_TOKENS: dict[bytes, int] = {
    b"END": R_END,  # must be followed by CR at once
    b"STORED": R_SPACES, b"NOT_STORED": R_SPACES, b"EXISTS": R_SPACES,  # then spaces, CRLF
    b"NOT_FOUND": R_SPACES, b"DELETED": R_SPACES, b"TOUCHED": R_SPACES, b"ERROR": R_SPACES,
    b"CLIENT_ERROR": R_TEXT, b"SERVER_ERROR": R_TEXT, b"VERSION": R_TEXT,  # any text, CRLF
    b"VALUE": R_VALUE,
}
TEXT_PREFIXES = (b"SERVER_ERROR ", b"CLIENT_ERROR ", b"VERSION ")
_TOKEN = re.compile(rb"[^ \r]*")
_SPACES = re.compile(rb" *")
_DIGITS = re.compile(rb"[0-9]*")


class MemcacheReplyParser(Framer[bytes]):
    """Server bytes in, each complete reply's exact bytes out.

    Rule 1: a reply is one line (`STORED`, `END`, a number, `SERVER_ERROR text`, ...), or
            VALUE blocks up to and including the line that follows the last of them.
            Nutcracker ends such a reply at any known word (`END` normally, but also e.g.
            `SERVER_ERROR x` or `STORED`); `merge` only accepts `END` there.
    Rule 2: words are upper case and exact; a number reply is digits then optional spaces;
            STORED, NOT_STORED, EXISTS, NOT_FOUND, DELETED, TOUCHED, ERROR allow trailing
            spaces only; CLIENT_ERROR, SERVER_ERROR, VERSION run to the first CR; END must
            be followed by CRLF at once. Anything else is an error (the net layer closes
            the server connection).
    """

    __slots__ = ("_resume",)
    WAKE = (b"\r", b" ")

    def __init__(self) -> None:
        super().__init__()
        self._resume = 0  # offset of the first VALUE block of a cut reply not yet checked

    def _parse(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        find = data.find
        n = len(data)
        pos = 0
        while pos < n:
            end = -1
            if self._resume:
                resume, self._resume = self._resume, 0
                end = self._scan(data, pos, pos + resume, n)
            elif data[pos] == 86 and data.startswith(b"VALUE ", pos):  # 86: "V"
                end = self._values(data, pos, n)
            else:
                cr = find(b"\r", pos)
                if 0 <= cr < n - 1 and data[cr + 1] == 10:  # fast path: one-line replies
                    line = data[pos:cr]
                    if line in LINE_REPLIES or line.isdigit() or line.startswith(TEXT_PREFIXES):
                        end = cr + 2
                if end < 0:
                    end = self._scan(data, pos, pos, n)
            if end < 0:
                break
            out.append(data[pos:end])
            pos = end
        return out

    def _values(self, data: bytes, start: int, n: int) -> int:
        """Hot path: VALUE blocks in the usual spelling, then END; else `_scan` decides."""
        block = BLOCK.match
        startswith = data.startswith
        p = start
        while True:
            m = block(data, p)
            if m is None:
                break
            vlen = m.group(1)
            stop = m.end() + (int(vlen) if len(vlen) < 10 else vlen_of(vlen))
            if stop + 1 >= n or data[stop] != 13 or data[stop + 1] != 10:
                break
            p = stop + 2
            if startswith(b"END\r\n", p):
                return p + 5
            if not startswith(b"VALUE ", p):
                break
        return self._scan(data, start, p, n)

    def _scan(self, data: bytes, start: int, p: int, n: int) -> int:
        """End of the reply at `start`, read from the word at `p`; -1 when cut or rejected."""
        if p == start and 48 <= data[p] <= 57:
            e = span_end(_DIGITS, data, p)
            return self._line_tail(data, start, e, n, b" \r")
        while True:
            if data.startswith(b"END\r\n", p):  # the usual end of VALUE blocks
                return p + 5
            te = p + 5 if data.startswith(b"VALUE ", p) else span_end(_TOKEN, data, p)
            if te >= n:
                return self._cut(data, start, p, 0)
            kind = REPLY_TOKENS.get(data[p:te], -1)
            if kind == R_VALUE:
                end = block_end(data, p, n)
                if end < 0:
                    return self._cut(data, start, p, -2 - end) if end != BAD else self._bad()
                p = end
                continue
            if kind == R_END:
                return self._line_tail(data, start, te, n, b"\r")
            if kind == R_SPACES:
                return self._line_tail(data, start, te, n, b" \r")
            if kind == R_TEXT:
                cr = data.find(b"\r", te)
                return self._lf(data, start, cr if cr >= 0 else n, n)
            return self._bad()

    def _line_tail(self, data: bytes, start: int, e: int, n: int, allowed: bytes) -> int:
        """A word ended at `e` by a byte in `allowed`, then optional spaces, then CRLF."""
        if e < n and data[e] not in allowed:
            return self._bad()
        q = span_end(_SPACES, data, e)
        if q < n and data[q] != 13:
            return self._bad()
        return self._lf(data, start, q, n)

    def _lf(self, data: bytes, start: int, cr: int, n: int) -> int:
        if cr + 1 >= n:
            return self._cut(data, start, start, 0)
        if data[cr + 1] != 10:
            return self._bad()
        return cr + 2

    def _cut(self, data: bytes, start: int, p: int, need: int) -> int:
        self._resume = p - start
        self._stash(data, start, need - start if need else 0)
        return -1

    def _bad(self) -> int:
        self._fail("bad reply")
        return -1


class MemcacheCodec:
    """The codec contract of `keyshard.protocol.base` for memcached pools."""

    name = "memcache"

    def request_parser(self, max_key_len: int = MAX_KEY_LEN) -> MemcacheRequestParser:
        # memcache keys are limited to 250 bytes whatever the mbuf size (max_key_len unused)
        return MemcacheRequestParser()

    def reply_parser(self) -> MemcacheReplyParser:
        return MemcacheReplyParser()

    def error_reply(self, reason: str) -> bytes:
        return b"SERVER_ERROR " + reason.encode() + b"\r\n"

    def split(self, req: Request, route: Callable[[bytes], int]
              ) -> tuple[list[tuple[int, bytes]], Any]:
        return split_retrieval(req, route)

    def merge(self, req: Request, ctx: Any, replies: list[bytes | None]) -> bytes:
        return merge_retrieval(req, ctx, replies)

    def close_on_split_error(self, req: Request) -> bool:
        return True  # nutcracker closes the client after any failed multi-get

    def is_failure_reply(self, raw: bytes) -> bool:
        return False  # memcache replies never count as server failures

    def server_handshake(self, password: str | None, db: int) -> list[bytes]:
        return []


CODEC = MemcacheCodec()

__all__ = ["CODEC", "MemcacheCodec", "MemcacheReplyParser", "MemcacheRequestParser"]

# The reference framers stay reachable under these names (differential tests, benchmarks).
PyMemcacheRequestParser = MemcacheRequestParser
PyMemcacheReplyParser = MemcacheReplyParser

if speedups_enabled():  # subclasses with a compiled `_parse` (and `feed`), if built
    try:
        from keyshard._speedups import memcache_framers
    except ImportError:
        pass
    else:
        MemcacheRequestParser, MemcacheReplyParser = memcache_framers(  # type: ignore[misc]
            MemcacheRequestParser, MemcacheReplyParser, LINE_REPLIES, TEXT_PREFIXES)
