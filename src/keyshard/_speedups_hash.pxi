# Included by _speedups.pyx. Twins of keyshard.hashing (all but md5, which is hashlib's C
# already) and of the two hashing routers of keyshard.pool (`route(key) -> server index`).
# The arithmetic is the reference's, on uint32_t; `_sx` is the reference's `_SX` (a key byte
# widened through a signed char, hashing.py Rule 2).

# hash_fn_t (a C hash function) is declared in _speedups.pxd

cdef uint32_t _CRC16[256]
cdef uint32_t _CRC32[256]


cdef int _build_crc_tables() except -1:
    cdef uint32_t c
    cdef int i, k
    for i in range(256):
        c = <uint32_t>i << 8
        for k in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        _CRC16[i] = c & 0xFFFF
        c = <uint32_t>i
        for k in range(8):
            c = (c >> 1) ^ <uint32_t>0xEDB88320 if c & 1 else c >> 1
        _CRC32[i] = c
    return 0


_build_crc_tables()


cdef inline uint32_t _sx(unsigned char c) noexcept nogil:
    return <uint32_t><int32_t>(<signed char>c)


cdef inline uint32_t _le32(const unsigned char* s) noexcept nogil:
    return s[0] | (<uint32_t>s[1] << 8) | (<uint32_t>s[2] << 16) | (<uint32_t>s[3] << 24)


cdef inline uint32_t _rot(uint32_t x, int k) noexcept nogil:
    return (x << k) | (x >> (32 - k))


cdef uint32_t _one_at_a_time(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t v = 0
    cdef Py_ssize_t i
    for i in range(n):
        v += _sx(s[i])
        v += v << 10
        v ^= v >> 6
    v += v << 3
    v ^= v >> 11
    return v + (v << 15)


cdef uint32_t _crc16(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t crc = 0
    cdef Py_ssize_t i
    for i in range(n):
        crc = (crc << 8) ^ _CRC16[((crc >> 8) ^ s[i]) & 0xFF]
    return crc


cdef uint32_t _crc32a(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t crc = <uint32_t>0xFFFFFFFF
    cdef Py_ssize_t i
    for i in range(n):
        crc = _CRC32[(crc ^ s[i]) & 0xFF] ^ (crc >> 8)
    return crc ^ <uint32_t>0xFFFFFFFF


cdef uint32_t _crc32(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    return (_crc32a(s, n) >> 16) & 0x7FFF


cdef uint32_t _fnv1_64(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t h = <uint32_t>0x84222325
    cdef Py_ssize_t i
    for i in range(n):
        h = (h * 0x1B3) ^ _sx(s[i])
    return h


cdef uint32_t _fnv1a_64(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t h = <uint32_t>0x84222325
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ _sx(s[i])) * 0x1B3
    return h


cdef uint32_t _fnv1_32(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t h = <uint32_t>0x811C9DC5
    cdef Py_ssize_t i
    for i in range(n):
        h = (h * 0x01000193) ^ _sx(s[i])
    return h


cdef uint32_t _fnv1a_32(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t h = <uint32_t>0x811C9DC5
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ _sx(s[i])) * 0x01000193
    return h


cdef uint32_t _hsieh(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t h = 0, tmp
    cdef Py_ssize_t i, end = n & ~3
    if n == 0:
        return 0
    for i in range(0, end, 4):
        h += s[i] | (<uint32_t>s[i + 1] << 8)
        tmp = ((s[i + 2] | (<uint32_t>s[i + 3] << 8)) << 11) ^ h
        h = (h << 16) ^ tmp
        h += h >> 11
    i = end
    if n - end == 3:
        h += s[i] | (<uint32_t>s[i + 1] << 8)
        h ^= h << 16
        h ^= _sx(s[i + 2]) << 18
        h += h >> 11
    elif n - end == 2:
        h += s[i] | (<uint32_t>s[i + 1] << 8)
        h ^= h << 11
        h += h >> 17
    elif n - end == 1:
        h += s[i]
        h ^= h << 10
        h += h >> 1
    h ^= h << 3
    h += h >> 5
    h ^= h << 4
    h += h >> 17
    h ^= h << 25
    return h + (h >> 6)


cdef uint32_t _murmur(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t m = 0x5BD1E995
    cdef uint32_t h = (<uint32_t>0xDEADBEEF * <uint32_t>n) ^ <uint32_t>n
    cdef uint32_t k, t = 0
    cdef Py_ssize_t i, tail = n & 3, nblocks = n >> 2
    for i in range(nblocks):
        k = _le32(s + 4 * i) * m
        k ^= k >> 24
        k *= m
        h = (h * m) ^ k
    if tail:
        for i in range(tail):
            t |= <uint32_t>s[n - tail + i] << (8 * i)
        h ^= t
        h *= m
    h ^= h >> 13
    h *= m
    return h ^ (h >> 15)


cdef uint32_t _jenkins(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t a, b, c
    cdef unsigned char last[12]
    cdef Py_ssize_t i, nfull
    a = b = c = <uint32_t>0xDEADBEEF + <uint32_t>n + 13
    if n == 0:
        return c
    nfull = (n - 1) // 12  # every block but the last (1..12 bytes, zero-padded) is mixed
    for i in range(nfull):
        a += _le32(s + 12 * i)
        b += _le32(s + 12 * i + 4)
        c += _le32(s + 12 * i + 8)
        a -= c; a ^= _rot(c, 4); c += b
        b -= a; b ^= _rot(a, 6); a += c
        c -= b; c ^= _rot(b, 8); b += a
        a -= c; a ^= _rot(c, 16); c += b
        b -= a; b ^= _rot(a, 19); a += c
        c -= b; c ^= _rot(b, 4); b += a
    for i in range(12):
        last[i] = s[12 * nfull + i] if 12 * nfull + i < n else 0
    a += _le32(last)
    b += _le32(last + 4)
    c += _le32(last + 8)
    c ^= b; c -= _rot(b, 14)
    a ^= c; a -= _rot(c, 11)
    b ^= a; b -= _rot(a, 25)
    c ^= b; c -= _rot(b, 16)
    a ^= c; a -= _rot(c, 4)
    b ^= a; b -= _rot(a, 14)
    c ^= b; c -= _rot(b, 24)
    return c


cdef inline uint32_t _apply(hash_fn_t fn, object key) except? <uint32_t>0xFFFFFFFF:
    cdef bytes k = _as_bytes(key)
    return fn(<const unsigned char*>PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))


def one_at_a_time(key):
    """Jenkins one-at-a-time, with sign-extended bytes (twin of hashing.one_at_a_time)."""
    return _apply(_one_at_a_time, key)


def crc16(key):
    """Twin of hashing.crc16."""
    return _apply(_crc16, key)


def crc32(key):
    """Twin of hashing.crc32."""
    return _apply(_crc32, key)


def crc32a(key):
    """Twin of hashing.crc32a."""
    return _apply(_crc32a, key)


def fnv1_64(key):
    """Twin of hashing.fnv1_64."""
    return _apply(_fnv1_64, key)


def fnv1a_64(key):
    """Twin of hashing.fnv1a_64 (the default hash)."""
    return _apply(_fnv1a_64, key)


def fnv1_32(key):
    """Twin of hashing.fnv1_32."""
    return _apply(_fnv1_32, key)


def fnv1a_32(key):
    """Twin of hashing.fnv1a_32."""
    return _apply(_fnv1a_32, key)


def hsieh(key):
    """Twin of hashing.hsieh."""
    return _apply(_hsieh, key)


def murmur(key):
    """Twin of hashing.murmur."""
    return _apply(_murmur, key)


def jenkins(key):
    """Twin of hashing.jenkins."""
    return _apply(_jenkins, key)


# the twins that beat the reference (crc32 and crc32a are zlib's C already: not exported)
HASHES = {
    "one_at_a_time": one_at_a_time, "crc16": crc16, "fnv1_64": fnv1_64, "fnv1a_64": fnv1a_64,
    "fnv1_32": fnv1_32, "fnv1a_32": fnv1a_32, "hsieh": hsieh, "murmur": murmur,
    "jenkins": jenkins,
}

# every hash with a C loop, in hashing.HASHES order but md5
cdef tuple _C_HASH_NAMES = ("one_at_a_time", "crc16", "crc32", "crc32a", "fnv1_64", "fnv1a_64",
                            "fnv1_32", "fnv1a_32", "hsieh", "murmur", "jenkins")
cdef hash_fn_t _C_HASH_FNS[11]
_C_HASH_FNS[0] = _one_at_a_time
_C_HASH_FNS[1] = _crc16
_C_HASH_FNS[2] = _crc32
_C_HASH_FNS[3] = _crc32a
_C_HASH_FNS[4] = _fnv1_64
_C_HASH_FNS[5] = _fnv1a_64
_C_HASH_FNS[6] = _fnv1_32
_C_HASH_FNS[7] = _fnv1a_32
_C_HASH_FNS[8] = _hsieh
_C_HASH_FNS[9] = _murmur
_C_HASH_FNS[10] = _jenkins
cdef dict _C_HASH_INDEX = None  # function object (twin or reference) -> its C loop


cdef dict _c_hash_index():
    """Both the twins and the reference functions of keyshard.hashing map to the C loop."""
    global _C_HASH_INDEX
    if _C_HASH_INDEX is None:
        from keyshard import hashing
        twins = {"crc32": crc32, "crc32a": crc32a, **HASHES}
        index = {}
        for i, name in enumerate(_C_HASH_NAMES):
            index[twins[name]] = i
            index[hashing.PY_HASHES[name]] = i
            index[hashing.HASHES[name]] = i
        _C_HASH_INDEX = index
    return _C_HASH_INDEX


# --------------------------------------------------------------------------------------------
# Routers: pool._ketama_router / _modula_router as one C call per key

cdef class _Router:
    """A key -> server index map over a continuum; `route` is what the pool calls (its fields
    are declared in `_speedups.pxd`, so `_netfast` calls `route` as a C method)."""

    def __cinit__(self):
        self.values = NULL
        self.owners = NULL
        self.slots = NULL
        self.buckets = NULL

    def __dealloc__(self):
        free(self.buckets)
        free(self.values)
        free(self.owners)
        free(self.slots)

    cdef int _set_hash(self, object hash_fn, object tag) except -1:
        i = _c_hash_index().get(hash_fn)
        self.cfn = _C_HASH_FNS[<int>i] if i is not None else NULL
        self.pyfn = hash_fn
        # hash_tag_key: a one-byte tag always leaves the whole key (its end is found at once)
        self.tagged = tag is not None and len(tag) >= 2
        if self.tagged:
            self.tag0 = tag[0]
            self.tag1 = tag[1]
        return 0

    cdef Py_ssize_t _hash(self, object key) except -1:
        """hash_fn(hash_tag_key(key, tag)), 0 for an empty key (pool._key_hasher)."""
        cdef bytes k = _as_bytes(key)
        cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(k)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(k)
        cdef const unsigned char* a
        cdef const unsigned char* z
        if self.tagged and n:
            a = <const unsigned char*>memchr(s, self.tag0, n)
            if a != NULL:
                z = <const unsigned char*>memchr(a + 1, self.tag1, n - (a + 1 - s))
                if z != NULL and z - a > 1:
                    n = z - a - 1
                    s = a + 1
        if n == 0:
            return 0
        if self.cfn != NULL:
            return self.cfn(s, n)
        if s != <const unsigned char*>PyBytes_AS_STRING(k) or n != PyBytes_GET_SIZE(k):
            k = PyBytes_FromStringAndSize(<const char*>s, n)
        return <uint32_t>self.pyfn(k)

    cpdef Py_ssize_t route(self, object key) except? -2:
        """The index of the server for `key`."""
        cdef Py_ssize_t h = self._hash(key)
        cdef Py_ssize_t lo = 0, hi, mid
        if self.ketama:  # bisect_left(values, h), then owners[...]
            # the bucket of h bounds the answer to [lo, hi]: usually lo == hi, a few apart at
            # most (at least four buckets per point); a bisect if points ever crowd one bucket
            lo = self.buckets[<uint32_t>h >> self.shift]
            hi = self.buckets[(<uint32_t>h >> self.shift) + 1]
            if hi - lo > 8:
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if self.values[mid] < h:
                        lo = mid + 1
                    else:
                        hi = mid
            while lo < hi and self.values[lo] < h:
                lo += 1
            return self.owners[lo]
        if self.nslots == 0:
            raise ZeroDivisionError("integer modulo by zero")
        return self.slots[h % self.nslots]


cdef _Router _router_of(object route):
    """The `_Router` whose bound `route` this is (its C method is then called directly), or
    None for any other callable."""
    owner = getattr(route, "__self__", None)
    return <_Router>owner if type(owner) is _Router else None


cdef class PoolFields:
    """Twin of `keyshard.pool.PoolFields`, the base of `ServerPool` (fields: _speedups.pxd):
    `keyshard._netfast` reads the router and the next rebuild time as C struct members."""


cdef int* _int_array(object items) except NULL:
    cdef Py_ssize_t i, n = len(items)
    cdef int* out = <int*>realloc(NULL, (n if n else 1) * sizeof(int))
    if out == NULL:
        raise MemoryError()
    for i in range(n):
        out[i] = items[i]
    return out


def ketama_router(cont, hash_fn, tag):
    """Twin of pool._ketama_router: `route(key)` over a KetamaContinuum."""
    cdef _Router r = _Router()
    cdef Py_ssize_t i
    values = cont.values
    r.ketama = True
    r._set_hash(hash_fn, tag)
    r.npoints = len(values)
    r.values = <uint32_t*>realloc(NULL, (r.npoints + 1) * sizeof(uint32_t))
    if r.values == NULL:
        raise MemoryError()
    for i in range(r.npoints):
        r.values[i] = values[i]
    r.owners = _int_array(cont.owners)
    if len(cont.owners) != r.npoints + 1:
        raise ValueError("owners must have one entry more than values")
    _fill_buckets(r)
    return r.route


cdef int _fill_buckets(_Router r) except -1:
    """Split the 32-bit hash space into 2**bits equal buckets, at least four per point, and
    note for each bucket edge how many points lie below it: `route` then looks at the few
    points of one bucket instead of bisecting all of them (the answers are the same)."""
    cdef int bits = min(24, max(1, (4 * r.npoints).bit_length()))
    cdef Py_ssize_t nbuckets = (<Py_ssize_t>1) << bits, b, i = 0
    cdef uint64_t edge
    r.shift = 32 - bits
    r.buckets = <uint32_t*>realloc(NULL, (nbuckets + 1) * sizeof(uint32_t))
    if r.buckets == NULL:
        raise MemoryError()
    for b in range(nbuckets + 1):
        edge = (<uint64_t>b) << r.shift
        while i < r.npoints and r.values[i] < edge:
            i += 1
        r.buckets[b] = <uint32_t>i
    return 0


def modula_router(cont, hash_fn, tag):
    """Twin of pool._modula_router: `route(key)` over a ModulaContinuum."""
    cdef _Router r = _Router()
    r.ketama = False
    r._set_hash(hash_fn, tag)
    r.nslots = len(cont.slots)
    r.slots = _int_array(cont.slots)
    return r.route
