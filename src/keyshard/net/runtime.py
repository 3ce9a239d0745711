"""One pool at run time: routes requests to server connections and splits multi-key requests.

Rule 1: the sans-IO `ServerPool` decides where a key goes and when a server is ejected; this
        module only applies its decisions (it passes the loop's clock in).
Rule 2: each server has at most `server_connections` connections, opened lazily (or one at
        start with `preconnect`) and used round-robin, as nutcracker does.
Rule 3: a request for a server that cannot be reached fails at once with nutcracker's error
        reply (`Connection refused` when no server is live, `Host is down` when the name does
        not resolve); the proxy never retries (the client does).
Rule 4: a split request (MGET, DEL, get k1 k2, ...) becomes one fragment per server, as
        nutcracker builds them: keys grouped on the continuum as it stands (`pool.group`),
        then each fragment routed by its first key (`pool.route`, which may rebuild) and sent
        in server order. The parent's reply is the codec's merge once every fragment is
        answered; if a fragment failed, the error of the first failed fragment in that order
        that has a reason (`unknown`, a server EOF, only when none has).
Rule 5: a failed MGET (redis, a fragment's connection failed) or a failed multi-get
        (memcache, any error) closes the client, as nutcracker does: the client gets the
        replies that are ready when the error reply is written, including it, and then the
        close. It gets nothing more if the failure is known while its own read is dispatched
        (no server live: every fragment failed at once), or if it already half-closed and
        the failed request is the first one not yet written: nothing answered ahead of it
        waits in `wbuf`. (Earlier requests that failed with it, on the same server's
        timeout or close, are still written, and it too, as nutcracker writes them.)
Rule 6: `forward_error` counts the error replies made for a client still there (one per split
        request); the requests of a client that went away are swallowed (`server.SWALLOW`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from keyshard import speedups_enabled
from keyshard.net.fields import RuntimeFields, SlotFields
from keyshard.net.server import ECONNREFUSED, EINVAL, SWALLOW, UNKNOWN, ServerConn
from keyshard.pool import ServerPool
from keyshard.protocol.base import KIND_FORWARD, KIND_SPLIT, MergeError, Request
from keyshard.stats import PoolStats, ServerStats, counters

if TYPE_CHECKING:
    from keyshard.config import PoolConf, ServerConf
    from keyshard.net.client import ClientConn
    from keyshard.net.writer import Flusher
    from keyshard.prometheus import LatencyRows

log = logging.getLogger("keyshard.pool")


def codec_for(conf: PoolConf) -> Any:
    if conf.redis:
        from keyshard.protocol.redis import CODEC as redis_codec

        return redis_codec
    from keyshard.protocol.memcache import CODEC as memcache_codec

    return memcache_codec


class ServerSlot(SlotFields):
    """One backend server of a pool: its connections, stats and failure bookkeeping."""

    def __init__(self, runtime: PoolRuntime, index: int, conf: ServerConf) -> None:
        self.runtime = runtime
        self.index = index
        self.conf = conf
        self.stats = ServerStats()
        self.conns: list[ServerConn] = []
        self.next = 0  # the last of `conns` used (round robin)
        self.limit = runtime.conf.server_connections
        self.total_conns = 0
        self.error = ""  # why the last `open` failed at once
        # the one connection to use without asking `conn()` (server_connections: 1; hot path)
        self.ready: ServerConn | None = None

    def conn(self) -> ServerConn | None:
        """A connection to send on, or None if a new one failed at once (`self.error`): a new
        one while fewer than `server_connections` are open, else the next in turn (the
        compiled twin picks among open ones itself: keyshard._netfast `_next_conn`)."""
        conns = self.conns
        if len(conns) < self.limit:
            return self.open()
        if len(conns) == 1:
            return conns[0]
        self.next = (self.next + 1) % len(conns)
        return conns[self.next]

    def open(self) -> ServerConn | None:
        conn = ServerConn(self.runtime, self)
        self.total_conns += 1
        error = conn.start()
        if error is not None:  # nutcracker's server_connect failed: server_close, no request
            conn.closed = True
            self.error = error
            self.stats.server_err += 1
            if log.isEnabledFor(logging.INFO):
                log.info("connect to server %s failed: %s", self.conf.pname, error)
            self.failed(error)
            return None
        self.conns.append(conn)
        if self.limit == 1:
            self.ready = conn
        return conn

    def conn_closed(self, conn: ServerConn) -> None:
        if self.ready is conn:
            self.ready = None
        try:
            self.conns.remove(conn)
        except ValueError:
            pass

    def view(self) -> dict[str, int]:
        values = counters(self.stats)
        connected = [c for c in self.conns if c.connected]
        connecting = [c for c in self.conns if not c.connected]
        values["server_connections"] = len(connected)
        values["in_queue"] = sum(len(c.outq) for c in connecting)
        values["in_queue_bytes"] = sum(len(r.raw) for c in connecting for r in c.outq)
        values["out_queue"] = sum(len(c.outq) for c in connected)
        values["out_queue_bytes"] = sum(len(r.raw) for c in connected for r in c.outq)
        return values

    def ok(self) -> None:
        pool = self.runtime.pool
        if pool.auto_eject:
            pool.success(self.index)

    def failed(self, reason: str) -> None:
        runtime = self.runtime
        if runtime.pool.failure(self.index, runtime.loop.time()):
            runtime.stats.server_ejects += 1
            self.stats.server_ejected_at = int(time.time() * 1_000_000)
            if log.isEnabledFor(logging.WARNING):
                log.warning("ejected server %s of pool %s: %s", self.conf.pname,
                            runtime.conf.name, reason)


class SplitOwner:
    """Collects the fragment replies of one split request (Rules 4, 5)."""

    batched = False  # told of each fragment reply at once (req_done)

    __slots__ = ("runtime", "parent", "replies", "pending", "errors", "order", "splitting")

    def __init__(self, runtime: PoolRuntime, parent: Request, nfrags: int) -> None:
        self.runtime = runtime
        self.parent = parent
        self.replies: list[bytes | None] = [None] * nfrags
        self.pending = nfrags
        self.errors: list[bytes | None] | None = None  # error reply per fragment, once one failed
        self.order: list[int] = []  # fragment positions in the order they were sent
        self.splitting = True  # still inside `PoolRuntime.split`, in the client's read

    def req_done(self, frag: Request) -> None:
        if self.parent.owner.closed:
            SWALLOW.req_done(frag)  # the client went away: nobody reads it (Rule 6)
            return
        self.replies[frag.ctx] = frag.reply
        self.pending -= 1
        if self.pending == 0:
            self.finish()

    def req_failed(self, frag: Request, reply: bytes) -> None:
        if self.errors is None:
            self.errors = [None] * len(self.replies)
        self.errors[frag.ctx] = reply
        self.pending -= 1
        if self.pending == 0:
            self.finish()

    def finish(self) -> None:
        parent = self.parent
        client = parent.owner
        if client.closed:
            return
        if self.errors is None:
            try:
                reply = self.runtime.codec.merge(parent, parent.ctx, self.replies)
            except MergeError:
                pass
            else:
                parent.reply = reply
                client.req_done(parent)
                return
        finish_failed(self)


def first_error(owner: Any, errors: list[bytes | None]) -> bytes:
    """The error of the first failed fragment (in send order) with a reason (Rule 4)."""
    unknown = owner.runtime.unknown_error
    for pos in owner.order:
        error = errors[pos]
        if error is not None and error != unknown:
            return error
    return unknown


def finish_failed(owner: Any) -> None:
    """A fragment failed, or the merge did: the parent's error reply, and the close that
    nutcracker makes after some of them (Rules 4, 5)."""
    runtime = owner.runtime
    parent = owner.parent
    client = parent.owner
    codec = runtime.codec
    if owner.errors is not None:
        reply = first_error(owner, owner.errors)
        close = codec.close_on_split_error(parent)
    else:
        reply = codec.error_reply(EINVAL)
        close = runtime.close_on_merge_error(parent, owner.replies)
    if close:
        queue = client.queue
        if owner.splitting or (client.eof and queue and queue[0] is parent
                               and not client.wbuf):
            # nutcracker closes within this read, or at the client's next event, which is
            # a read (its EOF), before any write: nothing more is sent (Rule 5)
            client.wbuf = []
            client.failed = True
            client.close()
            return
        if client.close_mark is None:
            client.close_mark = parent
    runtime.stats.forward_error += 1
    parent.reply = reply
    client.req_done(parent)


class PoolRuntime(RuntimeFields):
    def __init__(self, conf: PoolConf, loop: asyncio.AbstractEventLoop, flusher: Flusher,
                 mbuf_size: int = 16384, quirks: bool = False) -> None:
        self.conf = conf
        self.quirks = quirks  # --nutcracker-quirks: reproduce the defects keyshard fixes
        self.loop = loop
        self.flusher = flusher
        self.codec = codec_for(conf)
        self.max_key_len = mbuf_size - 48
        self.pool = ServerPool(conf)
        self.stats = PoolStats()
        self.timeout = conf.timeout / 1000.0 if conf.timeout > 0 else 0.0
        self.handshake: list[bytes] = list(self.codec.server_handshake(conf.redis_auth,
                                                                       conf.redis_db))
        if quirks:  # nutcracker sends SELECT before AUTH (and SELECT then fails)
            self.handshake.reverse()
        self.slots = [ServerSlot(self, i, s) for i, s in enumerate(conf.servers)]
        self.clients: set[ClientConn] = set()
        self.total_clients = 0
        self.parked = 0  # accepted clients without a transport yet (listener Rule 3)
        # parked clients given a transport whose connection_made has not run yet: they are
        # still counted in `parked`, so client_connections never dips meanwhile
        self.promoting: set[ClientConn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.paused_servers: set[ServerConn] = set()
        self.unknown_error = self.codec.error_reply(UNKNOWN)
        merge_hook = getattr(self.codec, "close_on_merge_error", None)
        if merge_hook is None:  # nutcracker closes after a multi-get that merged badly (memcache)
            def merge_hook(req: Request, ctx: Any, replies: list[bytes | None]) -> bool:
                return self.codec.name == "memcache"
        self.merge_hook: Callable[[Request, Any, list[bytes | None]], bool] = merge_hook
        # latency.observe(cmd, seconds) for every reply written (--metrics-addr); None costs
        # one check per read and per drain
        self.latency: LatencyRows | None = None

    def view(self) -> tuple[str, dict[str, int], list[tuple[str, dict[str, int]]]]:
        values = counters(self.stats)
        values["client_connections"] = len(self.clients) + self.parked
        return self.conf.name, values, [(s.conf.name, s.view()) for s in self.slots]

    def connection_counts(self) -> tuple[int, int]:
        """(ever, now): client and server connections, as nutcracker counts its conns."""
        servers_now = sum(len(s.conns) for s in self.slots)
        servers_ever = sum(s.total_conns for s in self.slots)
        return (self.total_clients + servers_ever,
                len(self.clients) + self.parked + servers_now)

    def preconnect(self) -> None:
        for slot in self.slots:
            if not slot.conns:
                slot.open()

    # -- clients --------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task, held in `tasks` until it ends (cancelled by `close`)."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def client_parked(self) -> None:
        """A client was accepted and waits for its first byte (listener Rule 3)."""
        self.parked += 1
        self.total_clients += 1

    def client_opened(self, client: ClientConn) -> None:
        if self.promoting and client in self.promoting:  # from parked to clients, at once
            self.promoting.discard(client)
            self.parked -= 1
        self.clients.add(client)
        if self.paused_servers:
            client.pause_reading()

    def client_closed(self, client: ClientConn) -> None:
        """The client went away: the replies still awaited for it will be swallowed (Rule 6)."""
        self.clients.discard(client)
        for req in client.queue:
            if req.reply is None and req.kind == KIND_FORWARD:
                req.owner = SWALLOW

    def close_on_merge_error(self, parent: Request, replies: list[bytes | None]) -> bool:
        return self.codec.close_on_split_error(parent) and self.merge_hook(
            parent, parent.ctx, replies)

    def dispatch(self, client: ClientConn, reqs: list[Request]) -> None:
        """Route every request of one read (the hot path): forwards by `_forward`, split
        requests by `split`, the others by the client (`local`)."""
        queue = client.queue
        now = self.loop.time()
        if self.latency is not None:
            for req in reqs:
                req.start = now
        # the rebuild check once per read, not per request; fetched when a forward first needs
        # it (a split must group its keys on the continuum as it stands: runtime Rule 4)
        route = None
        for req in reqs:
            kind = req.kind
            if kind == KIND_FORWARD and client.authenticated:
                req.owner = client
                if not req.noreply:
                    queue.append(req)
                if route is None:
                    route = self.pool.router(now)
                if self._forward(req, route(req.key)):
                    route = None  # opening may have failed and ejected a server
                continue
            req.owner = client
            if kind == KIND_SPLIT and client.authenticated:
                queue.append(req)
                self.split(req, now)
                route = None  # a fragment may have failed and ejected a server
            else:
                client.local(req)
                if client.closing:
                    break
        if queue and queue[0].reply is not None:
            client.req_done(queue[0])

    def _forward(self, req: Request, idx: int) -> bool:
        """Send a forwarded request to server `idx` (-1: none live, Rule 3) on the slot's ready
        connection, or one `conn()` gives; True if that was asked (the router must be fetched
        again: opening may have failed and ejected a server)."""
        if idx < 0:
            self.forward_failed(req, ECONNREFUSED)
            return False
        slot = self.slots[idx]
        reroute = False
        conn = slot.ready
        if conn is None:
            conn = slot.conn()
            reroute = True
            if conn is None:
                self.forward_failed(req, slot.error)
                return reroute
        stats = slot.stats
        stats.requests += 1
        stats.request_bytes += len(req.raw)
        conn.send(req)
        return reroute

    def forward_failed(self, req: Request, reason: str) -> None:
        """No connection for `req` (Rule 3); a noreply request is dropped silently."""
        if req.noreply:
            return
        self.stats.forward_error += 1
        req.reply = self.codec.error_reply(reason)

    def split(self, req: Request, now: float) -> None:
        pool = self.pool
        # keys grouped on the continuum as it stands, without a rebuild (Rule 4)
        frags, ctx = self.codec.split(req, pool.grouper())
        req.ctx = ctx
        # each fragment is routed by its first key; ctx numbers the fragments of the keys in
        # order of first appearance, which is the order of `frags`
        args = req.args
        assert args is not None
        step = 2 if req.cmd == b"mset" else 1
        firsts: list[bytes] = []
        for pos, frag_no in enumerate(ctx):
            if frag_no == len(firsts):
                firsts.append(args[pos * step])
        owner = SplitOwner(self, req, len(frags))
        if not self.quirks:  # nutcracker never counts fragments
            self.stats.fragments += len(frags)
        owner.order = order = sorted(range(len(frags)), key=lambda pos: frags[pos][0])
        route = pool.route
        slots = self.slots
        for pos in order:
            raw = frags[pos][1]
            frag = Request(raw, KIND_FORWARD, req.cmd, b"")
            frag.owner = owner
            frag.ctx = pos
            idx = route(firsts[pos], now)
            if idx < 0:
                owner.req_failed(frag, self.codec.error_reply(ECONNREFUSED))
                continue
            slot = slots[idx]
            conn = slot.ready or slot.conn()
            if conn is None:
                owner.req_failed(frag, self.codec.error_reply(slot.error))
                continue
            slot.stats.requests += 1
            slot.stats.request_bytes += len(raw)
            conn.send(frag)
        owner.splitting = False

    # -- flow control: a server that does not drain pauses every client of the pool ----------

    def server_paused(self, conn: ServerConn) -> None:
        self.paused_servers.add(conn)
        for client in self.clients:
            client.pause_reading()

    def server_resumed(self, conn: ServerConn) -> None:
        self.paused_servers.discard(conn)
        if not self.paused_servers:
            for client in self.clients:
                client.maybe_resume()

    # -- shutdown -------------------------------------------------------------------------------

    def close(self) -> None:
        for slot in self.slots:
            for conn in list(slot.conns):
                if conn.transport is not None:
                    conn.transport.close()
                elif conn.sock is not None:
                    conn.fail(UNKNOWN, "server_err")
        for task in self.tasks:
            task.cancel()


# The reference stays reachable under this name (tests).
py_dispatch = PoolRuntime.dispatch
py_split = PoolRuntime.split
PySplitOwner = SplitOwner

if speedups_enabled():  # its compiled twin, if built (keyshard/_netfast.pyx)
    try:
        from keyshard._netfast import (  # type: ignore[no-redef]  # the compiled twin of SplitOwner
            SplitOwner,  # its compiled twin (the reference stays as PySplitOwner)
        )
        from keyshard._netfast import (
            dispatch as _dispatch,
        )
        from keyshard._netfast import split as _split
    except ImportError:
        pass
    else:
        PoolRuntime.dispatch = _dispatch  # type: ignore[method-assign]
        PoolRuntime.split = _split  # type: ignore[method-assign]
