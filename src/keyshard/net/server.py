"""Server connections: write requests, pair replies with them in order, fail them on errors.

Rule 1: `outq` holds every request written (or queued while connecting) that expects a reply,
        in send order; each complete reply is paired with the head of `outq`.
Rule 2: the connection dies as a whole, as in nutcracker: connect error, timeout, EOF, reset,
        a reply nobody asked for, an unparsable reply or a failure-class reply (-LOADING...)
        closes it, and every request in `outq` gets the proxy's error reply for the reason.
Rule 3: a request times out `timeout` ms after it was queued; one timer per connection watches
        the head of `outq` (all requests of a pool share the timeout, so the head is always the
        earliest deadline). noreply requests are not in `outq` and never time out.
Rule 4: handshake requests (AUTH, SELECT) go first on every new connection; their replies are
        swallowed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from keyshard.net.writer import Writer
from keyshard.protocol.base import KIND_FORWARD, Request

if TYPE_CHECKING:
    from keyshard.net.runtime import PoolRuntime, ServerSlot

log = logging.getLogger("keyshard.server")

EINVAL = os.strerror(errno.EINVAL)  # "Invalid argument"
ETIMEDOUT = os.strerror(errno.ETIMEDOUT)  # "Connection timed out"
EHOSTDOWN = os.strerror(errno.EHOSTDOWN)  # "Host is down"
ECONNREFUSED = os.strerror(errno.ECONNREFUSED)  # "Connection refused"
UNKNOWN = "unknown"  # nutcracker's text for errno 0 (server EOF)


class Swallow:
    """Owner of handshake requests: their replies are dropped (errors only logged)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def req_done(self, req: Request) -> None:
        reply = req.reply or b""
        if reply[:1] == b"-" and log.isEnabledFor(logging.WARNING):
            log.warning("%s failed on %s: %r", req.cmd.decode(), self.where, reply.strip())

    def req_failed(self, req: Request, reply: bytes) -> None:
        pass


class ServerConn(asyncio.Protocol, Writer):
    def __init__(self, runtime: PoolRuntime, slot: ServerSlot) -> None:
        self.runtime = runtime
        self.slot = slot
        self.flusher = runtime.flusher
        self.codec = runtime.codec
        self.parser = runtime.codec.reply_parser()
        self.transport: Any = None
        self.wbuf: list[bytes] = []
        self.dirty = False
        self.outq: deque[Request] = deque()
        self.connected = False
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.timeout = runtime.timeout
        self.stats = slot.stats
        for raw in runtime.handshake:
            req = Request(raw, KIND_FORWARD, raw.split(b"\r\n")[2].lower(), b"")
            req.owner = Swallow(f"{runtime.conf.name} | {slot.conf.pname}")
            self.send(req)

    # -- connecting -----------------------------------------------------------------------------

    async def connect(self) -> None:
        loop = self.runtime.loop
        conf = self.slot.conf
        try:
            if conf.is_unix:
                await loop.create_unix_connection(lambda: self, conf.host)
            else:
                await loop.create_connection(lambda: self, conf.host, conf.port)
        except socket.gaierror:
            self.fail(EHOSTDOWN, "server_err")
        except OSError as err:
            self.fail(os.strerror(err.errno) if err.errno else UNKNOWN, "server_err")
        except asyncio.CancelledError:
            self.fail(UNKNOWN, "server_err")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:
            transport.close()
            return
        self.transport = transport
        self.connected = True
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.flush()

    # -- requests -------------------------------------------------------------------------------

    def send(self, req: Request) -> None:
        req.server = self
        if not req.noreply:
            self.outq.append(req)
            if self.timeout > 0.0:
                req.deadline = self.runtime.loop.time() + self.timeout
                if self.timer is None:
                    self.timer = self.runtime.loop.call_at(req.deadline, self.check_timeout)
        self.write(req.raw)

    def check_timeout(self) -> None:
        self.timer = None
        if self.closed or not self.outq:
            return
        head = self.outq[0]
        now = self.runtime.loop.time()
        if head.deadline <= now:
            self.fail(ETIMEDOUT, "server_timedout")
        else:
            self.timer = self.runtime.loop.call_at(head.deadline, self.check_timeout)

    # -- replies --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        replies = self.parser.feed(data)
        if replies:
            outq = self.outq
            stats = self.stats
            is_failure = self.codec.is_failure_reply
            for reply in replies:
                if not outq:
                    self.fail(EINVAL, "server_err")  # a reply nobody asked for
                    return
                if is_failure(reply):
                    self.fail(EINVAL, "server_err")
                    return
                req = outq.popleft()
                stats.responses += 1
                stats.response_bytes += len(reply)
                req.reply = reply
                req.owner.req_done(req)
            self.slot.ok()
            if self.timer is not None and not outq:
                self.timer.cancel()
                self.timer = None
        if self.parser.error is not None:
            self.fail(EINVAL, "server_err")

    def eof_received(self) -> bool:
        self.fail(UNKNOWN, "server_eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else UNKNOWN
            self.fail(reason, "server_err" if exc else "server_eof")

    def pause_writing(self) -> None:
        self.runtime.server_paused(self)

    def resume_writing(self) -> None:
        self.runtime.server_resumed(self)

    # -- failing --------------------------------------------------------------------------------

    def fail(self, reason: str, counter: str) -> None:
        """Close the connection; every request waiting on it gets the error reply (Rule 2)."""
        if self.closed:
            return
        self.closed = True
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        self.transport = None
        self.wbuf = []
        if transport is not None:
            transport.abort()
        self.slot.conn_closed(self)
        if log.isEnabledFor(logging.INFO):
            log.info("close server %s: %s (%d pending)", self.slot.conf.pname, reason, len(self.outq))
        outq = self.outq
        self.outq = deque()
        error = self.codec.error_reply(reason)
        runtime = self.runtime
        for req in outq:
            if not isinstance(req.owner, Swallow):
                runtime.stats.forward_error += 1
            req.owner.req_failed(req, error)
        self.slot.failed(reason)
