# Included by _speedups.pyx after _speedups_redis.pxi (it uses its `_number`). Twin of
# keyshard.protocol.redis_resp.RedisReplyParser; each method mirrors the reference method of
# the same name. What differs: numbers are folded in C as they are scanned, and the parser
# keeps its array stack as a C array.

cdef Py_ssize_t _reply_item(const unsigned char* b, Py_ssize_t p, Py_ssize_t n,
                            Py_ssize_t* k) except -2:
    """The reference's `_item`: one reply token at `p`. Its end, with `k` > 0 for an array
    header of k elements and 0 for a complete element; or -1 when cut, `k` = bytes needed."""
    cdef unsigned char c = b[p]
    k[0] = 0
    if c == 36 or c == 42:  # '$' / '*'
        return _reply_sized(b, p, n, c, k)
    if c == 43 or c == 45 or c == 58:  # '+' / '-' / ':'
        return _reply_line(b, p, n, c, k)
    raise _Bad(f"bad reply type {bytes([c])!r}")


cdef inline Py_ssize_t _reply_sized(const unsigned char* b, Py_ssize_t p, Py_ssize_t n,
                                    unsigned char c, Py_ssize_t* k) except -2:
    """`_item` for a bulk or an array header (`c` is '$' or '*'), a null one included."""
    cdef uint32_t size
    cdef Py_ssize_t q, e
    if p + 1 < n and b[p + 1] == 45:  # '-': null bulk / null array
        q = _number(b, p + 1, n, False, &size)
        if q < 0:
            k[0] = n - p + 1
        return q
    q = _number(b, p, n, False, &size)
    if q < 0:
        k[0] = n - p + 1
        return -1
    if c == 42:
        k[0] = size
        return q
    e = q + size
    if e + 2 > n:
        if e < n and b[e] != 13:
            raise _Bad("bulk without CRLF")
        k[0] = (e + 1 if e + 1 > n + 1 else n + 1) - p
        return -1
    if b[e] != 13 or b[e + 1] != 10:
        raise _Bad("bulk without CRLF")
    return e + 2


cdef inline Py_ssize_t _reply_line(const unsigned char* b, Py_ssize_t p, Py_ssize_t n,
                                   unsigned char c, Py_ssize_t* k) except -2:
    """`_item` for a status, error or integer line (`c` is '+', '-' or ':')."""
    cdef const unsigned char* cr = <const unsigned char*>memchr(b + p + 1, 13, n - p - 1)
    cdef Py_ssize_t i = cr - b if cr != NULL else -1
    cdef Py_ssize_t j, stop
    if c == 58:  # nutcracker accepts digits and '-' in any order, even none at all
        stop = i if i >= 0 else n
        for j in range(p + 1, stop):
            if not _isdigit(b[j]) and b[j] != 45:
                raise _Bad("bad integer")
    if i < 0 or i + 1 >= n:
        k[0] = n - p + 1
        return -1
    if b[i + 1] != 10:
        raise _Bad("CR without LF")
    return i + 2


cdef class RedisReplyParser:
    """Frames server bytes into replies (twin of protocol.redis_resp.RedisReplyParser)."""

    cdef public object error
    cdef list _chunks
    cdef Py_ssize_t _have
    cdef Py_ssize_t _need
    cdef list _parts
    # elements left per open array (the reference's `_stack`); _depth > 0 between two feeds
    # means a reply was cut inside an array
    cdef uint32_t* _stack
    cdef Py_ssize_t _depth
    cdef Py_ssize_t _cap

    def __cinit__(self):
        self._stack = NULL
        self._depth = 0
        self._cap = 0

    def __dealloc__(self):
        free(self._stack)

    def __init__(self):
        self.error = None
        self._chunks = []
        self._have = 0
        self._need = 0
        self._parts = []

    cpdef feed(self, data):
        """Parse `data` (any cut); return the replies it completes."""
        cdef bytes buf
        cdef list out
        if self.error is not None or not data:
            return []
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(self._chunks)
            self._chunks = []
        else:
            buf = _as_bytes(data)
        out = []
        try:
            self._parse(buf, PyBytes_GET_SIZE(buf), out)
        except _Bad as exc:
            self._fail(str(exc))
        except Exception as exc:  # a bug of ours must not kill the event loop
            self._fail(f"internal error: {exc!r}")
        return out

    cdef void _fail(self, str reason) noexcept:
        self.error = reason
        self._chunks = []
        self._parts = []
        self._depth = 0

    cdef int _parse(self, bytes buf, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t p = 0
        cdef list parts
        if self._depth > 0:
            parts = self._parts
            self._parts = []
            p = self._frame(buf, 0, n, 0, parts, out)
        while 0 <= p < n:
            p = self._frame(buf, p, n, p, None, out)
        return 0

    cdef int _push(self, uint32_t k) except -1:
        cdef Py_ssize_t cap
        cdef uint32_t* grown
        if self._depth == self._cap:
            cap = self._cap * 2 if self._cap else 16
            grown = <uint32_t*>realloc(self._stack, cap * sizeof(uint32_t))
            if grown == NULL:
                raise MemoryError()
            self._stack = grown
            self._cap = cap
        self._stack[self._depth] = k
        self._depth += 1
        return 0

    cdef Py_ssize_t _frame(self, bytes buf, Py_ssize_t p, Py_ssize_t n, Py_ssize_t start,
                           list parts, list out) except -2:
        """Parse one whole reply (resuming inside the stack); its end, or -1 if cut."""
        cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t end, k
        while True:
            end = _reply_item(b, p, n, &k)
            if end < 0:
                return self._save(buf, start, p, n, k, parts)
            p = end
            if k > 0:
                self._push(<uint32_t>k)
            else:
                while self._depth > 0:
                    self._stack[self._depth - 1] -= 1
                    if self._stack[self._depth - 1]:
                        break
                    self._depth -= 1
                if self._depth == 0:
                    if parts is None:
                        PyList_Append(out, _slice(buf, start, p))
                    else:
                        parts.append(_slice(buf, start, p))
                        PyList_Append(out, b"".join(parts))
                    return p
            if p >= n:
                return self._save(buf, start, p, n, 1, parts)

    cdef Py_ssize_t _save(self, bytes buf, Py_ssize_t start, Py_ssize_t p, Py_ssize_t n,
                          Py_ssize_t need, list parts) except -2:
        """Cut at `p`: keep the parsed part of the reply, wait for `need` more bytes."""
        if self._depth > 0:
            if parts is None:
                parts = []
            if p > start:
                parts.append(_slice(buf, start, p))
            self._parts = parts
            self._chunks = [_slice(buf, p, n)] if p < n else []
        else:  # cut inside a top-level element: it is re-parsed whole
            self._chunks = [_slice(buf, start, n)]
            p = start
        self._have = n - p
        self._need = need
        return -1
