# Declarations shared with keyshard._netfast (cimported there).

from libc.stdint cimport uint32_t

ctypedef uint32_t (*hash_fn_t)(const unsigned char* s, Py_ssize_t n) noexcept nogil

cdef class Request:
    cdef public object raw, kind, cmd, key, args, noreply
    cdef public object reply, owner, ctx, pending, server
    cdef public double deadline, start


cdef Request _new_request(object raw, object kind, object cmd, object key, object args,
                          object noreply)


cdef class _Router:
    cdef uint32_t* values  # ketama: sorted point values
    cdef int* owners  # ketama: owner of each point, plus a copy of the first (the wrap)
    cdef Py_ssize_t npoints
    cdef uint32_t* buckets  # ketama: per bucket of hashes, the first point at or above it
    cdef int shift  # ketama: a hash's bucket is hash >> shift
    cdef int* slots  # modula
    cdef Py_ssize_t nslots
    cdef bint ketama
    cdef hash_fn_t cfn  # NULL: call `pyfn`
    cdef object pyfn
    cdef bint tagged
    cdef unsigned char tag0
    cdef unsigned char tag1

    cdef int _set_hash(self, object hash_fn, object tag) except -1
    cdef Py_ssize_t _hash(self, object key) except -1
    cpdef Py_ssize_t route(self, object key) except? -2


cdef _Router _router_of(object route)


cdef class PoolFields:
    cdef public double _next_rebuild
    cdef public object _router, _group


cdef object parser_feed(object parser, object data)
cdef object parser_error(object parser)
