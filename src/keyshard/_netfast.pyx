# cython: language_level=3, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Compiled twins of the net layer's hot loops (optional; built with `keyshard._speedups`).

    twin                 reference (kept as the module-level `py_*` names there)
    dispatch             keyshard.net.runtime.PoolRuntime.dispatch
    server_data_received keyshard.net.server.ServerConn.data_received
    client_drain         keyshard.net.client.ClientConn.drain
    client_req_done      keyshard.net.client.ClientConn.req_done
    client_data_received keyshard.net.client.ClientConn.data_received
    Flusher              keyshard.net.writer.Flusher (Writer.flush inlined in its flush)
    writer_flush         keyshard.net.writer.Writer.flush (and writer Rule 8, compiled only)
    ConnFields...        keyshard.net.fields: the connections' fields as C struct members
    LatencyRows          keyshard.prometheus.LatencyRows
    split                keyshard.net.runtime.PoolRuntime.split
    SplitOwner           keyshard.net.runtime.SplitOwner

Each module installs its twin as the method at its end (unless KEYSHARD_NO_EXTENSIONS=1).

Rule 1: only the common case is compiled: forwarding and splitting requests onto a server's
        open connections (with or without a timeout: the deadline is set here, the timer
        fires in Python), pairing replies, draining finished replies, and the latency
        histograms of `--metrics-addr` (`LatencyRows`, its counts C integers). Everything else
        calls the same Python code the reference calls (local requests, failures, opening a
        connection, a timer firing, bad replies). Behaviour is the reference's, step for
        step, in the same order; the one difference is how a flush reaches a uvloop socket
        (writer Rule 8: the same bytes in the same order, not through the transport).
Rule 2: requests that are the compiled `keyshard._speedups.Request` (what
        `keyshard.protocol.base.Request` is when the extension is in use) are read and written
        as C struct members (`_speedups.pxd`); any other object goes through getattr/setattr.
Rule 3: the connections' fields are C struct members (`ConnFields`, `ClientFields`,
        `ServerFields`, the bases of the connection classes when this module is in use): the
        twins take `self` typed and read them directly.
Rule 4: no import of keyshard.net here (the net modules import this one at their end).
Rule 5: the twins call each other as C functions, not through the methods they are installed
        as (a Python method call per request is a measurable share of the proxy's user time):
        they are installed, or replaced by their references, all together.
"""

import errno
import os
from collections import deque

cimport cython
from libc.math cimport INFINITY
from cpython.list cimport PyList_Append
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from posix.unistd cimport write as c_write
from libc.errno cimport errno as c_errno, EAGAIN, EINTR

cdef extern from "errno.h":
    int EWOULDBLOCK  # EAGAIN on Linux; not in Cython's libc.errno

cdef extern from "Python.h":
    # `del lst[low:high]` with itemlist NULL, without making a slice object
    int PyList_SetSlice(object lst, Py_ssize_t low, Py_ssize_t high, PyObject* itemlist) except -1

from keyshard._speedups cimport (
    PoolFields, Request, _new_request, _Router, _router_of, parser_error, parser_feed,
)
from keyshard.pool import first_server as _first_server
from keyshard.protocol import base as _base

cdef object EINVAL = os.strerror(errno.EINVAL)  # as keyshard.net.server
cdef object ECONNREFUSED = os.strerror(errno.ECONNREFUSED)
cdef object KIND_FORWARD = _base.KIND_FORWARD
cdef object KIND_SPLIT = _base.KIND_SPLIT
# A server's outq is a deque (keyshard.net.server): its methods called as the type's
# descriptors, neither looked up nor bound per call
cdef object _deque_append = deque.append
cdef object _deque_popleft = deque.popleft

# --------------------------------------------------------------------------------------------
# Request fields (Rule 2)

cdef enum:
    O_RAW, O_KIND, O_KEY, O_NOREPLY, O_REPLY, O_OWNER, O_SERVER


def request_slots_direct() -> bool:
    """Whether requests are the compiled `Request`, read as C struct members (tests)."""
    return _base.Request is Request


cdef inline object _get(object req, int field, str name):
    cdef Request r
    if type(req) is Request:
        r = <Request>req
        if field == O_RAW:
            return r.raw
        if field == O_KIND:
            return r.kind
        if field == O_KEY:
            return r.key
        if field == O_NOREPLY:
            return r.noreply
        if field == O_REPLY:
            return r.reply
        if field == O_OWNER:
            return r.owner
        if field == O_SERVER:
            return r.server
    return getattr(req, name)  # any other object: raises AttributeError as the reference


cdef inline int _set(object req, int field, object value, str name) except -1:
    cdef Request r
    if type(req) is Request:
        r = <Request>req
        if field == O_REPLY:
            r.reply = value
            return 0
        if field == O_OWNER:
            r.owner = value
            return 0
        if field == O_SERVER:
            r.server = value
            return 0
    setattr(req, name, value)
    return 0


cdef inline Py_ssize_t _route(_Router router, object route, object key) except? -2:
    if router is not None:
        return router.route(key)
    if route is _first_server:  # a one-server pool: server 0, without a Python call
        return 0
    return route(key)


cdef inline bint _is(object value, object const) except -1:
    return value is const or value == const


include "_netfast_conn.pxi"


include "_netfast_latency.pxi"

# --------------------------------------------------------------------------------------------
# PoolRuntime.dispatch


include "_netfast_queue.pxi"


cdef inline object _pool_router(RuntimeFields self, object pool, object now):
    """`pool.router(now)` (keyshard.pool.ServerPool), its common case inlined: no rebuild
    pending (`_next_rebuild` is inf, and `now > inf` is false whatever the time), so the
    loop's clock is not read. `now`: the time `split` was called with, or None (dispatch)."""
    cdef PoolFields fields
    if isinstance(pool, PoolFields):
        fields = <PoolFields>pool
        if fields._next_rebuild == INFINITY:
            return fields._router
    elif pool._next_rebuild == INFINITY:
        return pool._router
    return pool.router(self.loop.time() if now is None else now)


def dispatch(RuntimeFields self, ClientFields client, reqs):
    """Twin of `PoolRuntime.dispatch`: route every request of one read (the hot path)."""
    _dispatch(self, client, reqs)


cdef int _dispatch(RuntimeFields self, ClientFields client, object reqs) except -1:
    if self.latency is not None:
        _stamp(self, reqs)
    cdef list queue = client.queue
    cdef _Router router = None
    route = None  # the clock is read only if a rebuild is pending (_pool_router: now None)
    cdef bint authenticated = client.authenticated
    cdef list dests = [None] * len(self.slots)  # idx -> _Dest, while no Python code ran since
    cdef int used = 0  # F_USED: dests holds a connection (settled before any call out)
    try:
        for req in reqs:
            kind = _get(req, O_KIND, "kind")
            if authenticated and _is(kind, KIND_FORWARD):
                _set(req, O_OWNER, client, "owner")
                noreply = _get(req, O_NOREPLY, "noreply")
                if not noreply:
                    PyList_Append(queue, req)
                if route is None:
                    route = _pool_router(self, self.pool, None)
                    router = None if route is _first_server else _router_of(route)
                used = _forward(self, req, noreply, _route(router, route, _get(req, O_KEY, "key")),
                                dests, used)
                if used & F_REROUTE:
                    route = None  # opening may have failed and ejected a server
                used &= F_USED
                continue
            if used:
                _settle(dests)
                used = 0
            route = None  # a fragment (or a local command) may have ejected a server
            if _not_forwarded(self, client, req, kind):
                break
            authenticated = client.authenticated
    finally:
        if used:
            _settle(dests)
    return _head_done(client, queue)


cdef inline int _head_done(ClientFields client, list queue) except -1:
    """After a read's dispatch: the client's first request may be answered already (a local
    reply, a failure), and so the replies behind it."""
    if queue:
        head = queue[0]
        if _get(head, O_REPLY, "reply") is not None:
            _client_req_done(client, head)
    return 0


cdef int _not_forwarded(RuntimeFields self, ClientFields client, object req,
                        object kind) except -1:
    """A request that is not one key for one server: split it (once authenticated) or answer
    it here. Returns 1 when the client is closing: the read's later requests are dropped."""
    _set(req, O_OWNER, client, "owner")
    if client.authenticated and _is(kind, KIND_SPLIT):
        PyList_Append(client.queue, req)
        _split(self, req, None)  # the clock read if needed (_pool_router)
        return 0
    client.local(req)
    return client.closing


cdef inline int _forward(RuntimeFields self, object req, object noreply, Py_ssize_t idx,
                         list dests, int used) except -1:
    """One forwarded request routed to server `idx`: onto the connection this read already
    uses for it, else `_forward_first`. Returns F_USED and F_REROUTE bits."""
    cdef _Dest d
    if idx < 0:
        if used:
            _settle(dests)
        self.forward_failed(req, ECONNREFUSED)
        return 0
    obj = dests[idx] if idx < len(dests) else None
    if obj is None:
        return _forward_first(self, req, noreply, idx, dests, used)
    d = <_Dest>obj
    raw = _get(req, O_RAW, "raw")
    d.nreq += 1
    d.nbytes += len(raw)
    _set(req, O_SERVER, d.conn, "server")
    if not noreply:
        _deque_append(d.outq, req)
        if d.deadline > 0.0:
            _timed(self.loop, d.conn, req, d.deadline)
    PyList_Append(d.wbuf, raw)
    return F_USED


# --------------------------------------------------------------------------------------------
# ServerConn.data_received


def server_data_received(ServerFields self, data):
    """Twin of `ServerConn.data_received`: pair the replies of one read with `outq`."""
    cdef Py_ssize_t paired
    parser = self.parser
    replies = parser_feed(parser, data)
    if replies:
        outq = self.outq
        paired = _pair_replies(self, outq, replies)
        if paired < 0:
            return  # a bad reply: the connection failed
        if paired > self.swallowed and (<RuntimeFields?>self.runtime).pool.auto_eject:
            self.slot.ok()  # ServerSlot.ok: pool.success when auto_eject_hosts
    if parser_error(self.parser) is not None:
        self.fail(EINVAL, "server_err")


cdef Py_ssize_t _pair_replies(ServerFields self, object outq, object replies) except -2:
    """Give each reply to the request at the head of `outq` and tell its owner; the batched
    owners (clients) drain once each at the end. Returns the number paired, or -1 after a
    reply nobody asked for or a failure reply (`bad_reply` failed the connection)."""
    cdef Py_ssize_t before = len(outq), nbytes = 0, paired
    cdef object last = None
    cdef list clients = []  # batched owners answered in this read, drained once each below
    cdef bint bad = False
    is_failure = self.codec.is_failure_reply
    self.swallowed = 0
    for reply in replies:
        # a reply nobody asked for, or a failure reply (-LOADING...): 45 is "-"
        if not outq or (reply[0] == 45 and is_failure(reply)):
            bad = True
            break
        req = _deque_popleft(outq)
        nbytes += len(reply)
        _set(req, O_REPLY, reply, "reply")
        owner = _get(req, O_OWNER, "owner")
        if owner is last:
            pass  # batched, already listed
        elif type(owner) is SplitOwner:  # batched = False
            (<SplitOwner>owner).req_done(req)
        elif isinstance(owner, ClientFields) or owner.batched:  # ClientConn: batched
            last = owner
            PyList_Append(clients, owner)
        else:
            owner.req_done(req)
    paired = before - len(outq)
    _count_responses(self.stats, paired, nbytes)
    _drain_all(clients, not self.hold)  # writer Rule 6 where Rule 4 does not hold
    if bad:
        self.bad_reply(paired)
        return -1
    return paired


cdef int _drain_all(list clients, bint eager) except -1:
    for client in clients:
        if isinstance(client, ClientFields):
            _client_drain(<ClientFields>client, eager)
        else:
            client.drain(eager)
    return 0

# --------------------------------------------------------------------------------------------
# ClientConn.drain / req_done


def client_drain(ClientFields self, bint eager=False):
    """Twin of `ClientConn.drain`: write every finished reply at the head of the queue."""
    _client_drain(self, eager)


cdef int _client_drain(ClientFields self, bint eager=False) except -1:
    cdef RuntimeFields runtime = <RuntimeFields?>self.runtime
    latency = runtime.latency
    cdef double now = runtime.loop.time() if latency is not None else 0.0
    cdef list queue = self.queue
    cdef list wbuf = self.wbuf
    cdef Py_ssize_t done = 0, n = len(queue)
    while done < n:
        head = queue[done]
        reply = _get(head, O_REPLY, "reply")
        if reply is None:
            break
        done += 1
        PyList_Append(wbuf, reply)  # Writer.write, inlined: once per reply
        if latency is not None:
            _observe_req(latency, head, now)
    if done:
        PyList_SetSlice(queue, 0, done, NULL)  # del queue[:done]
    if not self.dirty and wbuf:
        if eager and not queue:
            _writer_flush(self)  # writer Rule 6: from the server's read, no flusher round
        else:
            _mark(self)
    close_mark = self.close_mark
    if close_mark is not None and close_mark not in queue:
        self.close_in_error()
    elif not queue and self.closing:
        self.close()
    elif self.read_paused:
        self.maybe_resume()
    return 0


def client_req_done(ClientFields self, req):
    """Twin of `ClientConn.req_done`."""
    _client_req_done(self, req)


cdef int _client_req_done(ClientFields self, object req) except -1:
    cdef list queue = self.queue
    if not queue or queue[0] is not req:
        return 0  # an earlier request is still waiting; it will drain this one too
    _client_drain(self)
    return 0

# --------------------------------------------------------------------------------------------
# ClientConn.data_received


def client_data_received(ClientFields self, data):
    """Twin of `ClientConn.data_received`: parse one read, dispatch it, pause a long queue."""
    if self.closing:
        return
    parser = self.parser
    reqs = parser_feed(parser, data)
    if parser_error(parser) is not None:
        self.bad_input(reqs)
        return
    if reqs:
        runtime = self.runtime
        if isinstance(runtime, RuntimeFields):  # Rule 5
            _dispatch(<RuntimeFields>runtime, self, reqs)
        else:
            runtime.dispatch(self, reqs)
    if len(self.queue) > _max_pending(self) and not self.read_paused:
        self.pause_reading()


cdef object _mp_type = None
cdef Py_ssize_t _mp = 0


cdef inline Py_ssize_t _max_pending(ClientFields client) except -1:
    """`client.max_pending`, a class attribute (the fields have no slot for it): read from the
    client's type once per type, not looked up along its MRO per read."""
    global _mp_type, _mp
    cls = type(client)
    if cls is not _mp_type:
        _mp, _mp_type = cls.max_pending, cls
    return _mp

# --------------------------------------------------------------------------------------------
# Writer.flush


def writer_flush(ConnFields self):
    """Twin of `Writer.flush`: one `transport.write` of everything buffered."""
    _writer_flush(self)


include "_netfast_split.pxi"
