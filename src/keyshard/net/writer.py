"""Coalesced writes: one `transport.write` per connection per loop iteration.

Rule 1: a connection with data to send appends it to `wbuf` and marks itself dirty once; the
        `Flusher` flushes every dirty connection from a single `call_soon` callback.
Rule 2: a connection that is not connected yet (a server still connecting) keeps its buffer
        until `connection_made` flushes it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from keyshard import speedups_enabled


class Flusher:
    """Flushes dirty connections once per loop iteration."""

    __slots__ = ("loop", "dirty", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[Writer] = []
        self.scheduled = False

    def mark(self, conn: Writer) -> None:
        self.dirty.append(conn)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            conn.flush()


class Writer:
    """Mixin: a buffered, coalescing writer over an asyncio transport (its fields are in
    `keyshard.net.fields.ConnFields`)."""

    __slots__ = ()

    transport: Any
    flusher: Flusher
    wbuf: list[bytes]
    dirty: bool

    def write(self, data: bytes) -> None:
        self.wbuf.append(data)
        if not self.dirty:
            self.dirty = True
            self.flusher.mark(self)

    def flush(self) -> None:
        self.dirty = False
        wbuf = self.wbuf
        if not wbuf:
            return
        transport = self.transport
        if transport is None:
            return  # not connected yet: connection_made flushes (Rule 2)
        self.wbuf = []
        if transport.is_closing():
            return
        transport.write(wbuf[0] if len(wbuf) == 1 else b"".join(wbuf))


# The references stay reachable under these names (tests).
PyFlusher = Flusher
py_writer_flush = Writer.flush

if speedups_enabled():  # their compiled twins, if built (keyshard/_netfast.pyx)
    try:
        from keyshard._netfast import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
            Flusher,
        )
        from keyshard._netfast import (
            writer_flush as _writer_flush,
        )
    except ImportError:
        pass
    else:
        Writer.flush = _writer_flush  # type: ignore[method-assign]
