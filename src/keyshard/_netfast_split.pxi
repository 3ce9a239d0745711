# Included by _netfast.pyx: split requests (SplitOwner, PoolRuntime.split).

# --------------------------------------------------------------------------------------------
# SplitOwner

cdef object _finish_failed = None  # keyshard.net.runtime.finish_failed (Rule 4)
cdef object _first_error = None  # keyshard.net.runtime.first_error
cdef object _SWALLOW = None  # keyshard.net.server.SWALLOW


cdef int _split_imports() except -1:
    global _finish_failed, _first_error, _SWALLOW
    from keyshard.net.runtime import finish_failed, first_error
    from keyshard.net.server import SWALLOW
    _finish_failed, _first_error, _SWALLOW = finish_failed, first_error, SWALLOW
    return 0


cdef inline bint _closed(object client) except -1:
    if isinstance(client, ClientFields):
        return (<ClientFields>client).closed
    return client.closed


cdef inline int _owner_init(SplitOwner self, object runtime, object parent,
                            Py_ssize_t nfrags, list order) except -1:
    self.runtime = runtime
    self.parent = parent
    self.replies = [None] * nfrags
    self.pending = nfrags
    self.errors = None
    self.order = order
    self.splitting = True
    return 0


@cython.freelist(8)
cdef class SplitOwner:
    """Twin of `keyshard.net.runtime.SplitOwner`: collects the fragment replies of one split
    request; the failure paths call the reference's `finish_failed`."""
    cdef public object runtime, parent, errors
    cdef public list replies, order
    cdef public Py_ssize_t pending
    cdef public bint splitting

    batched = False  # told of each fragment reply at once (req_done)

    def __init__(self, runtime, parent, Py_ssize_t nfrags):
        if _SWALLOW is None:
            _split_imports()
        _owner_init(self, runtime, parent, nfrags, [])

    cpdef req_done(self, frag):
        client = _get(self.parent, O_OWNER, "owner")
        if _closed(client):
            _SWALLOW.req_done(frag)  # the client went away: nobody reads it
            return
        if type(frag) is Request:
            self.replies[(<Request>frag).ctx] = (<Request>frag).reply
        else:
            self.replies[frag.ctx] = frag.reply
        self.pending -= 1
        if self.pending == 0:
            self.finish()

    def req_failed(self, frag, reply):
        if self.errors is None:
            self.errors = [None] * len(self.replies)
        self.errors[frag.ctx] = reply
        self.pending -= 1
        if self.pending == 0:
            self.finish()

    def first_error(self, errors):
        return _first_error(self, errors)

    cpdef finish(self):
        parent = self.parent
        client = _get(parent, O_OWNER, "owner")
        if _closed(client):
            return
        if self.errors is None:
            ctx = (<Request>parent).ctx if type(parent) is Request else parent.ctx
            try:
                reply = (<RuntimeFields?>self.runtime).codec.merge(parent, ctx, self.replies)
            except _base.MergeError:
                pass
            else:
                _set(parent, O_REPLY, reply, "reply")
                if isinstance(client, ClientFields):  # Rule 5
                    _client_req_done(<ClientFields>client, parent)
                else:
                    client.req_done(parent)
                return
        _finish_failed(self)

# --------------------------------------------------------------------------------------------
# PoolRuntime.split


def split(RuntimeFields self, req, now):
    """Twin of `PoolRuntime.split`: one fragment per server, sent in server order."""
    _split(self, req, now)


cdef list _first_keys(Request req, object ctx):
    """The first key of each fragment: ctx numbers the fragments of the keys in order of
    first appearance, which is the order of the fragments."""
    cdef Py_ssize_t step = 2 if req.cmd == b"mset" else 1
    cdef Py_ssize_t pos = 0, nfirsts = 0
    cdef list firsts = []
    args = req.args
    for frag_no in ctx:
        if frag_no == nfirsts:
            PyList_Append(firsts, args[pos * step])
            nfirsts += 1
        pos += 1
    return firsts


cdef list _server_order(list frag_list):
    """Fragment positions in server order: a stable insertion sort (a handful of servers)."""
    cdef Py_ssize_t n = len(frag_list), i, j, server
    cdef list order = [None] * n
    for i in range(n):
        server = (<tuple>frag_list[i])[0]
        j = i - 1
        while j >= 0 and <Py_ssize_t>(<tuple>frag_list[<Py_ssize_t>order[j]])[0] > server:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = i
    return order


cdef int _split(RuntimeFields self, object req, object now) except -1:
    if _SWALLOW is None:
        _split_imports()
    pool = self.pool
    group = (<PoolFields>pool)._group if isinstance(pool, PoolFields) else pool._group  # grouper()
    frags, ctx = self.codec.split(req, group)
    cdef Request preq = <Request?>req  # the compiled class is in use wherever this twin is
    preq.ctx = ctx
    cdef list frag_list = frags
    cdef SplitOwner owner = _new_owner(self, req, len(frag_list))
    cdef list order = _server_order(frag_list)
    owner.order = order
    # pool.route(key, now) per fragment: the rebuild check once, again after a failure
    route = _pool_router(self, pool, now)
    cdef list firsts = None
    cdef Py_ssize_t idx
    cdef Request frag
    for p in order:
        item = <tuple>frag_list[<Py_ssize_t>p]
        frag = _new_request(item[1], KIND_FORWARD, preq.cmd, b"", None, False)
        frag.owner = owner
        frag.ctx = p
        if route is group:  # the router that grouped the keys: the fragment's server
            idx = item[0]
        else:  # rebuilt since (or no server live): the fragment goes where its first key does
            if firsts is None:
                firsts = _first_keys(preq, ctx)
            idx = _route(_router_of(route), route, firsts[<Py_ssize_t>p])
        if not _send_fragment(self, owner, frag, idx):
            route = _pool_router(self, pool, now)  # a server may be ejected
    owner.splitting = False
    return 0


cdef inline SplitOwner _new_owner(RuntimeFields self, object req, Py_ssize_t nfrags):
    """The owner of a split request's fragments; the pool counts them (nutcracker does not)."""
    cdef SplitOwner owner = SplitOwner.__new__(SplitOwner)
    _owner_init(owner, self, req, nfrags, None)
    if not self.quirks:
        pstats = self.stats
        if isinstance(pstats, PoolCounters):
            (<PoolCounters>pstats).fragments += nfrags
        else:
            pstats.fragments += nfrags
    return owner


cdef inline bint _send_fragment(RuntimeFields self, SplitOwner owner, Request frag,
                                Py_ssize_t idx) except -1:
    """Send one fragment to server `idx`; False when it failed instead (no live server, or
    opening the connection failed): its owner was told."""
    if idx < 0:
        owner.req_failed(frag, self.codec.error_reply(ECONNREFUSED))
        return False
    cdef SlotFields slot = self.slots[idx]
    conn_obj = slot.ready
    if conn_obj is None:
        conn_obj = _next_conn(slot)
        if conn_obj is None:
            conn_obj = slot.conn()
    if conn_obj is None:
        owner.req_failed(frag, self.codec.error_reply(slot.error))
        return False
    raw = frag.raw
    _count_requests(slot.stats, 1, len(raw))
    cdef ServerFields conn = conn_obj
    _queue_on(self, conn, frag, raw, False, _deadline(self, conn))
    return True
