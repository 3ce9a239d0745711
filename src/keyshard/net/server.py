"""Server connections: write requests, pair replies with them in order, fail them on errors.

Rule 1: `outq` holds every request written (or queued while connecting) that expects a reply,
        in send order; each complete reply is paired with the head of `outq`.
Rule 2: the connection dies as a whole, as in nutcracker: connect error, timeout, EOF, reset,
        a reply nobody asked for, an unparsable reply or a failure-class reply (-LOADING...)
        closes it, and every request in `outq` gets the proxy's error reply for the reason
        (`Connection timed out`, `unknown` for an EOF, `Invalid argument` for a bad reply...).
        Then the server's failure is counted (ejection). The proxy never retries.
Rule 3: a request times out `timeout` ms after it was queued; one timer per connection watches
        the head of `outq` (all requests of a pool share the timeout, so the head is always the
        earliest deadline). noreply requests are not in `outq` and never time out. The timer is
        armed by a send that finds none and is not cancelled when `outq` empties: when it fires
        it re-arms itself at the head's deadline, or lapses if `outq` is empty. Under load that
        is one timer per `timeout` instead of one per round trip, and the compiled path sends
        with a timeout as cheaply as without (a deadline per request, no call per request).
Rule 4: handshake requests (AUTH, SELECT) go first on every new connection; their replies are
        swallowed, like those of a client that went away (`Swallow`): nutcracker counts
        neither in `responses`, and neither proves the server healthy.
Rule 5: connecting starts as nutcracker's `server_connect` does, at once and in the caller:
        the host is resolved (on every new connection, so a DNS change is picked up) and
        connect() is called. If either fails right there (a name that does not resolve:
        `Host is down`; a unix socket nobody listens on) the connection never exists: `start`
        returns the reason and the caller fails the one request. Otherwise the connect
        completes in the loop and a failure then fails every request queued meanwhile.
Rule 6: a reply proves the server healthy (`server_ok`: its failure count is reset) only if a
        client was waiting for it, and the replies paired before a failure-class reply count
        before that failure, as nutcracker handles them one at a time.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from keyshard import speedups_enabled
from keyshard.net.client import ClientConn
from keyshard.net.fields import ServerFields
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


def strerror(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else UNKNOWN


class Swallow:
    """Owner of requests whose reply nobody reads (Rule 4): handshake requests (errors are
    logged) and, as `SWALLOW`, the requests of a client that went away."""

    batched = False  # told of each reply at once (req_done)

    def __init__(self, where: str | None = None) -> None:
        self.where = where

    def req_done(self, req: Request) -> None:
        conn: ServerConn = req.server
        reply = req.reply or b""
        conn.swallowed += 1
        # data_received counted this reply on the hot path; nutcracker does not count it
        conn.stats.responses -= 1
        conn.stats.response_bytes -= len(reply)
        if self.where is not None and reply[:1] == b"-" and log.isEnabledFor(logging.WARNING):
            log.warning("%s failed on %s: %r", req.cmd.decode(), self.where, reply.strip())

    def req_failed(self, req: Request, reply: bytes) -> None:
        pass


SWALLOW = Swallow()


def resolve(host: str, port: int) -> tuple[socket.AddressFamily, Any]:
    """(family, address) of the first getaddrinfo answer, as nutcracker's nc_resolve.

    Blocking, like nutcracker's; a numeric address costs no lookup.
    """
    family, _, _, _, addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    return family, addr


class ServerConn(ServerFields, asyncio.Protocol, Writer):
    __slots__ = ()  # the fields are ServerFields' (keyshard.net.fields)

    def __init__(self, runtime: PoolRuntime, slot: ServerSlot) -> None:
        self.runtime = runtime
        self.slot = slot
        self.flusher = runtime.flusher
        self.codec = runtime.codec
        self.parser = runtime.codec.reply_parser()
        self.transport: Any = None
        self.wbuf: list[bytes] = []
        self.dirty = False
        self.deferred = False  # its flush was put off by one loop iteration (writer Rule 4)
        self.hold = runtime.codec.name == "redis"  # whether Rule 4 puts its flushes off
        self.outq: deque[Request] = deque()
        self.connected = False
        self.closed = False
        self.sock: socket.socket | None = None  # while connect() is in progress
        self.timer: asyncio.TimerHandle | None = None
        self.timeout = runtime.timeout
        self.stats = slot.stats
        self.swallowed = 0  # swallowed replies in the current read (Rule 6)

    # -- connecting (Rule 5) --------------------------------------------------------------------

    def start(self) -> str | None:
        """Resolve and call connect(); the reason if that failed at once, else None."""
        conf = self.slot.conf
        try:
            if conf.is_unix:
                family, addr = socket.AF_UNIX, conf.host
            else:
                family, addr = resolve(conf.host, conf.port)
        except (OSError, UnicodeError):
            return EHOSTDOWN
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as err:
            return strerror(err)
        try:
            sock.setblocking(False)
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(addr)
        except OSError as err:
            sock.close()
            return strerror(err)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return os.strerror(code)
        self.sock = sock
        if code == 0:  # a unix socket connects at once
            self.adopt()
        else:
            self.runtime.loop.add_writer(sock.fileno(), self.connect_done)
        for raw in self.runtime.handshake:
            req = Request(raw, KIND_FORWARD, raw.split(b"\r\n")[2].lower(), b"")
            req.owner = Swallow(f"{self.runtime.conf.name} | {conf.pname}")
            self.send(req)
        return None

    def connect_done(self) -> None:
        sock = self.sock
        assert sock is not None
        self.runtime.loop.remove_writer(sock.fileno())
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(os.strerror(code), "server_err")
        else:
            self.adopt()

    def adopt(self) -> None:
        """Wrap the connected socket in a transport (it calls `connection_made`)."""
        sock = self.sock
        assert sock is not None
        self.sock = None
        self.runtime.spawn(self.wrap(sock))

    async def wrap(self, sock: socket.socket) -> None:
        try:
            await self.runtime.loop.connect_accepted_socket(lambda: self, sock)
        except OSError as err:
            sock.close()
            self.fail(strerror(err), "server_err")
        except asyncio.CancelledError:
            sock.close()
            self.fail(UNKNOWN, "server_err")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:
            transport.close()
            return
        self.transport = transport
        self.connected = True
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
        self.wbuf.append(req.raw)  # Writer.write, inlined: once per request
        if not self.dirty:
            self.dirty = True
            self.flusher.mark(self)

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
            paired = self._pair_replies(outq, replies)
            if paired < 0:
                return  # a bad reply: the connection failed
            if paired > self.swallowed:
                self.slot.ok()
        if self.parser.error is not None:
            self.fail(EINVAL, "server_err")

    def _pair_replies(self, outq: deque[Request], replies: list[bytes]) -> int:
        """Give each reply to the request at the head of `outq` and tell its owner; the batched
        owners (clients) drain once each at the end. Returns the number paired, or -1 after a
        reply nobody asked for or a failure reply (`bad_reply` failed the connection)."""
        stats = self.stats
        is_failure = self.codec.is_failure_reply
        before = len(outq)
        self.swallowed = 0
        nbytes = 0
        last = None
        clients: list[ClientConn] = []  # batched owners answered in this read, drained once each
        bad = False
        for reply in replies:
            # a reply nobody asked for, or a failure reply (-LOADING...): 45 is "-"
            if not outq or (reply[0] == 45 and is_failure(reply)):
                bad = True
                break
            req = outq.popleft()
            nbytes += len(reply)
            req.reply = reply
            owner = req.owner
            if owner.batched:
                if owner is not last:
                    last = owner
                    clients.append(owner)
            else:
                owner.req_done(req)
        paired = before - len(outq)
        stats.responses += paired
        stats.response_bytes += nbytes
        for client in clients:
            client.drain(not self.hold)  # writer Rule 6 where Rule 4 does not hold
        if bad:
            self.bad_reply(paired)
            return -1
        return paired

    def bad_reply(self, paired: int) -> None:
        if paired > self.swallowed:
            self.slot.ok()  # the replies before this one came first (Rule 6)
        self.fail(EINVAL, "server_err")

    def eof_received(self) -> bool:
        self.fail(UNKNOWN, "server_eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            reason = strerror(exc) if isinstance(exc, OSError) else UNKNOWN
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
        sock = self.sock
        if sock is not None:  # connect() still in progress
            self.sock = None
            self.runtime.loop.remove_writer(sock.fileno())
            sock.close()
        transport = self.transport
        self.transport = None
        self.wbuf = []
        if transport is not None:
            transport.abort()
        self.connected = False
        if self in self.runtime.paused_servers:  # a dead connection must not hold clients paused
            self.runtime.server_resumed(self)
        self.slot.conn_closed(self)
        if log.isEnabledFor(logging.INFO):
            log.info("close server %s: %s (%d pending)", self.slot.conf.pname, reason,
                     len(self.outq))
        outq = self.outq
        self.outq = deque()
        error = self.codec.error_reply(reason)
        stats = self.runtime.stats
        for req in outq:
            owner = req.owner
            if isinstance(owner, ClientConn) and not owner.closed:  # subclasses too
                stats.forward_error += 1  # an error reply made for a client (nutcracker's count)
            owner.req_failed(req, error)
        self.slot.failed(reason)


# The reference stays reachable under this name (differential tests).
py_data_received = ServerConn.data_received

if speedups_enabled():  # its compiled twin, if built (keyshard/_netfast.pyx)
    try:
        from keyshard._netfast import (
            server_data_received as _data_received,
        )
    except ImportError:
        pass
    else:
        ServerConn.data_received = _data_received  # type: ignore[method-assign]
