"""Coalesced writes: one `transport.write` per connection per loop iteration.

Rule 1: a connection with data to send appends it to `wbuf` and marks itself dirty once; the
        `Flusher` flushes every dirty connection from a single `call_soon` callback.
Rule 2: a connection that is not connected yet (a server still connecting) keeps its buffer
        until `connection_made` flushes it.
Rule 3: a client whose queue still waits for replies (a pipeline spread over servers, half
        answered) is flushed one loop iteration later, once: the next poll does not block,
        so the rest of its replies, if already there, leave in the same write. This saves
        about one write in five at pipeline depth 16 (a write to a socket is the proxy's
        dearest operation); a client with nothing more to wait for is written at once.
Rule 4: a server connection of a Redis pool is always flushed one loop iteration later,
        once: the requests other clients send in the meantime (the next poll's reads) leave
        in the same write. nutcracker paces its writes the same way (it asks epoll for
        writability and writes on the next wakeup). Fewer, larger writes cost the proxy and
        the servers less: in an A/B with the client pinned to its own core (`python -m bench
        --pin`), MGET of 10 keys went from 65.8k to 71.9k requests/s and GET at depth 1 did
        not move beyond noise (-1%); a lone client's latency did not change measurably (one
        more non-blocking poll). A memcache pool's server connections are not put off: the
        flusher's first round writes them (`ServerFields.hold` is False). memcslap's 50
        blocking threads leave a fifth of the machine idle, so there the round trip sets the
        rate, not CPU; with the hold, the same build did memcache get at 0.90x and 0.93x and
        set at 0.96x and 0.97x the rate it did without it (two interleaved runs of six
        repetitions, one in each order). Not batching at all is far worse: writing a
        memcache server right after each client read, the build as it is did 1.27-1.34x
        the requests/s of that prototype (memcached's CPU per set 2.9 against 7.0 us).
Rule 5: a flush of several buffers that add up to `GATHER_BYTES` or more (4 KB values, large
        replies) goes out as `transport.writelines`, one gathered write (writev) from the
        buffers as they are, instead of being joined: a join copies every byte once more in
        user space before the kernel copies it again. Smaller flushes are joined, which is
        cheaper than gathering a handful of short pieces: a `writev` costs the kernel more
        per buffer than a join costs per short one (bench/gather.c times both).
Rule 6: where Rule 4 does not hold (memcache), a server's read writes the replies of each
        client that waits for nothing more right away (`ClientConn.drain(eager=True)`), not
        from the flusher's next round: the round trip is what sets the rate there (Rule 4).
        Against the same build without it, two interleaved runs of six repetitions, one in
        each order: memcache get 1.03x and 1.11x, set 1.02x and 1.01x the requests/s, at
        0.92-1.00x the CPU per request. A client still waiting (a multi-get half answered)
        and every Redis client go through the flusher as before (Rules 1 and 3).
Rule 7: a flush empties `wbuf` in place and keeps it, rather than replacing it with a new
        list (with Rule 6 a memcache client is flushed once per reply: a list made and freed
        per request); only a gathered flush (Rule 5) hands its list over and takes a new one.
        The data is taken out before `transport.write`, so anything written from inside it
        (a protocol callback) lands in the emptied list and is flushed in turn. Measured
        together with two other allocations cut in the same step (the memcache one-line
        replies made once in `keyshard._speedups`, the drain's deletion without a slice
        object): `bench.micro`, best of four alternating runs, memcache get 785 -> 725 ns,
        set 754 -> 687, GET 772 -> 737.
Rule 8: the compiled writer (`keyshard._netfast`) writes a flush of one buffer, or of a
        joined few, to the socket of a uvloop transport itself (one `write` call from C),
        as long as the transport holds nothing of this connection's: uvloop's own write
        path (its write context, a Python-level list clear, the checks) was a fifth of
        keyshard's user time under memcslap set. What the socket does not take goes to the
        transport, which buffers it and waits for the socket as before. A failed write
        closes the transport with the error (uvloop's `_force_close`, what its own failed
        write calls): the socket hands a pending error out once (a reset reads as
        ECONNRESET, then as EPIPE), so the transport trying again would report another one
        than nutcracker does (tests/compat: test_reset). Without `_force_close`, no direct
        writes. Once the transport has been given data (the rest of a partial write, a
        gathered flush, EAGAIN), the connection is written directly again only when
        `get_write_buffer_size()` is 0, so nothing overtakes what the transport holds. The
        reference gives everything to the transport: the bytes on the wire and their order
        are the same.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from keyshard import speedups_enabled
from keyshard.net.fields import ClientFields, ServerFields

GATHER_BYTES = 16384  # Rule 5: from this many bytes in one flush, gather instead of joining


class Buffered(Protocol):
    """What `Flusher` and `Writer` use of a connection: `ConnFields`' writer fields and
    `Writer.flush`. `Writer` is a mixin without fields, so its methods take `self` as this."""

    transport: Any
    flusher: Flusher
    wbuf: list[bytes]
    dirty: bool
    deferred: bool

    def flush(self) -> None: ...


class Flusher:
    """Flushes dirty connections once per loop iteration."""

    __slots__ = ("loop", "dirty", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[Buffered] = []
        self.scheduled = False

    def mark(self, conn: Buffered) -> None:
        self.dirty.append(conn)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            if not conn.deferred and conn.transport is not None and (
                    conn.queue if isinstance(conn, ClientFields)
                    else isinstance(conn, ServerFields) and conn.hold):
                conn.deferred = True  # Rules 3 and 4: once, then written whatever is there
                self.mark(conn)
                continue
            conn.deferred = False
            conn.flush()


class Writer:
    """Mixin: a buffered, coalescing writer over an asyncio transport (its fields are in
    `keyshard.net.fields.ConnFields`, its classes' `self` is a `Buffered`)."""

    __slots__ = ()

    def write(self: Buffered, data: bytes) -> None:
        self.wbuf.append(data)
        if not self.dirty:
            self.dirty = True
            self.flusher.mark(self)

    def flush(self: Buffered) -> None:
        self.dirty = False
        wbuf = self.wbuf
        if not wbuf:
            return
        transport = self.transport
        if transport is None:
            return  # not connected yet: connection_made flushes (Rule 2)
        if transport.is_closing():
            wbuf.clear()
            return
        if len(wbuf) == 1:  # Rule 7: the list is emptied and kept
            data = wbuf[0]
            wbuf.clear()
        elif sum(map(len, wbuf)) >= GATHER_BYTES:
            self.wbuf: list[bytes] = []  # typed for mypy: it reads it as Writer's attribute
            transport.writelines(wbuf)  # Rule 5: writelines keeps the buffers, not the list
            return
        else:
            data = b"".join(wbuf)
            wbuf.clear()
        transport.write(data)


# The references stay reachable under these names (tests).
PyFlusher = Flusher
py_writer_flush = Writer.flush

if speedups_enabled():  # their compiled twins, if built (keyshard/_netfast.pyx)
    try:
        from keyshard._netfast import (  # type: ignore[no-redef]  # the twin: same methods
            Flusher,
        )
        from keyshard._netfast import (
            writer_flush as _writer_flush,
        )
    except ImportError:
        pass
    else:
        Writer.flush = _writer_flush  # type: ignore[method-assign]
