# Included by _speedups.pyx. Twins of keyshard.protocol.redis_merge.split and .merge (MGET,
# DEL, TOUCH, UNLINK, MSET): fragments and merged replies are built with one allocation each,
# from spans of the original bytes, instead of one formatted bytes object per key.
#
# redis_merge is read lazily (its fragment heads, and its own `_u32` / `_bulks` for inputs off
# the usual path), because it imports this module at its end.

from cpython.bytes cimport PyBytes_Check
from libc.stdlib cimport malloc

cdef object _MergeError = _base.MergeError
cdef object _rm = None  # keyshard.protocol.redis_merge, once loaded


cdef object _redis_merge():
    global _rm
    if _rm is None:
        from keyshard.protocol import redis_merge
        _rm = redis_merge
    return _rm


cdef inline Py_ssize_t _ndigits(Py_ssize_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 10:
        v //= 10
        n += 1
    return n


cdef inline char* _put_int(char* w, Py_ssize_t v) noexcept nogil:
    """Write `v` (>= 0) in decimal at `w`; return the end."""
    cdef Py_ssize_t n = _ndigits(v), i
    for i in range(n - 1, -1, -1):
        w[i] = <char>(48 + v % 10)
        v //= 10
    return w + n


cdef inline char* _put(char* w, const char* s, Py_ssize_t n) noexcept nogil:
    memcpy(w, s, n)
    return w + n


cdef object _u32_of(bytes buf, Py_ssize_t a, Py_ssize_t b):
    """redis_merge._u32(buf[a:b]): digits folded modulo 2**32 (anything else: the reference)."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(buf)
    cdef uint32_t v = 0
    cdef Py_ssize_t i
    for i in range(a, b):
        if not _isdigit(s[i]):
            return _redis_merge()._u32(buf[a:b])
        v = v * <uint32_t>10 + (s[i] - 48)
    return v


cdef dict _heads = None  # redis_merge._HEADS, once loaded


cdef Py_ssize_t _group_keys(list items, Py_ssize_t step, Py_ssize_t nkeys, object route,
                            Py_ssize_t* frag_of, Py_ssize_t* fserver, Py_ssize_t* fcount,
                            Py_ssize_t* fsize) except -1:
    """split's first pass: route each key once; per key its fragment, per fragment its server,
    element count and size. Returns the number of fragments."""
    cdef _Router router = _router_of(route)
    cdef Py_ssize_t nfrags = 0, k, f, j, n, server
    cdef bytes item
    for k in range(nkeys):
        key = items[k * step]
        server = router.route(key) if router is not None else route(key)
        for f in range(nfrags):  # a handful of servers: a scan is cheaper than a dict
            if fserver[f] == server:
                break
        else:
            f = nfrags
            nfrags += 1
            fserver[f] = server
            fcount[f] = 0
            fsize[f] = 0
        frag_of[k] = f
        for j in range(k * step, k * step + step):
            item = <bytes?>items[j]  # TypeError for a non-bytes argument, as `%s` would
            n = PyBytes_GET_SIZE(item)
            fcount[f] += 1
            fsize[f] += 5 + _ndigits(n) + n
    return nfrags


cdef list _write_fragments(list items, Py_ssize_t step, Py_ssize_t nkeys, bytes head,
                           Py_ssize_t nfrags, Py_ssize_t* frag_of, Py_ssize_t* fserver,
                           Py_ssize_t* fcount, Py_ssize_t* fsize, char** fw):
    """split's second pass: one allocation per fragment, its head, then each key's elements
    in the order of the keys. Returns [(server index, fragment bytes)]."""
    cdef list frags = []
    cdef Py_ssize_t f, k, j, n, size
    cdef bytes item, out
    cdef char* w
    for f in range(nfrags):
        size = 3 + _ndigits(fcount[f] + 1) + PyBytes_GET_SIZE(head) + fsize[f]
        out = PyBytes_FromStringAndSize(NULL, size)
        w = PyBytes_AS_STRING(out)
        w[0] = 42  # '*'
        w = _put_int(w + 1, fcount[f] + 1)
        w = _put(w, "\r\n", 2)
        PyList_Append(frags, (fserver[f], out))
        fw[f] = _put(w, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
    for k in range(nkeys):
        f = frag_of[k]
        w = fw[f]
        for j in range(k * step, k * step + step):
            item = <bytes>items[j]
            n = PyBytes_GET_SIZE(item)
            w[0] = 36  # '$'
            w = _put_int(w + 1, n)
            w = _put(w, "\r\n", 2)
            w = _put(w, PyBytes_AS_STRING(item), n)
            w = _put(w, "\r\n", 2)
        fw[f] = w
    return frags


def split(req, route):
    """Twin of redis_merge.split: [(server index, fragment bytes)] and the merge context.
    Two passes over the keys: the first routes each key once and sizes the fragments, the
    second writes each fragment into its one allocation (no list per fragment, no dict)."""
    cdef object args, cmd
    if type(req) is Request:
        args = (<Request>req).args
        cmd = (<Request>req).cmd
    else:
        args = req.args
        cmd = req.cmd
    head_obj = _fragment_head(req, cmd, args)
    cdef Py_ssize_t step = 2 if cmd == b"mset" else 1
    cdef list items = args if type(args) is list else list(args)
    cdef Py_ssize_t nkeys = (len(items) + step - 1) // step, nfrags
    cdef bytes head = <bytes?>head_obj
    cdef list frags, order
    # per key: its fragment; per fragment: its server, its element count and size, its writer
    cdef Py_ssize_t* mem = <Py_ssize_t*>malloc((4 * nkeys + 1) * sizeof(Py_ssize_t))
    cdef char** fw = <char**>malloc((nkeys + 1) * sizeof(char*))
    if mem == NULL or fw == NULL:
        free(mem)
        free(fw)
        raise MemoryError()
    cdef Py_ssize_t* frag_of = mem
    cdef Py_ssize_t* fserver = mem + nkeys
    cdef Py_ssize_t* fcount = fserver + nkeys
    cdef Py_ssize_t* fsize = fcount + nkeys
    try:
        nfrags = _group_keys(items, step, nkeys, route, frag_of, fserver, fcount, fsize)
        frags = _write_fragments(items, step, nkeys, head, nfrags, frag_of, fserver, fcount,
                                 fsize, fw)
        order = _fragment_numbers(frag_of, nkeys)
    finally:
        free(mem)
        free(fw)
    return frags, order


cdef inline object _fragment_head(object req, object cmd, object args):
    """redis_merge._HEADS[cmd], what every fragment of `req` starts with after its count;
    AssertionError for a request that is not split."""
    global _heads
    if _heads is None:
        _heads = _redis_merge()._HEADS
    head_obj = _heads.get(cmd)
    if args is None or head_obj is None:
        raise AssertionError(req)
    return head_obj


cdef inline list _fragment_numbers(Py_ssize_t* frag_of, Py_ssize_t nkeys):
    """The merge context: per key, the number of its fragment (a list of ints)."""
    cdef list order = [None] * nkeys
    cdef Py_ssize_t k
    for k in range(nkeys):
        order[k] = frag_of[k]
    return order


cdef Py_ssize_t _find_crlf(const unsigned char* s, Py_ssize_t p, Py_ssize_t n) noexcept:
    cdef const unsigned char* c
    while p < n:
        c = <const unsigned char*>memchr(s + p, 13, n - p)
        if c == NULL:
            return -1
        p = c - s
        if p + 1 < n and s[p + 1] == 10:
            return p
        p += 1
    return -1


cdef int _bulk_spans(bytes reply, Py_ssize_t count, Py_ssize_t* starts,
                     Py_ssize_t* ends) except -1:
    """redis_merge._bulks as spans: 0 when done; 1 when the input is off the usual path (the
    caller then asks the reference, which says exactly what is wrong)."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(reply)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(reply)
    cdef Py_ssize_t i, p, j, k, end
    i = _find_crlf(s, 0, n)
    if i < 1 or s[0] != 42:
        return 1
    for k in range(1, i):
        if not _isdigit(s[k]):
            return 1
    if _u32_of(reply, 1, i) != count:
        return 1
    p = i + 2
    for k in range(count):
        if p + 1 >= n or s[p] != 36:
            return 1
        j = _find_crlf(s, p, n)
        if j < 0:
            return 1
        if s[p + 1] == 45:
            end = j + 2
        else:
            if j == p + 1:
                return 1
            end = j + 4 + <Py_ssize_t>_u32_of(reply, p + 1, j)
        if end > n:
            return 1
        starts[k] = p
        ends[k] = end
        p = end
    return 0


cdef bytes _merge_mget(object ctx, object replies):
    """redis_merge._merge_mget from spans: `*<number of keys>` then each key's bulk. Inputs
    off the usual path (a context not from `split`, a reply not of bulks) go to the reference."""
    cdef list order = ctx if type(ctx) is list else list(ctx)
    cdef list reps = replies if type(replies) is list else list(replies)
    cdef Py_ssize_t nrep = len(reps), nkeys = len(order)
    # per reply: its number of keys, the index of its first key's span, the spans taken so far;
    # per key, in the order of the replies: the span of its bulk
    cdef Py_ssize_t* counts = <Py_ssize_t*>malloc(
        (3 * nrep + 2 * nkeys + 1) * sizeof(Py_ssize_t))
    if counts == NULL:
        raise MemoryError()
    cdef Py_ssize_t* first = counts + nrep
    cdef Py_ssize_t* taken = first + nrep
    cdef Py_ssize_t* starts = taken + nrep
    cdef Py_ssize_t* ends = starts + nkeys
    try:
        if (_count_keys(order, nrep, counts, taken)
                or _reply_spans(reps, nrep, counts, first, starts, ends)):
            return _redis_merge()._merge_mget(ctx, replies)
        return _join_bulks(order, reps, nkeys, first, taken, starts, ends)
    finally:
        free(counts)


cdef inline int _count_keys(list order, Py_ssize_t nrep, Py_ssize_t* counts,
                            Py_ssize_t* taken) except -1:
    """Per reply, the number of keys it answers (`taken` zeroed); 1 when `order` is not a
    context from `split` (a fragment number out of range)."""
    cdef Py_ssize_t f
    for f in range(nrep):
        counts[f] = 0
        taken[f] = 0
    for frag in order:
        f = frag
        if not 0 <= f < nrep:
            return 1
        counts[f] += 1
    return 0


cdef inline int _reply_spans(list reps, Py_ssize_t nrep, Py_ssize_t* counts, Py_ssize_t* first,
                             Py_ssize_t* starts, Py_ssize_t* ends) except -1:
    """Per reply, where its keys' spans start (`first`) and the spans of its bulks. 1 when a
    reply is off the usual path and the reference's `_bulks` did not raise for it (it raises
    MergeError, or whatever else, as in the reference)."""
    cdef Py_ssize_t f, base = 0
    cdef int bad
    for f in range(nrep):
        first[f] = base
        base += counts[f]
        obj = reps[f]
        bad = 1
        if PyBytes_Check(obj):
            bad = _bulk_spans(<bytes>obj, counts[f], starts + first[f], ends + first[f])
        if bad:
            _redis_merge()._bulks(obj, counts[f])
            return 1
    return 0


cdef inline bytes _join_bulks(list order, list reps, Py_ssize_t nkeys, Py_ssize_t* first,
                              Py_ssize_t* taken, Py_ssize_t* starts, Py_ssize_t* ends):
    """The merged reply in one allocation: `*<nkeys>`, then for each key in `order` the next
    bulk of its fragment's reply."""
    cdef Py_ssize_t size = 3 + _ndigits(nkeys), f, k
    cdef bytes out, reply
    cdef char* w
    for k in range(nkeys):
        size += ends[k] - starts[k]
    out = PyBytes_FromStringAndSize(NULL, size)
    w = PyBytes_AS_STRING(out)
    w[0] = 42  # '*'
    w = _put_int(w + 1, nkeys)
    w = _put(w, "\r\n", 2)
    for frag in order:
        f = frag
        k = first[f] + taken[f]
        taken[f] += 1
        reply = <bytes>reps[f]
        w = _put(w, PyBytes_AS_STRING(reply) + starts[k], ends[k] - starts[k])
    return out


def merge(req, ctx, replies):
    """Twin of redis_merge.merge: the reply to the client from the fragment replies."""
    cmd = req.cmd
    if cmd == b"mget":
        return _merge_mget(ctx, replies)
    if cmd == b"mset":
        for reply in replies:
            if reply[:1] not in (b"+", b":"):
                raise _MergeError(f"mset fragment answered {reply[:40]!r}")
        return b"+OK\r\n"
    return _redis_merge()._merge_sum(replies)
