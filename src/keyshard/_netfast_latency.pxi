# Included by _netfast.pyx: the latency histograms' counts (`--metrics-addr`), as C integers
# the twins add to, and the two steps of observing a request (stamp its start, count it).

# --------------------------------------------------------------------------------------------
# keyshard.prometheus.LatencyRows


cdef class _Row:
    """One command's counts: a bucket per bound, then +Inf; and the sum of the seconds."""
    cdef unsigned long long* counts
    cdef double total

    def __dealloc__(self):
        PyMem_Free(self.counts)


cdef class LatencyRows:
    """Twin of `keyshard.prometheus.LatencyRows`: the same `observe` and `rows`; the twins
    call `_observe` as a C function (a subclass overriding `observe` is bypassed there)."""
    cdef double* _bounds
    cdef Py_ssize_t _n  # bounds; a row has _n + 1 buckets
    cdef dict _rows  # cmd -> _Row
    cdef readonly tuple bounds

    def __init__(self, bounds):
        bounds = tuple([float(b) for b in bounds])
        cdef double* c = <double*>PyMem_Malloc(max(len(bounds), 1) * sizeof(double))
        if c == NULL:
            raise MemoryError()
        for i, b in enumerate(bounds):
            c[i] = b
        PyMem_Free(self._bounds)
        self._bounds, self._n, self.bounds, self._rows = c, len(bounds), bounds, {}

    def __dealloc__(self):
        PyMem_Free(self._bounds)

    def observe(self, cmd, double seconds):
        _observe(self, cmd, seconds)

    @property
    def rows(self):
        """cmd -> [count per bucket (non-cumulative, +Inf last), sum of seconds]: a copy, in
        the reference's layout."""
        cdef _Row row
        out = {}
        for cmd, row in self._rows.items():
            out[cmd] = [row.counts[i] for i in range(self._n + 1)] + [row.total]
        return out


cdef int _observe(LatencyRows self, object cmd, double seconds) except -1:
    cdef dict rows = self._rows
    if rows is None:
        raise ValueError("LatencyRows.__init__ was not called")
    cdef _Row row = rows.get(cmd)
    if row is None:
        row = _Row.__new__(_Row)
        row.counts = <unsigned long long*>PyMem_Calloc(self._n + 1, sizeof(unsigned long long))
        if row.counts == NULL:
            raise MemoryError()
        rows[cmd] = row
    cdef Py_ssize_t i = 0
    while i < self._n and self._bounds[i] < seconds:  # bisect_left: le semantics
        i += 1
    row.counts[i] += 1
    row.total += seconds
    return 0


# --------------------------------------------------------------------------------------------
# Observing a request (PoolRuntime.dispatch's stamp, ClientConn.drain's count)


cdef int _stamp(RuntimeFields self, object reqs) except -1:
    """Every request of one read starts now (one clock read)."""
    cdef double now = self.loop.time()
    for req in reqs:
        if type(req) is Request:
            (<Request>req).start = now
        else:
            req.start = now
    return 0


cdef inline int _observe_req(object latency, object req, double now) except -1:
    """Count one request whose reply is written `now`."""
    if type(req) is Request:
        cmd, start = (<Request>req).cmd, (<Request>req).start
    else:
        cmd, start = req.cmd, req.start
    if isinstance(latency, LatencyRows):
        return _observe(<LatencyRows>latency, cmd, now - start)
    latency.observe(cmd, now - start)
    return 0
