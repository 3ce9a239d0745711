"""Redis codec: request framer, reply framer, local replies and handshakes (sans-IO).

This module owns the bytes of the Redis protocol as nutcracker 0.5.0 speaks it. The command
table is in `redis_commands`, split/merge in `redis_merge`; `RedisCodec` puts them together
behind the contract of `protocol.base`.

Requests (`RedisRequestParser`)
Rule 1: only RESP arrays of bulk strings are requests: `*<narg>\\r\\n` then narg times
        `$<len>\\r\\n<bytes>\\r\\n`. Inline commands, `*0`, an empty command name, a non-digit
        in a length, a missing CRLF, an unknown command or a wrong number of arguments are
        errors: `feed` returns the complete requests before the bad one and sets `error`;
        every later `feed` returns []. Nothing ever raises out of `feed`.
Rule 2: numbers are parsed as nutcracker does: digits only, any number of leading zeros,
        and wrapped modulo 2**32 (nutcracker's counters are uint32: `*4294967298` is 2).
        A `$` header of a key element (see redis_commands, Rule 2) may have no digits at all
        (length 0); everywhere else at least one digit is required. A header longer than
        MAX_HEADER_DIGITS characters is an error (nutcracker would buffer it; no client
        writes 33-digit numbers).
Rule 3: a key element of `max_key_len` bytes or more is an error (nutcracker: the key must fit
        in one mbuf, 16384 - 48 = 16336 by default), checked at its `$` header, before the
        key bytes arrive. EVAL's numkeys must be digits and not 0 (after wrapping).
Rule 4: deliberate differences in *timing* only (the outcome, a close without a reply, is
        the same): the arity is checked as soon as the command name is known (nutcracker
        checks after the first key), and a command name longer than the longest known name
        is rejected at its `$` header (nutcracker waits for the bytes, and hangs when they
        span more than an mbuf).
Rule 5: nothing is allocated from a declared count or length: `*2147483647` or
        `$2147483648` just wait for bytes. Memory grows only with bytes received, and there
        is no other bound on a request, as in nutcracker (it buffers a whole request too).
Rule 6: a request cut at any byte is resumed, not re-parsed: the parser keeps the bytes of the
        elements already parsed, and buffers incoming data without joining it until a
        pending bulk can be complete, so a huge request costs linear time.

Replies: `RedisReplyParser`, in `redis_resp` (with the framing both parsers share).

Local replies and handshakes: see `PONG`, `NOAUTH`, `auth_reply`, `server_handshake`,
`error_reply`, `is_failure_reply`.
"""

from __future__ import annotations

from typing import Final

from keyshard import speedups_enabled

from .base import ProtocolError, Request
from .redis_commands import (
    ARGEVAL,
    FAST_HEADS,
    KEYS_ALL,
    LOOKUP,
    MAX_NAME_LEN,
    PLACEHOLDER,
    CommandSpec,
)
from .redis_merge import (
    NOAUTH,
    PONG,
    auth_reply,
    close_on_merge_error,
    close_on_split_error,
    error_reply,
    is_failure_reply,
    merge,
    server_handshake,
    split,
)
from .redis_resp import (  # noqa: F401 -- MAX_HEADER_DIGITS: re-exported
    ELEMENT_HEADS,
    MASK32,
    MAX_HEADER_DIGITS,
    RedisReplyParser,
    RespFramer,
    read_number,
)

__all__ = [
    "CODEC", "DEFAULT_MAX_KEY_LEN", "NOAUTH", "PONG", "RedisCodec", "RedisReplyParser",
    "RedisRequestParser", "auth_reply", "close_on_merge_error", "close_on_split_error",
    "error_reply", "is_failure_reply", "merge", "server_handshake", "split",
]

DEFAULT_MAX_KEY_LEN: Final = 16384 - 48  # nutcracker: mbuf_data_size() with the default -m



def _numkeys(digits: bytes) -> None:
    """EVAL/EVALSHA numkeys: digits only, not 0 once wrapped to 32 bits."""
    if not digits.isdigit() or int(digits) & MASK32 == 0:
        raise ProtocolError("bad numkeys")


class RedisRequestParser(RespFramer[Request]):
    """Frames client bytes into `Request`s; see the module docstring, Rules 1-6."""

    __slots__ = ("_chunks", "_have", "_maxk", "_need", "_parts", "_st", "error")

    def __init__(self, max_key_len: int = DEFAULT_MAX_KEY_LEN) -> None:
        if max_key_len < 1:
            raise ValueError("max_key_len must be positive")
        self.error: str | None = None
        self._maxk = max_key_len
        self._chunks: list[bytes] = []  # unparsed bytes, joined once `_need` of them are here
        self._have = 0
        self._need = 0
        self._parts: list[bytes] = []  # bytes of the request in progress, already parsed
        # the request in progress, past its name: (spec, narg, next element, key, args)
        self._st: tuple[CommandSpec, int, int, bytes, list[bytes] | None] | None = None

    def _parse(self, buf: bytes, n: int, out: list[Request]) -> None:
        p = 0
        if self._st is not None:
            p = self._resume(buf, n, out)
        if 0 <= p < n:
            self._run(buf, p, n, out)

    def _forget(self) -> None:
        self._st = None

    def _wait(self, buf: bytes, start: int, n: int, need: int) -> None:
        """The request at `start` is cut before its name ends: keep it whole, parse it later."""
        self._chunks = [buf[start:]]
        self._have = n - start
        self._need = need

    def _run(self, buf: bytes, p: int, n: int, out: list[Request]) -> int:
        """Parse requests from `p` to the end of `buf`; return -1 once one is cut.

        Hot path: the request head is looked up in a table by its exact bytes (`FAST_HEADS`;
        a lookup costs less than the byte-by-byte checks it replaces), then its elements by
        `_fast_elements`. Long headers, mixed-case names, cuts and errors go to `_head`, the
        general path.
        """
        while p < n:
            start = p
            end = p + 10 + buf[p + 5] - 48 if p + 5 < n else p  # one-digit name length
            hit = FAST_HEADS.get(buf[p:end])
            if hit is not None:
                p = end
            else:
                head = self._head(buf, start, n)
                if head is None:
                    return -1
                spec, narg, p, plan = head
                hit = (spec, narg, *plan)
            p = self._fast_elements(buf, start, p, n, hit, out)
            if p < 0:
                return -1
        return p

    def _fast_elements(self, buf: bytes, start: int, p: int, n: int,
                       hit: tuple[CommandSpec, int, int, bool, bool], out: list[Request]) -> int:
        """The elements of the request at `start`, from `p` (its name's end), as planned in
        `hit` (spec, narg, kind, want_args, fast); append the request; return its end or -1.

        Hot path: the element headers are looked up in a table by their exact bytes
        (`ELEMENT_HEADS`). Elements of `max_key_len` bytes or more, long headers, cuts,
        errors and EVAL (not `fast`) go to `_elements`, the general path.
        """
        spec, narg, kind, want_args, fast = hit
        args: list[bytes] | None = [] if want_args else None
        maxk = self._maxk
        keyidx = spec.key_index
        key = PLACEHOLDER
        idx = 1
        while idx < narg:
            sized = ELEMENT_HEADS.get(buf[p:p + 5]) if fast else None
            if sized is not None and sized[1] < maxk:  # no key-length check needed
                q = p + sized[0]
                e = q + sized[1]
                if buf[e:e + 2] == b"\r\n" and (q < p + 6 or buf[p + 5] == 10):
                    if idx == keyidx:
                        key = buf[q:e]
                    if args is not None:
                        args.append(buf[q:e])
                    p = e + 2
                    idx += 1
                    continue
            return self._elements(buf, p, n, start, spec, narg, idx, key, args, None, out)
        out.append(Request(buf[start:p], kind, spec.name, key, args))
        return p

    def _head(self, buf: bytes, start: int, n: int
              ) -> tuple[CommandSpec, int, int, tuple[int, bool, bool]] | None:
        """General path for `*<narg>` and the command name: (spec, narg, end of the name,
        plan), or None when cut (the request is kept whole for the next feed)."""
        if buf[start] != 42:  # '*'
            raise ProtocolError("not an array (inline command?)")
        narg, p = read_number(buf, start, n, False)
        if p >= 0 and narg == 0:
            raise ProtocolError("bad narg")
        if p < 0 or p >= n:
            self._wait(buf, start, n, n - start + 1)
            return None
        if buf[p] != 36:  # '$'
            raise ProtocolError("not a bulk string")
        size, q = read_number(buf, p, n, False)
        if q >= 0 and (size == 0 or size > MAX_NAME_LEN):
            raise ProtocolError("unsupported command (name length)")
        e = q + size
        if q < 0 or e + 2 > n:
            if 0 <= q and e < n and buf[e] != 13:
                raise ProtocolError("missing CRLF")
            self._wait(buf, start, n, n - start + 1 if q < 0 else max(e + 1, n + 1) - start)
            return None
        if buf[e] != 13 or buf[e + 1] != 10:
            raise ProtocolError("missing CRLF")
        name = buf[q:e]
        spec = LOOKUP.get(name) or LOOKUP.get(name.lower())
        if spec is None or not spec.supported:
            raise ProtocolError(f"unsupported command {name!r}")
        plan = spec.plan(narg)
        if plan is None:
            raise ProtocolError(f"wrong number of arguments for {spec.name.decode()}")
        return spec, narg, e + 2, plan

    def _resume(self, buf: bytes, n: int, out: list[Request]) -> int:
        assert self._st is not None
        spec, narg, idx, key, args = self._st
        parts = self._parts
        self._st = None
        self._parts = []
        return self._elements(buf, 0, n, 0, spec, narg, idx, key, args, parts, out)

    def _elements(self, buf: bytes, p: int, n: int, start: int, spec: CommandSpec, narg: int,
                  idx: int, key: bytes, args: list[bytes] | None, parts: list[bytes] | None,
                  out: list[Request]) -> int:
        """Parse elements `idx`..narg-1 at `p`; append the request; return its end or -1."""
        keyidx = spec.key_index
        while idx < narg:
            h = p
            if p >= n:
                return self._save(buf, start, h, n, 1, spec, narg, idx, key, args, parts)
            if buf[p] != 36:
                raise ProtocolError("not a bulk string")
            iskey = idx == keyidx or self._key_element(spec, idx)
            size, q = read_number(buf, p, n, iskey)
            if q < 0:
                return self._save(buf, start, h, n, n - h + 1, spec, narg, idx, key, args, parts)
            if iskey and size >= self._maxk:
                raise ProtocolError(f"key too long for {spec.name.decode()}")
            e = q + size
            if e + 2 > n:
                if e < n and buf[e] != 13:
                    raise ProtocolError("missing CRLF")
                # wait up to the CR (it is checked as soon as it is there), then the LF
                need = max(e + 1, n + 1) - h
                return self._save(buf, start, h, n, need, spec, narg, idx, key, args, parts)
            if buf[e] != 13 or buf[e + 1] != 10:
                raise ProtocolError("missing CRLF")
            if idx == keyidx:
                key = buf[q:e]
            elif idx == 2 and spec.cls == ARGEVAL:
                _numkeys(buf[q:e])
            if args is not None:
                args.append(buf[q:e])
            p = e + 2
            idx += 1
        if parts is None:
            raw = buf[start:p]
        else:
            parts.append(buf[start:p])
            raw = b"".join(parts)
        out.append(Request(raw, spec.kind_for(narg), spec.name, key, args))
        return p

    @staticmethod
    def _key_element(spec: CommandSpec, idx: int) -> bool:
        mode = spec.key_elements
        return mode == KEYS_ALL or (mode > KEYS_ALL and idx & 1 == 1)

    def _save(self, buf: bytes, start: int, h: int, n: int, need: int, spec: CommandSpec,
              narg: int, idx: int, key: bytes, args: list[bytes] | None,
              parts: list[bytes] | None) -> int:
        """Cut inside element `idx` (starting at `h`): keep what is parsed, wait for more."""
        if parts is None:
            parts = []
        if h > start:
            parts.append(buf[start:h])
        self._parts = parts
        self._st = (spec, narg, idx, key, args)
        self._chunks = [buf[h:]] if h < n else []
        self._have = n - h
        self._need = need
        return -1


class RedisCodec:
    """The Redis side of the codec contract of `protocol.base`."""

    name = "redis"
    PONG: Final = PONG
    NOAUTH: Final = NOAUTH

    @staticmethod
    def request_parser(max_key_len: int = DEFAULT_MAX_KEY_LEN) -> RedisRequestParser:
        return RedisRequestParser(max_key_len)

    @staticmethod
    def reply_parser() -> RedisReplyParser:
        return RedisReplyParser()

    error_reply = staticmethod(error_reply)
    is_failure_reply = staticmethod(is_failure_reply)
    auth_reply = staticmethod(auth_reply)
    server_handshake = staticmethod(server_handshake)
    split = staticmethod(split)
    merge = staticmethod(merge)
    close_on_split_error = staticmethod(close_on_split_error)
    close_on_merge_error = staticmethod(close_on_merge_error)


CODEC: Final = RedisCodec()

# The reference framers stay reachable under these names (differential tests, benchmarks).
PyRedisRequestParser: Final = RedisRequestParser
PyRedisReplyParser: Final = RedisReplyParser

if speedups_enabled():  # their compiled twins, if built (keyshard/__init__.py)
    try:
        from keyshard._speedups import (  # type: ignore[no-redef]  # twins: same methods
            RedisReplyParser,
            RedisRequestParser,
        )
    except ImportError:
        pass
