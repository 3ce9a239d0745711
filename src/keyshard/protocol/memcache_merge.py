"""memcache retrieval replies: the VALUE block grammar, and split/merge of multi-key gets.

Rule 1: a VALUE block is `VALUE <key> <flags> <bytes>[ <anything>]\\r\\n<data>\\r\\n`, read
        the way nutcracker 0.5.0 reads it: the key runs to the first space (it may hold CR or
        LF), one or more spaces separate the fields, flags and bytes are digits, bytes is taken
        modulo 2**32, the rest of the line (cas unique, anything) runs to the first CR.
Rule 2: `get`/`gets` with two or more keys is split into one fragment per server, in order of
        first appearance, built as nutcracker builds it: `get k1 k2 \\r\\n` (each key followed
        by one space, then CRLF); a server's keys keep their order, duplicates are kept.
Rule 3: merge is nutcracker's, not "original key order": for each key of the request, in
        order, the next unused VALUE block of its fragment's reply is copied. Nutcracker does
        not match keys; so when a key is missing, later blocks of that fragment move up into
        its place (observed with the 0.5.0 binary). Extra blocks are dropped. One `END\\r\\n`
        closes the merged reply.
Rule 4: a fragment reply that is not VALUE blocks followed by `END\\r\\n` (nutcracker: reply
        type other than VALUE/END) raises `MergeError`; the net layer answers
        `SERVER_ERROR Invalid argument` and closes the client.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from keyshard.protocol.base import MergeError, Request

U32 = 0xFFFFFFFF
BAD = -1  # rejected
# any other negative result of `block_end` is a cut: -2 - (index needed, 0 if unknown)

# A VALUE header from the byte after "VALUE" (a space, or a CR that then starts the key) ...
_HEADER = re.compile(rb" *[^ ]+ +[0-9]+ +([0-9]+)(?=[ \r])[^\r]*\r\n")
# ... and from "VALUE" itself, in the usual spelling (the framer's hot path)
BLOCK = re.compile(rb"VALUE +[^ ]+ +[0-9]+ +([0-9]+)(?=[ \r])[^\r]*\r\n")
_SPACES = re.compile(rb" *")
_DIGITS = re.compile(rb"[0-9]*")
_END = b"END\r\n"


def vlen_of(digits: bytes) -> int:
    """A decimal length as nutcracker's uint32 sees it (10**32 is 0 modulo 2**32)."""
    if len(digits) < 10:
        return int(digits)
    return int(digits[-32:]) & U32


def span_end(rx: re.Pattern[bytes], data: bytes, p: int) -> int:
    """Where a run matched by `rx` (which also matches nothing) starting at `p` ends."""
    m = rx.match(data, p)
    return m.end() if m is not None else p


def block_end(data: bytes, p: int, n: int) -> int:
    """End of the VALUE block whose "VALUE" starts at `p`; BAD; or a cut (see BAD)."""
    m = _HEADER.match(data, p + 5)
    if m is None:
        return _header_verdict(data, p + 5, n)
    stop = m.end() + vlen_of(m.group(1))  # the CR after the data
    if stop < n and data[stop] != 13 or stop + 1 < n and data[stop + 1] != 10:
        return BAD
    if stop + 2 > n:
        return -2 - (stop + 2 if stop < n else stop + 1)
    return stop + 2


def _header_verdict(data: bytes, te: int, n: int) -> int:
    """Why `_HEADER` did not match at `te`: BAD, or cut (-2: wait for more bytes)."""
    q = span_end(_SPACES, data, te)
    if q >= n:
        return -2
    q = data.find(b" ", q)  # the key runs to the first space
    if q < 0:
        return -2
    for sep in (b" ", b" \r"):  # flags end with a space; bytes with a space or CR
        q = span_end(_SPACES, data, q)
        if q >= n:
            return -2
        e = span_end(_DIGITS, data, q)
        if e == q:
            return BAD
        if e >= n:
            return -2
        if data[e] not in sep:
            return BAD
        q = e
    cr = data.find(b"\r", q)
    if cr < 0 or cr + 1 >= n:
        return -2
    return BAD  # CR not followed by LF


def value_blocks(reply: bytes | None) -> list[bytes]:
    """The VALUE blocks of a complete fragment reply, which must end with END (Rule 4)."""
    if reply is None:
        raise MergeError("no reply")
    blocks: list[bytes] = []
    n = len(reply)
    pos = 0
    while reply.startswith(b"VALUE", pos):
        te = pos + 5
        end = block_end(reply, pos, n) if te < n and reply[te] in b" \r" else BAD
        if end < 0:
            raise MergeError("bad VALUE block")
        blocks.append(reply[pos:end])
        pos = end
    if n - pos != 5 or not reply.startswith(_END, pos):
        raise MergeError("fragment reply is not VALUE/END")
    return blocks


def split_retrieval(req: Request, route: Callable[[bytes], int]
                    ) -> tuple[list[tuple[int, bytes]], list[int]]:
    """Fragments of a multi-key get (Rule 2); ctx is each key's fragment position."""
    keys = req.args
    assert keys, "split of a request without keys"
    where: dict[int, int] = {}
    groups: list[list[bytes]] = []
    slots: list[int] = []
    for key in keys:
        idx = route(key)
        frag = where.get(idx)
        if frag is None:
            frag = where[idx] = len(groups)
            groups.append([])
        groups[frag].append(key)
        slots.append(frag)
    head = req.cmd + b" "
    frags = [(idx, head + b" ".join(groups[frag]) + b" \r\n") for idx, frag in where.items()]
    return frags, slots


def merge_retrieval(req: Request, ctx: list[int], replies: list[bytes | None]) -> bytes:
    """The client's reply to a split get (Rule 3); raises MergeError (Rule 4)."""
    blocks = [value_blocks(reply) for reply in replies]
    used = [0] * len(blocks)
    out: list[bytes] = []
    for frag in ctx:
        i = used[frag]
        mine = blocks[frag]
        if i < len(mine):
            out.append(mine[i])
            used[frag] = i + 1
    out.append(_END)
    return b"".join(out)
