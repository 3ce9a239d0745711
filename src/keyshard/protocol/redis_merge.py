"""The bytes keyshard writes on its own: split/merge of multi-key Redis requests, local
replies (PONG, NOAUTH, AUTH, errors) and the server handshake.

This module owns the fragment bytes sent to each server for MGET, DEL, TOUCH, UNLINK and MSET
and the merged reply sent back, as nutcracker 0.5.0 builds them (`redis_fragment_argx`,
`redis_pre_coalesce`, `redis_post_coalesce`); the parser marks such a request KIND_SPLIT only
with 2+ keys. It also owns every other reply the proxy makes up (`PONG`, `NOAUTH`,
`auth_reply`, `error_reply`) and what it sends first to a new server (`server_handshake`).

Rule 1: one fragment per server, in the order the servers first appear among the keys; in a
        fragment the keys keep their original order and duplicates are kept. The header is
        rebuilt in lower case: `*<n+1>\\r\\n$4\\r\\nmget\\r\\n` then `$<len>\\r\\n<arg>\\r\\n`
        for each key (and value, for MSET).
Rule 2: MGET merges positionally: `*<number of keys>` then, for each original key, the exact
        bytes of its bulk (nil included) from its fragment's reply.
Rule 3: DEL/TOUCH/UNLINK answer `:<sum>`. Each integer is read as nutcracker reads it (digits
        only, a '-' is skipped, modulo 2**32) and the sum is printed as a signed 32-bit int
        (nutcracker's uint32 through "%d": 4294967295 prints as -1).
Rule 4: MSET answers `+OK` once every fragment answered a status or an integer.
Rule 5: any other fragment reply raises `MergeError` (the net layer answers
        `-ERR Invalid argument`, like nutcracker for an error reply). Where nutcracker does
        worse we raise too: it emits a corrupt stream for DEL with a status or array reply and
        for MGET with a non-bulk element or the wrong element count, and it crashes
        (SIGSEGV) on an MGET fragment answered `*-1`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from keyshard import speedups_enabled

from .base import MergeError, Request

_MASK32: Final = 0xFFFFFFFF

PONG: Final = b"+PONG\r\n"
NOAUTH: Final = b"-NOAUTH Authentication required\r\n"
_AUTH_OK: Final = b"+OK\r\n"
_AUTH_BAD: Final = b"-ERR invalid password\r\n"
_AUTH_UNSET: Final = b"-ERR Client sent AUTH, but no password is set\r\n"
_FAILURES: Final = (b"-OOM ", b"-OOM\r", b"-BUSY ", b"-BUSY\r", b"-LOADING ", b"-LOADING\r")
_HEADS: Final = {
    b"mget": b"$4\r\nmget\r\n",
    b"del": b"$3\r\ndel\r\n",
    b"touch": b"$5\r\ntouch\r\n",
    b"unlink": b"$6\r\nunlink\r\n",
    b"mset": b"$4\r\nmset\r\n",
}


def close_on_split_error(req: Request) -> bool:
    """Whether nutcracker closes the client connection when this split request fails.

    True for MGET only, and only for a failure at the connection level of a fragment: its
    server refused the connection, timed out, closed or reset it, or answered -OOM, -BUSY or
    -LOADING (a failure reply: the proxy closes that server connection). The client then gets
    the error reply (`-ERR Connection refused`, `-ERR unknown`, `-ERR Invalid argument`...),
    the replies to the requests it had already sent, and the close. A fragment that got an
    ordinary error reply (`-ERR ...`, `-WRONGTYPE ...`; `merge` raises MergeError) gets
    `-ERR Invalid argument` and the connection stays open. DEL, TOUCH, UNLINK and MSET never
    close the connection. [observed with nutcracker 0.5.0]
    """
    return req.cmd == b"mget"


def close_on_merge_error(req: Request, ctx: Any, replies: Sequence[bytes | None]) -> bool:
    """Whether nutcracker closes the client after this split request merged badly (MergeError).

    Only MGET, and only when nutcracker's merge runs out of bytes: it builds the merged reply
    before it looks for errors, taking for each key, in order, one bulk from its fragment's
    reply (the `*<n>` line skipped). It reads any bytes as a bulk: it skips the first byte,
    takes `-1` as a nil (5 bytes) or the digits there as a length (that many bytes, plus the
    header and two CRLFs: 5 bytes with no digits), or all that is left when that is no more.
    A read on a used-up reply fails and the client is closed after `-ERR Invalid argument`.
    So an MGET of 3 keys on a server answering `-ERR boom` keeps the connection; 4 keys close
    it [observed with nutcracker 0.5.0].
    """
    if req.cmd != b"mget":
        return False
    pos = [0 if r is None or r[:1] != b"*" else r.find(b"\r\n") + 2 for r in replies]
    for frag in ctx:
        reply = replies[frag]
        if reply is None:
            return True
        p, n = pos[frag], len(reply)
        if p >= n:
            return True
        if reply[p + 1:p + 3] == b"-1":
            length = 5
        else:
            q = p + 1
            while q < n and 48 <= reply[q] <= 57:
                q += 1
            length = (_u32(reply[p + 1:q]) if q > p + 1 else 0) + 4 + (q - p)
        pos[frag] = n if n - p <= length else p + length
    return False


def split(req: Request, route: Callable[[bytes], int]) -> tuple[list[tuple[int, bytes]], Any]:
    """Build the fragments of `req`: [(server index, fragment bytes)], and the merge context."""
    args = req.args
    assert args is not None and req.cmd in _HEADS, req
    step = 2 if req.cmd == b"mset" else 1
    groups: dict[int, list[bytes]] = {}
    frag_of: dict[int, int] = {}
    order: list[int] = []  # fragment number of each original key
    for i in range(0, len(args), step):
        key = args[i]
        server = route(key)
        group = groups.get(server)
        if group is None:
            group = groups[server] = []
            frag_of[server] = len(frag_of)
        group.append(b"$%d\r\n%s\r\n" % (len(key), key))
        if step == 2:
            value = args[i + 1]
            group.append(b"$%d\r\n%s\r\n" % (len(value), value))
        order.append(frag_of[server])
    head = _HEADS[req.cmd]
    frags = [(server, b"*%d\r\n%s%s" % (len(group) + 1, head, b"".join(group)))
             for server, group in groups.items()]
    return frags, order


def merge(req: Request, ctx: Any, replies: Sequence[bytes]) -> bytes:
    """The reply to the client, from the fragment replies (in the order of the fragments)."""
    cmd = req.cmd
    if cmd == b"mget":
        return _merge_mget(ctx, replies)
    if cmd == b"mset":
        for reply in replies:
            if reply[:1] not in (b"+", b":"):
                raise MergeError(f"mset fragment answered {reply[:40]!r}")
        return b"+OK\r\n"
    return _merge_sum(replies)


def _merge_sum(replies: Sequence[bytes]) -> bytes:
    total = 0
    for reply in replies:
        if reply[:1] != b":":
            raise MergeError(f"fragment answered {reply[:40]!r}, not an integer")
        total += _u32(reply[1:-2].replace(b"-", b""))
    total &= _MASK32
    return b":%d\r\n" % (total - (1 << 32) if total >= 1 << 31 else total)


def _u32(digits: bytes) -> int:
    """A decimal string modulo 2**32, of any length (int() refuses more than 4300 digits)."""
    value = 0
    for i in range(0, len(digits), 1000):
        chunk = digits[i:i + 1000]
        value = (value * 10 ** len(chunk) + int(chunk)) & _MASK32
    return value


def _merge_mget(order: list[int], replies: Sequence[bytes]) -> bytes:
    counts = [0] * len(replies)
    for frag in order:
        counts[frag] += 1
    bulks = [_bulks(reply, count) for reply, count in zip(replies, counts)]
    taken = [0] * len(replies)
    out = [b"*%d\r\n" % len(order)]
    for frag in order:
        out.append(bulks[frag][taken[frag]])
        taken[frag] += 1
    return b"".join(out)


def _bulks(reply: bytes, count: int) -> list[bytes]:
    """The elements of an MGET fragment reply `*<count>` of bulks, each its exact bytes."""
    i = reply.find(b"\r\n")
    digits = reply[1:i]
    if reply[:1] != b"*" or not digits.isdigit() or _u32(digits) != count:
        raise MergeError(f"mget fragment answered {reply[:40]!r} for {count} keys")
    out: list[bytes] = []
    p = i + 2
    for _ in range(count):
        if reply[p:p + 1] != b"$":
            raise MergeError(f"mget fragment element {reply[p:p + 40]!r}")
        j = reply.find(b"\r\n", p)
        end = j + 2 if reply[p + 1] == 45 else j + 4 + _u32(reply[p + 1:j])
        out.append(reply[p:end])
        p = end
    return out


def error_reply(reason: str) -> bytes:
    """nutcracker's error reply: `-ERR <strerror>`, e.g. `-ERR Connection refused`."""
    return b"-ERR %s\r\n" % reason.encode()


def is_failure_reply(raw: bytes) -> bool:
    """A top-level -OOM, -BUSY or -LOADING error (the word ends at a space or CR; -BUSYKEY and
    lower case do not count, nor an error nested in an array): nutcracker closes the server
    connection, counts a server failure and answers `-ERR Invalid argument`."""
    return raw[:1] == b"-" and raw.startswith(_FAILURES)


def auth_reply(req: Request, password: bytes | None) -> tuple[bytes, bool]:
    """Answer a client AUTH locally: (reply, whether the connection may now send commands).

    No `redis_auth` on the pool (None or empty): `-ERR Client sent AUTH, but no password is
    set` and the connection stays usable. Otherwise the argument must equal the password byte
    for byte: `+OK` and authenticated, or `-ERR invalid password` and unauthenticated again.
    """
    if not password:
        return _AUTH_UNSET, True
    assert req.args is not None and len(req.args) == 1, req
    if req.args[0] == password:
        return _AUTH_OK, True
    return _AUTH_BAD, False


def server_handshake(password: bytes | None, db: int) -> list[bytes]:
    """The requests keyshard writes first on each new server connection, in wire order.

    `AUTH <password>` (only with a password) comes before `SELECT <db>` (only for db > 0), so
    that SELECT works against a redis with `requirepass`. nutcracker 0.5.0 sends them the other
    way round (SELECT when the connection is established, AUTH ahead of the first request): its
    SELECT then fails with NOAUTH and the keys land in db 0 [observed]. keyshard fixes that
    (README, differences). Both replies are swallowed by the net layer.
    """
    out: list[bytes] = []
    if password:
        out.append(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password))
    if db > 0:
        digits = b"%d" % db
        out.append(b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%s\r\n" % (len(digits), digits))
    return out


# The reference split and merge stay reachable here (differential tests, benchmarks).
py_split = split
py_merge = merge

if speedups_enabled():  # their compiled twins, if built (keyshard/__init__.py)
    try:
        from keyshard._speedups import (  # type: ignore[no-redef]  # twins: same signatures
            merge,
            split,
        )
    except ImportError:
        pass
