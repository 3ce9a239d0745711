# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Compiled twins of keyshard's hot loops (optional; built by `pip install` when a compiler
is present).

This module owns nothing of its own: every class and function here is a twin of pure-Python
code that stays the reference and the fallback. The modules that have a twin import it at
their end, unless `KEYSHARD_NO_EXTENSIONS=1` (see `keyshard.speedups_enabled`).

    twin                                 reference
    Request                              keyshard.protocol.base.Request (fields: _speedups.pxd)
    RedisRequestParser                   keyshard.protocol.redis        (_speedups_redis.pxi)
    RedisReplyParser                     keyshard.protocol.redis_resp   (_speedups_resp.pxi)
    split, merge                         keyshard.protocol.redis_merge  (_speedups_merge.pxi)
    memcache_framers                     keyshard.protocol.memcache     (_speedups_memcache.pxi)
      (subclasses of its framers with a compiled `_parse`)
    9 of the 12 hashes                   keyshard.hashing               (_speedups_hash.pxi)
      (not md5, crc32, crc32a: hashlib's and zlib's C already; the routers have C loops
      for all but md5)
    ketama_router, modula_router         keyshard.pool._ketama_router / _modula_router
    PoolFields                           keyshard.pool.PoolFields        (fields: _speedups.pxd)

Rule 1: a twin behaves bit for bit like its reference: the same frames, the same `error`
        text, at the same byte, under any cut of the input (tests/unit/test_speedups.py
        feeds both the same streams). Only the internal state differs.
Rule 2: framers scan `const unsigned char*` with memchr and C integers; the only Python
        objects made per request are the ones handed out (raw, key, args, the Request).
Rule 3: requests are this module's `Request`, a twin of `keyshard.protocol.base.Request`
        (base.py puts it in its place): a cdef class from a free list, its fields C struct
        members that `_netfast` reads directly (`_speedups.pxd`). From Python its fields are
        getset descriptors, slower to read than slots (~35 ns vs ~6 ns); that was why the
        pure class was kept while the net layer was Python. Now the per-request net code is
        compiled too, and allocation and deallocation (slots walk, GC bookkeeping) were the
        larger cost.
Rule 4: client garbage never raises out of `feed` (base.py Rule 4); our own bugs become
        `error = "internal error: ..."`, as in the reference.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append
from cpython.object cimport PyObject
from libc.stdint cimport uint32_t, uint64_t, int32_t
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp, memcpy

cimport cython

from keyshard.protocol import base as _base


# --------------------------------------------------------------------------------------------
# The request record (Rule 3)

REQUEST_FIELDS = ("raw", "kind", "cmd", "key", "args", "noreply", "reply", "owner", "ctx",
                  "pending", "deadline", "server", "start")


@cython.freelist(1024)
cdef class Request:
    """Twin of `keyshard.protocol.base.Request` (its fields are in `_speedups.pxd`): the same
    fields, defaults, constructor and repr; a C struct from a free list instead of slots."""

    def __init__(self, raw, kind, cmd, key, args=None, noreply=False):
        _fill(self, raw, kind, cmd, key, args, noreply)

    def __repr__(self):
        return (f"Request(kind={self.kind}, cmd={self.cmd!r}, key={self.key!r}, "
                f"raw={self.raw[:60]!r})")


cdef inline int _fill(Request req, object raw, object kind, object cmd, object key,
                      object args, object noreply) except -1:
    """The constructor's fields (the others keep their defaults: None, 0.0)."""
    req.raw = raw
    req.kind = kind
    req.cmd = cmd
    req.key = key
    req.args = args
    req.noreply = noreply
    req.pending = 0
    return 0


cdef Request _new_request(object raw, object kind, object cmd, object key, object args,
                          object noreply):
    """`Request(raw, kind, cmd, key, args, noreply)`, without the call (also `_netfast`'s,
    declared in `_speedups.pxd`)."""
    cdef Request req = Request.__new__(Request)
    _fill(req, raw, kind, cmd, key, args, noreply)
    return req


def new_request(raw, kind, cmd, key, args=None, noreply=False):
    """The fast constructor, exposed for tests: must equal `Request(...)` field by field."""
    return _new_request(raw, kind, cmd, key, args, noreply)


def request_fast_path() -> bool:
    """Requests are this module's `Request`, built without a call."""
    return True


# --------------------------------------------------------------------------------------------
# Shared helpers

class _Bad(Exception):
    """Client garbage inside a framer; never escapes `feed`."""


cdef inline object _slice(bytes buf, Py_ssize_t a, Py_ssize_t b):
    """buf[a:b]; the buffer itself when that is all of it (as Python's slicing does)."""
    if a == 0 and b == PyBytes_GET_SIZE(buf):
        return buf
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(buf) + a, b - a)


cdef inline bytes _as_bytes(object data):
    if type(data) is bytes:
        return <bytes>data
    return bytes(data)


cdef inline bint _isdigit(unsigned char c) noexcept nogil:
    return <unsigned char>(c - 48) < 10


include "_speedups_redis.pxi"
include "_speedups_resp.pxi"
include "_speedups_memcache.pxi"
include "_speedups_merge.pxi"
include "_speedups_hash.pxi"


cdef object parser_feed(object parser, object data):
    """`parser.feed(data)`; a C call for the compiled Redis parsers (for keyshard._netfast)."""
    if type(parser) is RedisRequestParser:
        return (<RedisRequestParser>parser).feed(data)
    if type(parser) is RedisReplyParser:
        return (<RedisReplyParser>parser).feed(data)
    if type(parser) is _mc_request_type:  # the compiled memcache framers: their feed, as a C call
        return _mc_feed(parser, data, True)
    if type(parser) is _mc_reply_type:
        return _mc_feed(parser, data, False)
    return parser.feed(data)


cdef object parser_error(object parser):
    """`parser.error`, read as a C struct member from the compiled parsers."""
    if type(parser) is RedisRequestParser:
        return (<RedisRequestParser>parser).error
    if type(parser) is RedisReplyParser:
        return (<RedisReplyParser>parser).error
    if isinstance(parser, FramerFields):
        return (<FramerFields>parser).error
    return parser.error
