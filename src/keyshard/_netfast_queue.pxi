# Included by _netfast.pyx (one module): queueing a forwarded request or a fragment on a
# server connection, as ServerConn.send does: the connection picked (the slot's ready one, or
# the next of several), the request's deadline and the connection's timer when the pool has
# a timeout, and the per-read destinations (`_Dest`) that batch a read's requests to one
# server and their counts.


cdef enum:
    F_USED = 1  # `_forward` left a connection in dests (nothing settled since)
    F_REROUTE = 2  # it opened a connection: the router must be fetched again


@cython.freelist(16)
cdef class _Dest:
    """A server's ready connection during one `dispatch`: its queues, the deadline of the
    requests queued on it in this read (0.0: the pool has no timeout) and the requests counted
    for its slot but not yet added to `slot.stats`."""
    cdef object stats, outq
    cdef ServerFields conn
    cdef list wbuf
    cdef Py_ssize_t nreq, nbytes
    cdef double deadline


cdef inline int _timed(object loop, ServerFields conn, object req, double deadline) except -1:
    """A request that expects a reply, queued on a connection with a timeout: its deadline, and
    the connection's timer armed if it has none (ServerConn Rule 3: the timer re-arms itself,
    so this is rare under load)."""
    if type(req) is Request:
        (<Request>req).deadline = deadline
    else:
        req.deadline = deadline
    if conn.timer is None:
        conn.timer = loop.call_at(deadline, conn.check_timeout)
    return 0


cdef int _settle(list dests) except -1:
    """Add the pending counts to each slot's stats; forget the connections (before any call
    back into Python, and at the end of the read)."""
    cdef _Dest d
    cdef Py_ssize_t i
    for i in range(len(dests)):
        obj = dests[i]
        if obj is not None:
            d = <_Dest>obj
            if d.nreq:
                _count_requests(d.stats, d.nreq, d.nbytes)
            dests[i] = None
    return 0


cdef inline object _next_conn(SlotFields slot):
    """`slot.conn()` when it would not open a connection: the next of the open ones in turn
    (server_connections > 1), or None (then `slot.conn()` itself opens one)."""
    cdef list conns = slot.conns
    if conns is None:
        return None
    cdef Py_ssize_t n = len(conns)
    if n == 0 or n < slot.limit:
        return None
    if n == 1:
        return conns[0]
    slot.next = (slot.next + 1) % n
    return conns[slot.next]


cdef int _forward_first(RuntimeFields self, object req, object noreply, Py_ssize_t idx,
                        list dests, int used) except -1:
    """The read's first request for server `idx`: its ready connection (opened if need be)
    becomes a destination in dests. With several connections per server no destination is
    kept: every request comes here and takes the next connection (ServerSlot.conn)."""
    cdef SlotFields slot = self.slots[idx]
    cdef int reroute = 0
    cdef ServerFields conn
    conn_obj = slot.ready
    if conn_obj is None:
        conn_obj = _next_conn(slot)
    if conn_obj is None:
        if used:
            _settle(dests)
            used = 0
        conn_obj = slot.conn()
        reroute = F_REROUTE
        if conn_obj is None:
            self.forward_failed(req, slot.error)
            return reroute
    conn = conn_obj
    raw = _get(req, O_RAW, "raw")
    if slot.limit > 1:  # server_connections: each request takes the next one (ServerSlot.conn)
        _queue_on(self, conn, req, raw, noreply, _deadline(self, conn))
        _count_requests(slot.stats, 1, len(raw))
        return used | reroute
    dests[idx] = _new_dest(self, conn, slot.stats, req, raw, noreply)
    return F_USED | reroute


cdef inline double _deadline(RuntimeFields self, ServerFields conn) except? -1.0:
    """The deadline of a request queued on conn now; 0.0 if its pool has no timeout."""
    return self.loop.time() + conn.timeout if conn.timeout > 0.0 else 0.0


cdef inline int _queue_on(RuntimeFields self, ServerFields conn, object req, object raw,
                          object noreply, double deadline) except -1:
    """conn.send(req), inlined (the slot's counts are the caller's)."""
    _set(req, O_SERVER, conn, "server")
    if not noreply:
        _deque_append(conn.outq, req)
        if deadline > 0.0:
            _timed(self.loop, conn, req, deadline)
    PyList_Append(conn.wbuf, raw)
    if not conn.dirty:
        _mark(conn)
    return 0


cdef _Dest _new_dest(RuntimeFields self, ServerFields conn, object stats, object req,
                     object raw, object noreply):
    """conn.send(req), inlined; the connection's queues (and the deadline, the loop's clock
    read once) kept for the read's next requests to the same server."""
    cdef _Dest d = _Dest.__new__(_Dest)
    d.stats = stats
    d.conn = conn
    d.nreq = 1
    d.nbytes = len(raw)
    d.deadline = _deadline(self, conn)
    _queue_on(self, conn, req, raw, noreply, d.deadline)
    d.outq = conn.outq
    d.wbuf = conn.wbuf
    return d
