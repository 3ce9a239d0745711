# Included by _netfast.pyx: the connections' fields as C struct members, and the flusher.

# --------------------------------------------------------------------------------------------
# Connection fields (keyshard.net.fields): C struct members instead of slots


cdef class ConnFields:
    """Twin of `keyshard.net.fields.ConnFields`."""
    cdef public object runtime, flusher, codec, parser, transport
    cdef public list wbuf
    cdef public bint dirty, deferred, closed
    # writer Rule 8 (`_direct`): the transport whose socket `_fd` is (-1: not written
    # directly), and whether uvloop may still hold data of an earlier write
    cdef object _fd_of
    cdef int _fd
    cdef bint _wpending


cdef class ClientFields(ConnFields):
    """Twin of `keyshard.net.fields.ClientFields`."""
    cdef public list queue
    cdef public object close_mark
    cdef public bint closing, eof, quit, failed, counted, read_paused, write_paused
    cdef public bint authenticated


cdef class ServerFields(ConnFields):
    """Twin of `keyshard.net.fields.ServerFields`."""
    cdef public object slot, outq, sock, timer, stats
    cdef public bint connected, hold
    cdef public double timeout
    cdef public Py_ssize_t swallowed


cdef class RuntimeFields:
    """Twin of `keyshard.net.fields.RuntimeFields` (PoolRuntime keeps a `__dict__` for the
    rest of its attributes)."""
    cdef public object loop, pool, slots, stats, codec, latency, flusher
    cdef public bint quirks
    cdef dict __dict__


cdef class SlotFields:
    """Twin of `keyshard.net.fields.SlotFields` (ServerSlot keeps a `__dict__` for the rest)."""
    cdef public object ready, stats
    cdef public list conns
    cdef public Py_ssize_t next, limit
    cdef dict __dict__


# --------------------------------------------------------------------------------------------
# Counters (keyshard.stats): C integers the twins add to directly; the names are checked
# against the metric table by the tests.


cdef class PoolCounters:
    """Twin of `keyshard.stats.PoolCounters`."""
    cdef public long long client_eof, client_err, server_ejects, forward_error, fragments


cdef class ServerCounters:
    """Twin of `keyshard.stats.ServerCounters`."""
    cdef public long long server_eof, server_err, server_timedout, server_ejected_at
    cdef public long long requests, request_bytes, responses, response_bytes


cdef inline int _count_requests(object stats, Py_ssize_t n, Py_ssize_t nbytes) except -1:
    if isinstance(stats, ServerCounters):
        (<ServerCounters>stats).requests += n
        (<ServerCounters>stats).request_bytes += nbytes
    else:
        stats.requests += n
        stats.request_bytes += nbytes
    return 0


cdef inline int _count_responses(object stats, Py_ssize_t n, Py_ssize_t nbytes) except -1:
    if isinstance(stats, ServerCounters):
        (<ServerCounters>stats).responses += n
        (<ServerCounters>stats).response_bytes += nbytes
    else:
        stats.responses += n
        stats.response_bytes += nbytes
    return 0


cdef inline int _mark(ConnFields conn) except -1:
    """`conn.flusher.mark(conn)` once per iteration (Writer.write's second half)."""
    conn.dirty = True
    flusher = conn.flusher
    if type(flusher) is Flusher:
        (<Flusher>flusher).mark(conn)
    else:
        flusher.mark(conn)
    return 0


cdef class Flusher:
    """Twin of `keyshard.net.writer.Flusher`: one flush of every dirty connection per loop
    iteration, from a single `call_soon`."""
    cdef public object loop
    cdef public list dirty
    cdef public bint scheduled
    cdef object _flush  # self.flush, made once (a bound method per loop iteration is a cost)

    def __init__(self, loop):
        self.loop = loop
        self.dirty = []
        self.scheduled = False
        self._flush = self.flush

    cpdef mark(self, conn):
        PyList_Append(self.dirty, conn)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._flush)

    def flush(self):
        self.scheduled = False
        cdef list dirty = self.dirty
        self.dirty = []
        cdef ConnFields c
        cdef bint hold
        for conn in dirty:
            if isinstance(conn, ConnFields):
                c = <ConnFields>conn
                if isinstance(c, ClientFields):
                    hold = bool((<ClientFields>c).queue)
                else:
                    hold = isinstance(c, ServerFields) and (<ServerFields>c).hold
                if not c.deferred and c.transport is not None and hold:
                    c.deferred = True  # writer Rules 3 and 4: once, then written
                    self.mark(c)
                    continue
                c.deferred = False
                _writer_flush(c)
            else:
                conn.flush()


# A transport's `is_closing` and `write` as its type's attributes, fetched once per type
# (uvloop's are method descriptors, and its transports have no instance attributes): called
# with the transport as the first argument, neither looked up nor bound per flush.
cdef object _t_type = None
cdef object _t_closing = None
cdef object _t_write = None
cdef object _t_writelines = None
cdef bint _t_direct = False  # uvloop's: its socket may be written directly (Rule 8)
cdef object _t_force_close = None  # uvloop's `_force_close(exc)`, what its write error calls
cdef Py_ssize_t GATHER_BYTES = 16384  # keyshard.net.writer.GATHER_BYTES (Rule 5 there)
WRITER_GATHER_BYTES = GATHER_BYTES  # for the tests: the same as the reference's


cdef inline bint _gather(list wbuf) except -1:
    """Whether the buffers add up to GATHER_BYTES (counted until they do)."""
    cdef Py_ssize_t total = 0
    for buf in wbuf:
        total += len(buf)
        if total >= GATHER_BYTES:
            return True
    return False


cdef int _socket_of(ConnFields self, object transport, bint direct) except -2:
    """The socket of `transport` when writer Rule 8 may write to it itself, else -1 (looked
    up once per transport)."""
    cdef int fd = -1
    if direct:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            fd = sock.fileno()
    self._fd_of = transport
    self._fd = fd
    self._wpending = False
    return fd


cdef enum:
    W_FAILED = -3  # `_direct`: the write failed and the transport was closed with its error


cdef Py_ssize_t _direct(ConnFields self, object transport, bytes data, bint direct,
                        object force_close) except -2:
    """Writer Rule 8: write `data` to the socket itself when uvloop holds nothing of this
    connection's; how much went, or -1 when it was not tried or would block (the caller
    hands the rest, or all of it, to the transport, which buffers it). A failed write has
    taken the socket's error (a reset reads as ECONNRESET once, then as EPIPE), so the
    transport is closed with it here, as uvloop's own failed write does: W_FAILED."""
    cdef int fd = self._fd if self._fd_of is transport else _socket_of(self, transport, direct)
    if fd < 0:
        return -1
    if self._wpending:  # the transport was given data: written only once it has none left
        if transport.get_write_buffer_size():
            return -1
        self._wpending = False
    cdef Py_ssize_t n = c_write(fd, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    if n >= 0:
        return n
    cdef int err = c_errno
    if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
        return -1
    force_close(transport, OSError(err, os.strerror(err)))
    return W_FAILED


cdef int _cache_type(object cls) except -1:
    """A transport type's methods, and whether Rule 8 may write its sockets (uvloop's, with
    the `_force_close` its own failed write calls), fetched once per type."""
    global _t_type, _t_closing, _t_write, _t_writelines, _t_direct, _t_force_close
    _t_closing, _t_write, _t_writelines = cls.is_closing, cls.write, cls.writelines
    _t_force_close = getattr(cls, "_force_close", None)
    _t_direct = (cls.__module__ or "").startswith("uvloop") and _t_force_close is not None
    _t_type = cls
    return 0


cdef int _writer_flush(ConnFields self) except -1:
    self.dirty = False
    cdef list wbuf = self.wbuf
    if not wbuf:
        return 0
    transport = self.transport
    if transport is None:
        return 0  # not connected yet: connection_made flushes
    if type(transport) is not _t_type:
        _cache_type(type(transport))
    write = _t_write  # is_closing might flush a transport of another type
    writelines = _t_writelines
    cdef bint direct = _t_direct
    force_close = _t_force_close
    cdef Py_ssize_t n = len(wbuf)
    if _t_closing(transport):
        PyList_SetSlice(wbuf, 0, n, NULL)
        return 0
    if n == 1:  # writer Rule 7: the list is emptied and kept, not replaced
        data = wbuf[0]
        PyList_SetSlice(wbuf, 0, 1, NULL)
    elif _gather(wbuf):
        self.wbuf = []  # writelines keeps the buffers, not the list
        self._wpending = True
        writelines(transport, wbuf)  # writer Rule 5
        return 0
    else:
        data = b"".join(wbuf)
        PyList_SetSlice(wbuf, 0, n, NULL)
    return _write_out(self, transport, data, write, direct, force_close)


cdef int _write_out(ConnFields self, object transport, object data, object write, bint direct,
                    object force_close) except -1:
    """One flush's data: to the socket itself (Rule 8), and what that does not send to the
    transport."""
    cdef Py_ssize_t sent
    if type(data) is bytes:
        sent = _direct(self, transport, <bytes>data, direct, force_close)
        if sent == PyBytes_GET_SIZE(data) or sent == W_FAILED:
            return 0
        if sent > 0:
            data = data[sent:]
    self._wpending = True
    write(transport, data)
    return 0
