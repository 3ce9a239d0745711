"""RESP framing shared by the Redis request and reply parsers, and the reply framer (sans-IO).

`redis` owns the request framer and puts the codec together; this module owns what both
framers share (`read_number`, `RespFramer`) and the reply framer, `RedisReplyParser`.

Rule 1: RESP2 only: `+`/`-` lines (a CR must be followed by LF), `:` with digits and `-`
        anywhere (nutcracker accepts `:1-2`), `$<len>` bulks, `*<n>` arrays nested to any
        depth. `$-<digits>` and `*-<digits>` are nulls. Lengths wrap modulo 2**32 like
        requests. Anything else (RESP3 types included) is an error. Each reply is returned as
        its exact bytes.
Rule 2: a reply cut at any byte waits for the bytes it needs, which `RespFramer` gathers without
        joining on every read (linear time for a large reply arriving in small reads).
"""

from __future__ import annotations

from typing import Final, Generic, TypeVar

from .base import ProtocolError

MAX_HEADER_DIGITS: Final = 32
MASK32: Final = 0xFFFFFFFF
_NIL: Final = b"$-1\r\n"
T = TypeVar("T")

# Hot-path tables (the request parser's `_run` and the reply parser's `_frame`).
# The first 5 bytes of an element -> (header length, body length), for `$<1 to 3 digits>`.
# With 3 digits the header's CRLF is not among the 5 bytes and is checked apart (h == 6).
ELEMENT_HEADS: Final = {
    **{b"$%d\r\n%c" % (size, c): (4, size) for size in range(10) for c in range(256)},
    **{b"$%d\r\n" % size: (5, size) for size in range(10, 100)},
    **{b"$%d\r" % size: (6, size) for size in range(100, 1000)},
}


def read_number(buf: bytes, p: int, n: int, allow_empty: bool) -> tuple[int, int]:
    """Decode the `*`/`$` header at `p`: (value, position after CRLF), or (0, -1) if cut."""
    i = buf.find(b"\r", p + 1, p + 2 + MAX_HEADER_DIGITS)
    if i < 0:
        seen = buf[p + 1:p + 1 + MAX_HEADER_DIGITS]
        if seen and not seen.isdigit():
            raise ProtocolError("bad length")
        if n - p - 1 > MAX_HEADER_DIGITS:
            raise ProtocolError("length too long")
        return 0, -1
    digits = buf[p + 1:i]
    if digits:
        if not digits.isdigit():
            raise ProtocolError("bad length")
        value = int(digits) & MASK32
    elif allow_empty:
        value = 0
    else:
        raise ProtocolError("bad length")
    if i + 1 >= n:
        return 0, -1
    if buf[i + 1] != 10:
        raise ProtocolError("missing LF")
    return value, i + 2


class RespFramer(Generic[T]):
    """What both framers share: `feed`, and a frame cut across reads, whose chunks are kept
    until `_need` bytes are in, then joined once (not on every read), so a large value
    arriving in small reads costs linear time. A framer implements `_parse` (frame what it
    can of `buf` into `out`) and `_forget` (drop the frame in progress)."""

    error: str | None
    _chunks: list[bytes]
    _have: int
    _need: int
    _parts: list[bytes]

    def feed(self, data: bytes) -> list[T]:
        """Parse `data` (any cut); return what it completes. Nothing raises out of here."""
        if self.error is not None or not data:
            return []
        buf = self._gather(data)
        if buf is None:
            return []
        out: list[T] = []
        try:
            self._parse(buf, len(buf), out)
        except ProtocolError as exc:
            self._fail(str(exc))
        except Exception as exc:  # noqa: BLE001 -- a bug of ours must not kill the event loop
            self._fail(f"internal error: {exc!r}")
        return out

    def _parse(self, buf: bytes, n: int, out: list[T]) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        raise NotImplementedError

    def _fail(self, reason: str) -> None:
        self.error = reason
        self._chunks = []
        self._parts = []
        self._forget()

    def _gather(self, data: bytes) -> bytes | None:
        """The bytes to parse now, or None while the cut frame is still short."""
        if not self._chunks:
            return data
        self._chunks.append(data)
        self._have += len(data)
        if self._have < self._need:
            return None
        buf = b"".join(self._chunks)
        self._chunks = []
        return buf


_INTEGER_CHARS: Final = b"-0123456789"


def _integer_ok(digits: bytes) -> bool:
    """`:` replies: nutcracker accepts digits and '-' in any order, even none at all."""
    return not digits.translate(None, _INTEGER_CHARS)


def _item(buf: bytes, p: int, n: int) -> tuple[int, int]:
    """One reply token at `p`: (end, k) with k > 0 for an array header of k elements, k <= 0
    for a complete element; (-1, bytes needed from p) when cut."""
    c = buf[p]
    if c == 36 or c == 42:  # '$' / '*'
        if p + 1 < n and buf[p + 1] == 45:  # '-': null bulk / null array
            _, q = read_number(buf, p + 1, n, False)
            return (q, 0) if q >= 0 else (-1, n - p + 1)
        size, q = read_number(buf, p, n, False)
        if q < 0:
            return -1, n - p + 1
        if c == 42:
            return q, size
        e = q + size
        if e + 2 > n:
            if e < n and buf[e] != 13:
                raise ProtocolError("bulk without CRLF")
            return -1, max(e + 1, n + 1) - p
        if buf[e] != 13 or buf[e + 1] != 10:
            raise ProtocolError("bulk without CRLF")
        return e + 2, 0
    if c == 43 or c == 45 or c == 58:  # '+' / '-' / ':'
        i = buf.find(b"\r", p + 1)
        if c == 58 and not _integer_ok(buf[p + 1:i if i >= 0 else n]):
            raise ProtocolError("bad integer")
        if i < 0 or i + 1 >= n:
            return -1, n - p + 1
        if buf[i + 1] != 10:
            raise ProtocolError("CR without LF")
        return i + 2, 0
    raise ProtocolError(f"bad reply type {bytes([c])!r}")


class RedisReplyParser(RespFramer[bytes]):
    """Frames server bytes into replies, the exact bytes of each; see Rule 1."""

    __slots__ = ("_chunks", "_have", "_need", "_parts", "_stack", "error")

    def __init__(self) -> None:
        self.error: str | None = None
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        self._parts: list[bytes] = []
        self._stack: list[int] | None = None  # elements left per open array, mid-reply

    def _forget(self) -> None:
        self._stack = None

    def _parse(self, buf: bytes, n: int, out: list[bytes]) -> None:
        p = 0
        if self._stack is not None:
            stack, parts = self._stack, self._parts
            self._stack, self._parts = None, []
            p = self._frame(buf, 0, n, 0, stack, parts, out)
        append = out.append
        while 0 <= p < n:
            # Hot paths: a bulk with a 1- to 3-digit length, a nil, a line.
            c = buf[p]
            if c == 36:
                sized = ELEMENT_HEADS.get(buf[p:p + 5])
                if sized is not None:
                    h = sized[0]
                    e = p + h + sized[1] + 2
                    if buf[e - 2:e] == b"\r\n" and (h < 6 or buf[p + 5] == 10):
                        append(buf[p:e])
                        p = e
                        continue
                elif buf[p:p + 5] == _NIL:
                    append(_NIL)
                    p += 5
                    continue
            elif c == 43 or c == 45 or c == 58:
                i = buf.find(b"\r", p + 1)
                if 0 < i < n - 1 and buf[i + 1] == 10 and (
                        c != 58 or not buf[p + 1:i].translate(None, _INTEGER_CHARS)):
                    append(buf[p:i + 2])
                    p = i + 2
                    continue
            p = self._frame(buf, p, n, p, [], None, out)

    def _frame(self, buf: bytes, p: int, n: int, start: int, stack: list[int],
               parts: list[bytes] | None, out: list[bytes]) -> int:
        """Parse one whole reply (resuming inside `stack`); return its end, or -1 if cut."""
        while True:
            sized = ELEMENT_HEADS.get(buf[p:p + 5])  # hot path: short bulk elements
            end = -1
            if sized is not None:
                h, size = sized
                end = p + h + size + 2
                if buf[end - 2:end] != b"\r\n" or (h == 6 and buf[p + 5] != 10):
                    end = -1
            if end >= 0:
                k = 0
            else:
                end, k = _item(buf, p, n)
                if end < 0:
                    return self._save(buf, start, p, n, k, stack, parts)
            p = end
            if k > 0:
                stack.append(k)
            else:
                while stack:
                    stack[-1] -= 1
                    if stack[-1]:
                        break
                    stack.pop()
                if not stack:
                    if parts is None:
                        out.append(buf[start:p])
                    else:
                        parts.append(buf[start:p])
                        out.append(b"".join(parts))
                    return p
            if p >= n:
                return self._save(buf, start, p, n, 1, stack, parts)

    def _save(self, buf: bytes, start: int, p: int, n: int, need: int, stack: list[int],
              parts: list[bytes] | None) -> int:
        """Cut at `p`: keep the parsed part of the reply, wait for `need` more bytes."""
        if stack:
            if parts is None:
                parts = []
            if p > start:
                parts.append(buf[start:p])
            self._parts = parts
            self._stack = stack
            self._chunks = [buf[p:]] if p < n else []
        else:  # cut inside a top-level element: it is re-parsed whole
            self._chunks = [buf[start:]]
            p = start
        self._have = n - p
        self._need = need
        return -1
