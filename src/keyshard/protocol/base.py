"""What every codec hands the I/O layer: the request record and the codec contract.

keyshard has one data path (`keyshard.net`) and two codecs (`protocol.redis`,
`protocol.memcache`). The net layer never looks inside a request or a reply; it asks the
codec. This module owns the shared vocabulary.

Rule 1: codecs are sans-IO. They are fed bytes and return frames; they never import
        asyncio or socket and never read the clock.
Rule 2: a request is forwarded as the exact bytes the client sent (`Request.raw`); only
        split requests get new bytes, built around the original argument spans.
Rule 3: a reply is forwarded as the exact bytes the server sent; only split requests get a
        merged reply.
Rule 4: client garbage never raises out of a parser: the parser returns the complete
        requests before it and sets `error` (a short reason for the log). The net layer then
        answers the earlier requests and closes the connection, as nutcracker does.

The codec contract (duck-typed; `RedisCodec` and `MemcacheCodec` implement it):

    codec.request_parser(max_key_len) -> parser  with  parser.feed(data) -> list[Request],
                                                 parser.error: str | None
    codec.reply_parser()              -> parser  with  parser.feed(data) -> list[bytes],
                                                 parser.error: str | None
    codec.error_reply(reason: str) -> bytes       b"-ERR <reason>\\r\\n" / b"SERVER_ERROR <reason>\\r\\n"
    codec.split(req, route) -> (frags, ctx)       route(key) -> server index; frags is a list of
                                                  (server index, fragment bytes), one per server,
                                                  in order of first appearance
    codec.merge(req, ctx, replies) -> bytes       replies in the order of frags; raises MergeError
                                                  when a fragment reply is not of the expected type
    codec.is_failure_reply(raw) -> bool           a reply that counts as a server failure
                                                  (redis -OOM/-BUSY/-LOADING; never for memcache)
"""

from __future__ import annotations

from typing import Any

from keyshard import speedups_enabled

# Request kinds: what the net layer does with a request.
KIND_FORWARD = 0  # send `raw` to the server owning `key`
KIND_SPLIT = 1  # several keys: codec.split / codec.merge (MGET, DEL, MSET, get k1 k2, ...)
KIND_PING = 2  # answered locally with +PONG
KIND_QUIT = 3  # close after earlier replies, no reply
KIND_AUTH = 4  # redis AUTH, answered locally against redis_auth


class MergeError(Exception):
    """A fragment reply was not of the type the split command expects."""


class Request:
    """One parsed client request (the reference; `keyshard._speedups.Request`, a cdef class
    with the same fields, takes its name when the compiled extension is in use).

    The codec fills the first group of fields; the net layer owns the second group (they are
    here, not in a wrapper object, so that a request costs one allocation on the hot path).
    """

    __slots__ = (
        # set by the codec
        "raw",  # bytes: the request exactly as received
        "kind",  # int: one of KIND_*
        "cmd",  # bytes: lower-case command name / verb (b"get", b"mget", b"set", ...)
        "key",  # bytes: routing key (first key; first key after numkeys; b"placeholder")
        "args",  # list[bytes] | None: every argument after the command, for split/local kinds
        "noreply",  # bool: memcache noreply; never gets a reply slot
        # owned by the net layer
        "reply",  # bytes | None: the reply to send back, once known
        "owner",  # the client connection (or the parent request of a fragment)
        "ctx",  # split context, or fragment position
        "pending",  # number of fragment replies still awaited
        "deadline",  # float: loop time when the request times out
        "server",  # the server connection the request was sent to
        "start",  # float: loop time when parsed (set only when latency is observed)
    )

    def __init__(
        self,
        raw: bytes,
        kind: int,
        cmd: bytes,
        key: bytes,
        args: list[bytes] | None = None,
        noreply: bool = False,
    ) -> None:
        self.raw = raw
        self.kind = kind
        self.cmd = cmd
        self.key = key
        self.args = args
        self.noreply = noreply
        self.reply: bytes | None = None
        self.owner: Any = None
        self.ctx: Any = None
        self.pending = 0
        self.deadline = 0.0
        self.server: Any = None
        self.start = 0.0

    def __repr__(self) -> str:
        return f"Request(kind={self.kind}, cmd={self.cmd!r}, key={self.key!r}, raw={self.raw[:60]!r})"


class ProtocolError(Exception):
    """Raised inside parsers only; it never escapes `feed` (see Rule 4)."""


# The reference stays reachable under this name (tests); the compiled twin, if built, takes
# the place of `Request` for every module that imports it from here (keyshard._speedups).
PyRequest = Request

if speedups_enabled():
    try:
        from keyshard._speedups import (  # type: ignore[no-redef]  # the twin: same fields
            Request,
        )
    except ImportError:
        pass
