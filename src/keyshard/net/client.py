"""Client connections: parse requests, keep replies in request order, close like nutcracker.

Rule 1: every request that expects a reply is appended to `queue` when it is parsed; replies
        are written from the head of `queue` only, so they leave in request order.
Rule 2: after QUIT or a protocol error nothing more is parsed; the connection closes once the
        earlier requests are answered. (nutcracker closes at once on bad input and drops the
        replies still pending, those of the same read included; `--nutcracker-quirks` does
        that too.) After the reply
        marked `close_mark` (a failed MGET, see runtime Rule 5) it closes as soon as that
        reply is written, with whatever replies are ready by the end of the loop iteration.
Rule 3: a client that half-closes (EOF) still gets its pending replies, then is closed.
        A client that goes away drops the replies still in flight (`closed` is set; servers
        still pair and discard them).
Rule 4: flow control: reading pauses while the client has more than `MAX_PENDING` requests
        awaiting replies, or while its socket does not drain (`pause_writing`).
Rule 5: `client_eof` and `client_err` are counted when the connection ends, as nutcracker
        counts them: an EOF from the client (or QUIT) first, else an error (a failed MGET, a
        reset); bad input counts client_err at once (nutcracker closes right there).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from keyshard import speedups_enabled
from keyshard.net.fields import ClientFields
from keyshard.net.writer import Writer
from keyshard.protocol.base import (
    KIND_AUTH,
    KIND_FORWARD,
    KIND_PING,
    KIND_QUIT,
    KIND_SPLIT,
    Request,
)

if TYPE_CHECKING:
    from keyshard.net.runtime import PoolRuntime

log = logging.getLogger("keyshard.client")

MAX_PENDING = 4096  # requests awaiting replies before we stop reading from the client
RESUME_PENDING = MAX_PENDING // 2


class ClientConn(ClientFields, asyncio.Protocol, Writer):
    __slots__ = ()  # the fields are ClientFields' (keyshard.net.fields)
    batched = True  # a server sets the replies of one read, then calls drain() once (server.py)
    max_pending = MAX_PENDING

    def __init__(self, runtime: PoolRuntime) -> None:
        self.runtime = runtime
        self.flusher = runtime.flusher
        self.codec = runtime.codec
        self.parser = runtime.codec.request_parser(runtime.max_key_len)
        self.transport: Any = None
        self.wbuf: list[bytes] = []
        self.dirty = False
        # a list, not a deque: 56 bytes instead of 760 for an idle connection; drain removes
        # the answered head in one slice deletion
        self.queue: list[Request] = []
        self.closing = False  # QUIT or protocol error seen: answer what came before, then close
        self.eof = False  # the client half-closed (FIN)
        self.quit = False  # QUIT seen: nutcracker counts the close as an EOF too
        self.failed = False  # closing for an error (failed MGET): counted client_err at the end
        self.counted = False  # client_err already counted (bad input)
        self.closed = False
        self.read_paused = False
        self.write_paused = False
        self.authenticated = runtime.conf.redis_auth is None
        self.deferred = False  # its flush was put off by one loop iteration (writer Rule 3)
        self.close_mark: Request | None = None  # close once this reply is written (runtime Rule 5)

    # -- asyncio callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # TCP_NODELAY and SO_KEEPALIVE are set where the client is accepted (listener.py)
        self.transport = transport
        self.runtime.client_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        parser = self.parser
        reqs = parser.feed(data)
        if parser.error is not None:
            self.bad_input(reqs)
            return
        if reqs:
            self.runtime.dispatch(self, reqs)
        if len(self.queue) > self.max_pending and not self.read_paused:
            self.pause_reading()

    def bad_input(self, reqs: list[Request]) -> None:
        """The parser stopped at garbage: answer what came before it, then close (Rule 2)."""
        if reqs:
            if self.runtime.quirks:
                # nutcracker forwards the requests read with the bad input, answers none
                written = len(self.wbuf)
                self.runtime.dispatch(self, reqs)
                del self.wbuf[written:]
            else:
                self.runtime.dispatch(self, reqs)
        if self.closing:
            return
        if log.isEnabledFor(logging.INFO):
            log.info("client protocol error: %s", self.parser.error)
        # nutcracker closes right at the bad input, before it could read an EOF
        self.runtime.stats.client_err += 1
        self.counted = True
        if self.runtime.quirks:
            self.abandon()
        else:
            self.close_after_replies()

    def eof_received(self) -> bool:
        self.eof = True
        self.flush()  # replies answered in this iteration are still in wbuf: send them first
        if not self.queue:
            return False  # nothing pending: let the transport close
        self.closing = True
        return True  # keep the write side open for the pending replies (Rule 3)

    def connection_lost(self, exc: Exception | None) -> None:
        # counted when the connection ends, as nutcracker: an EOF (or QUIT) first, then errors
        if self.counted:
            pass
        elif self.eof or self.quit:
            self.runtime.stats.client_eof += 1
        elif self.failed or exc is not None:
            self.runtime.stats.client_err += 1
        self.closed = True
        self.closing = True
        self.transport = None
        self.runtime.client_closed(self)  # before the queue goes: its requests get swallowed
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.maybe_resume()

    # -- requests -------------------------------------------------------------------------------

    def local(self, req: Request) -> None:
        """Answer a request that never leaves the proxy (PING, AUTH, QUIT)."""
        kind = req.kind
        if kind == KIND_QUIT:
            self.quit = True
            self.close_after_replies()
            return
        if kind == KIND_AUTH:
            reply, self.authenticated = self.codec.auth_reply(req, self.runtime.conf.redis_auth)
        elif not self.authenticated:
            reply = self.codec.NOAUTH
        elif kind == KIND_PING:
            reply = self.codec.PONG
        else:
            raise AssertionError(f"not a local request: {req!r}")
        req.reply = reply
        self.queue.append(req)

    def abandon(self) -> None:
        """Close now: what is already answered goes out, the pending replies are dropped."""
        self.closing = True
        self.queue.clear()
        self.close()

    def close_after_replies(self) -> None:
        self.closing = True
        if not self.queue:
            self.close()

    def req_done(self, req: Request) -> None:
        """A reply is known for `req`: write every finished reply at the head of the queue."""
        queue = self.queue
        if not queue or queue[0] is not req:
            return  # an earlier request is still waiting; it will drain this one too
        self.drain()

    def drain(self, eager: bool = False) -> None:
        """Write every finished reply at the head of the queue (servers call this once per
        read for each client they answered: `batched`); with `eager`, a client that waits
        for nothing more is written now (writer Rule 6)."""
        queue = self.queue
        wbuf = self.wbuf
        latency = self.runtime.latency
        now = self.runtime.loop.time() if latency is not None else 0.0
        done = 0
        for head in queue:
            reply = head.reply
            if reply is None:
                break
            done += 1
            wbuf.append(reply)  # Writer.write, inlined: once per reply
            if latency is not None:
                latency.observe(head.cmd, now - head.start)
        if done:
            del queue[:done]
        if not self.dirty and wbuf:
            if eager and not queue:
                self.flush()  # writer Rule 6: from the server's read, no flusher round
            else:
                self.dirty = True
                self.flusher.mark(self)
        if self.close_mark is not None and self.close_mark not in queue:
            self.close_in_error()
        elif not queue and self.closing:
            self.close()
        elif self.read_paused:
            self.maybe_resume()

    def close_in_error(self) -> None:
        """The marked reply is written: close once this loop iteration's replies are flushed,
        as nutcracker closes a client in error at its next write event."""
        self.close_mark = None
        self.failed = True
        self.runtime.loop.call_soon(self.close)

    def req_failed(self, req: Request, reply: bytes) -> None:
        req.reply = reply
        self.req_done(req)

    # -- flow control and closing ---------------------------------------------------------------

    def pause_reading(self) -> None:
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):
                pass

    def maybe_resume(self) -> None:
        if (self.read_paused and not self.write_paused and len(self.queue) <= RESUME_PENDING
                and self.transport is not None and not self.closing):
            self.read_paused = False
            try:
                self.transport.resume_reading()
            except (RuntimeError, AttributeError):
                pass

    def close(self) -> None:
        transport = self.transport
        if transport is None:
            return
        self.flush()
        transport.close()


__all__ = ["ClientConn", "KIND_FORWARD", "KIND_SPLIT"]

# The references stay reachable under these names (tests).
py_drain = ClientConn.drain
py_req_done = ClientConn.req_done
py_data_received = ClientConn.data_received

if speedups_enabled():  # their compiled twins, if built (keyshard/_netfast.pyx)
    try:
        from keyshard._netfast import (
            client_data_received as _data_received,
        )
        from keyshard._netfast import (
            client_drain as _drain,
        )
        from keyshard._netfast import (
            client_req_done as _req_done,
        )
    except ImportError:
        pass
    else:
        ClientConn.drain = _drain  # type: ignore[method-assign]
        ClientConn.req_done = _req_done  # type: ignore[method-assign]
        ClientConn.data_received = _data_received  # type: ignore[method-assign]
