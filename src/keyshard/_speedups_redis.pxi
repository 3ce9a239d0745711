# Included by _speedups.pyx. Twin of keyshard.protocol.redis.RedisRequestParser (the reply
# parser's twin is in _speedups_resp.pxi). Each method mirrors the reference method of the
# same name (same arguments, same checks in the same order, same error text); read them side
# by side (`_elements` makes its per-element checks in `_element`). What differs: numbers are
# folded in C as they are scanned, and the command name is looked up in a C hash table.

from keyshard.protocol import redis_commands as _rc

cdef enum:
    MAX_HEADER_DIGITS = 32
    NSPECS_MAX = 512
    LOOKUP_SIZE = 2048  # power of two, > 2 * NSPECS_MAX
    NAME_BUF = 64

cdef Py_ssize_t DEFAULT_MAX_KEY_LEN = 16384 - 48  # protocol.redis.DEFAULT_MAX_KEY_LEN


cdef struct Spec:
    PyObject* name  # the lower-case name (Request.cmd); a reference is kept in _spec_names
    const unsigned char* cname
    Py_ssize_t nlen
    int cls
    Py_ssize_t key_index
    int key_elements
    int kind
    bint local
    bint supported
    Py_ssize_t min_narg
    Py_ssize_t max_narg
    Py_ssize_t split_narg


cdef Spec _specs[NSPECS_MAX]
cdef int _nspecs = 0
cdef short _spec_slot[LOOKUP_SIZE]  # index + 1 into _specs; 0: empty
cdef list _spec_names = []
cdef Py_ssize_t _max_name_len = _rc.MAX_NAME_LEN
cdef object _PLACEHOLDER = _rc.PLACEHOLDER
cdef int _ARGEVAL = _rc.ARGEVAL
cdef int _ARGKVX = _rc.ARGKVX
cdef int _KEYS_ALL = _rc.KEYS_ALL
cdef int _KIND_SPLIT = _base.KIND_SPLIT


cdef inline uint32_t _name_hash(const unsigned char* s, Py_ssize_t n,
                                unsigned char* low) noexcept nogil:
    """FNV-1a of the ASCII-lower-cased name, which is copied into `low`."""
    cdef uint32_t h = <uint32_t>2166136261
    cdef unsigned char c
    cdef Py_ssize_t i
    for i in range(n):
        c = s[i]
        if 65 <= c <= 90:
            c += 32
        low[i] = c
        h = (h ^ c) * <uint32_t>16777619
    return h


cdef int _build_specs() except -1:
    global _nspecs
    cdef unsigned char low[NAME_BUF]
    cdef uint32_t j
    cdef Spec* s
    if len(_rc.COMMANDS) > NSPECS_MAX or _max_name_len >= NAME_BUF:
        raise RuntimeError("redis command table too large for the compiled framer")
    for name, spec in _rc.COMMANDS.items():
        s = &_specs[_nspecs]
        _spec_names.append(name)
        s.name = <PyObject*>name
        s.cname = <const unsigned char*>PyBytes_AS_STRING(name)
        s.nlen = len(name)
        s.cls = spec.cls
        s.key_index = spec.key_index
        s.key_elements = spec.key_elements
        s.kind = spec.kind
        s.local = spec.local
        s.supported = spec.supported
        s.min_narg = spec.min_narg
        s.max_narg = spec.max_narg
        s.split_narg = spec.split_narg
        j = _name_hash(s.cname, s.nlen, low) & (LOOKUP_SIZE - 1)
        while _spec_slot[j]:
            j = (j + 1) & (LOOKUP_SIZE - 1)
        _nspecs += 1
        _spec_slot[j] = _nspecs
    return 0


_build_specs()


cdef inline Spec* _find_spec(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """`LOOKUP.get(name) or LOOKUP.get(name.lower())`: ASCII case-insensitive."""
    cdef unsigned char low[NAME_BUF]
    cdef uint32_t j
    cdef Spec* spec
    if n <= 0 or n > _max_name_len:
        return NULL
    j = _name_hash(s, n, low) & (LOOKUP_SIZE - 1)
    while _spec_slot[j]:
        spec = &_specs[_spec_slot[j] - 1]
        if spec.nlen == n and memcmp(spec.cname, low, n) == 0:
            return spec
        j = (j + 1) & (LOOKUP_SIZE - 1)
    return NULL


cdef inline bint _plan(Spec* spec, Py_ssize_t narg, int* kind, bint* want_args) noexcept nogil:
    """CommandSpec.plan: False if `narg` is refused; else the kind and whether args are kept."""
    if not spec.supported or narg < spec.min_narg or narg > spec.max_narg:
        return False
    if spec.cls == _ARGKVX and narg % 2 == 0:
        return False
    kind[0] = _KIND_SPLIT if narg >= spec.split_narg else spec.kind
    want_args[0] = spec.local or kind[0] == _KIND_SPLIT
    return True


cdef Py_ssize_t _number(const unsigned char* b, Py_ssize_t p, Py_ssize_t n, bint allow_empty,
                        uint32_t* value) except -2:
    """The reference's `_number`: the `*`/`$` header at `p`, its value modulo 2**32 in
    `value`; the position after its CRLF, or -1 when cut."""
    cdef Py_ssize_t lim = p + 2 + MAX_HEADER_DIGITS
    cdef Py_ssize_t i = p + 1
    cdef uint32_t v = 0
    cdef bint bad = False
    cdef unsigned char c
    value[0] = 0
    if lim > n:
        lim = n
    while i < lim:
        c = b[i]
        if c == 13:
            break
        if _isdigit(c):
            v = v * <uint32_t>10 + (c - 48)
        else:
            bad = True
        i += 1
    if i >= lim:  # no CR where the reference looks for one
        return _number_cut(b, p, n)
    if i > p + 1:
        if bad:
            raise _Bad("bad length")
    elif not allow_empty:
        raise _Bad("bad length")
    if i + 1 >= n:
        return -1
    if b[i + 1] != 10:
        raise _Bad("missing LF")
    value[0] = v
    return i + 2


cdef Py_ssize_t _number_cut(const unsigned char* b, Py_ssize_t p, Py_ssize_t n) except -2:
    """A header with no CR within reach: garbage or too long raises, else it is cut (-1)."""
    cdef Py_ssize_t j
    cdef Py_ssize_t end = p + 1 + MAX_HEADER_DIGITS
    if end > n:
        end = n
    for j in range(p + 1, end):
        if not _isdigit(b[j]):
            raise _Bad("bad length")
    if n - p - 1 > MAX_HEADER_DIGITS:
        raise _Bad("length too long")
    return -1


cdef int _numkeys(const unsigned char* b, Py_ssize_t q, Py_ssize_t e) except -1:
    """EVAL/EVALSHA numkeys: digits only, not 0 once wrapped to 32 bits."""
    cdef uint32_t v = 0
    cdef Py_ssize_t i
    if e <= q:
        raise _Bad("bad numkeys")
    for i in range(q, e):
        if not _isdigit(b[i]):
            raise _Bad("bad numkeys")
        v = v * <uint32_t>10 + (b[i] - 48)
    if v == 0:
        raise _Bad("bad numkeys")
    return 0


cdef inline bint _fast_head(const unsigned char* b, Py_ssize_t p, Py_ssize_t n) noexcept nogil:
    """`*<1-9>\\r\\n$<1-9>\\r\\n` at p (the name's bytes and CRLF are checked by the caller)."""
    return (p + 8 < n and b[p] == 42 and <unsigned char>(b[p + 1] - 49) < 9
            and b[p + 2] == 13 and b[p + 3] == 10 and b[p + 4] == 36
            and <unsigned char>(b[p + 5] - 49) < 9 and b[p + 6] == 13 and b[p + 7] == 10)


cdef inline Py_ssize_t _element(const unsigned char* b, Py_ssize_t p, Py_ssize_t n, bint iskey,
                                Py_ssize_t maxk, Spec* spec, Py_ssize_t* q_out,
                                Py_ssize_t* need) except -2:
    """The `$<size>\\r\\n<bytes>\\r\\n` element at `p` (< n), with the reference `_elements`'s
    checks: the end of its bytes (their CR), their start in `q_out`; or -1 when it is cut,
    with the bytes to wait for from `p` in `need`."""
    cdef uint32_t size
    cdef Py_ssize_t q, e
    if b[p] != 36:
        raise _Bad("not a bulk string")
    q = _number(b, p, n, iskey, &size)
    if q < 0:
        need[0] = n - p + 1
        return -1
    if iskey and <Py_ssize_t>size >= maxk:
        raise _Bad(f"key too long for {(<bytes>spec.name).decode()}")
    e = q + size
    if e + 2 > n:
        if e < n and b[e] != 13:
            raise _Bad("missing CRLF")
        # wait up to the CR (it is checked as soon as it is there), then the LF
        need[0] = (e + 1 if e + 1 > n + 1 else n + 1) - p
        return -1
    if b[e] != 13 or b[e + 1] != 10:
        raise _Bad("missing CRLF")
    q_out[0] = q
    return e


cdef class RedisRequestParser:
    """Frames client bytes into `Request`s (twin of protocol.redis.RedisRequestParser)."""

    cdef public object error
    cdef Py_ssize_t _maxk
    cdef list _chunks  # unparsed bytes, joined once `_need` of them are here
    cdef Py_ssize_t _have
    cdef Py_ssize_t _need
    cdef list _parts  # bytes of the request in progress, already parsed
    # the request in progress, past its name (the reference's `_st`; _spec NULL: none)
    cdef Spec* _spec
    cdef Py_ssize_t _narg
    cdef Py_ssize_t _idx
    cdef object _key
    cdef object _args

    def __init__(self, max_key_len=DEFAULT_MAX_KEY_LEN):
        if max_key_len < 1:
            raise ValueError("max_key_len must be positive")
        self.error = None
        self._maxk = max_key_len
        self._chunks = []
        self._have = 0
        self._need = 0
        self._parts = []
        self._spec = NULL

    cpdef feed(self, data):
        """Parse `data` (any cut); return the requests it completes."""
        cdef bytes buf
        cdef list out
        cdef Py_ssize_t n, p
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
            n = PyBytes_GET_SIZE(buf)
            p = 0
            if self._spec != NULL:
                p = self._resume(buf, n, out)
            if 0 <= p < n:
                self._run(buf, p, n, out)
        except _Bad as exc:
            self._fail(str(exc))
        except Exception as exc:  # a bug of ours must not kill the event loop
            self._fail(f"internal error: {exc!r}")
        return out

    cdef void _fail(self, str reason) noexcept:
        self.error = reason
        self._chunks = []
        self._parts = []
        self._spec = NULL
        self._key = None
        self._args = None

    cdef void _wait(self, bytes buf, Py_ssize_t start, Py_ssize_t n, Py_ssize_t need) noexcept:
        """The request at `start` is cut before its name ends: keep it whole."""
        self._chunks = [_slice(buf, start, n)]
        self._have = n - start
        self._need = need

    cdef Py_ssize_t _run(self, bytes buf, Py_ssize_t p, Py_ssize_t n, list out) except -2:
        """Parse requests from `p` to the end of `buf`; -1 once one is cut."""
        cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t start, e, narg = 0
        cdef Spec* spec
        cdef int kind = 0
        cdef bint want = False
        while p < n:
            start = p
            spec = NULL
            if _fast_head(b, p, n):  # hot path: one-digit narg and name length
                e = p + 8 + (b[p + 5] - 48)
                if e + 1 < n and b[e] == 13 and b[e + 1] == 10:
                    narg = b[p + 1] - 48
                    spec = _find_spec(b + p + 8, e - p - 8)
                    if spec != NULL and _plan(spec, narg, &kind, &want):
                        p = e + 2
                    else:
                        spec = NULL  # the general path says why
            if spec == NULL:
                p = self._head(buf, b, start, n, &spec, &narg, &kind, &want)
                if p < 0:
                    return -1
            p = self._elements(buf, p, n, start, spec, narg, 1, _PLACEHOLDER,
                               [] if want else None, None, out)
            if p < 0:
                return -1
        return p

    cdef Py_ssize_t _head(self, bytes buf, const unsigned char* b, Py_ssize_t start,
                          Py_ssize_t n, Spec** spec_out, Py_ssize_t* narg_out, int* kind,
                          bint* want) except -2:
        """`*<narg>` and the command name: the end of the name, or -1 when cut."""
        cdef uint32_t narg, size
        cdef Py_ssize_t p, q, e
        cdef Spec* spec
        if b[start] != 42:  # '*'
            raise _Bad("not an array (inline command?)")
        p = _number(b, start, n, False, &narg)
        if p >= 0 and narg == 0:
            raise _Bad("bad narg")
        if p < 0 or p >= n:
            self._wait(buf, start, n, n - start + 1)
            return -1
        if b[p] != 36:  # '$'
            raise _Bad("not a bulk string")
        q = _number(b, p, n, False, &size)
        if q >= 0 and (size == 0 or size > <uint32_t>_max_name_len):
            raise _Bad("unsupported command (name length)")
        e = q + size
        if q < 0 or e + 2 > n:
            if 0 <= q and e < n and b[e] != 13:
                raise _Bad("missing CRLF")
            self._wait(buf, start, n,
                       n - start + 1 if q < 0 else (e + 1 if e + 1 > n + 1 else n + 1) - start)
            return -1
        if b[e] != 13 or b[e + 1] != 10:
            raise _Bad("missing CRLF")
        spec = _find_spec(b + q, e - q)
        if spec == NULL or not spec.supported:
            raise _Bad(f"unsupported command {buf[q:e]!r}")
        if not _plan(spec, narg, kind, want):
            raise _Bad(f"wrong number of arguments for {(<bytes>spec.name).decode()}")
        spec_out[0] = spec
        narg_out[0] = narg
        return e + 2

    cdef Py_ssize_t _resume(self, bytes buf, Py_ssize_t n, list out) except -2:
        spec = self._spec
        parts = self._parts
        key = self._key
        args = self._args
        self._spec = NULL
        self._parts = []
        self._key = None
        self._args = None
        return self._elements(buf, 0, n, 0, spec, self._narg, self._idx, key, args, parts, out)

    cdef Py_ssize_t _elements(self, bytes buf, Py_ssize_t p, Py_ssize_t n, Py_ssize_t start,
                              Spec* spec, Py_ssize_t narg, Py_ssize_t idx, object key,
                              object args, list parts, list out) except -2:
        """Parse elements `idx`..narg-1 at `p`; append the request; its end, or -1."""
        cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t keyidx = spec.key_index
        cdef int mode = spec.key_elements
        cdef Py_ssize_t q, e, need = 0
        cdef bint iskey
        while idx < narg:
            if p >= n:
                return self._save(buf, start, p, n, 1, spec, narg, idx, key, args, parts)
            iskey = idx == keyidx or mode == _KEYS_ALL or (mode > _KEYS_ALL and idx & 1)
            e = _element(b, p, n, iskey, self._maxk, spec, &q, &need)
            if e < 0:
                return self._save(buf, start, p, n, need, spec, narg, idx, key, args, parts)
            if idx == keyidx:
                key = _slice(buf, q, e)
                if args is not None:
                    PyList_Append(args, key)
            else:
                if idx == 2 and spec.cls == _ARGEVAL:
                    _numkeys(b, q, e)
                if args is not None:
                    PyList_Append(args, _slice(buf, q, e))
            p = e + 2
            idx += 1
        if parts is None:
            raw = _slice(buf, start, p)
        else:
            parts.append(_slice(buf, start, p))
            raw = b"".join(parts)
        PyList_Append(out, _new_request(
            raw, _KIND_SPLIT if narg >= spec.split_narg else spec.kind, <object>spec.name,
            key, args, False))
        return p

    cdef Py_ssize_t _save(self, bytes buf, Py_ssize_t start, Py_ssize_t h, Py_ssize_t n,
                          Py_ssize_t need, Spec* spec, Py_ssize_t narg, Py_ssize_t idx,
                          object key, object args, list parts) except -2:
        """Cut inside element `idx` (starting at `h`): keep what is parsed, wait for more."""
        if parts is None:
            parts = []
        if h > start:
            parts.append(_slice(buf, start, h))
        self._parts = parts
        self._spec = spec
        self._narg = narg
        self._idx = idx
        self._key = key
        self._args = args
        self._chunks = [_slice(buf, h, n)] if h < n else []
        self._have = n - h
        self._need = need
        return -1
