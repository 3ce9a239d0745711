# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Compiled twins of keyshard's hot loops (optional; built by `pip install` when a compiler
is present).

This module owns nothing of its own: every class and function here is a twin of pure-Python
code that stays the reference and the fallback. The modules that have a twin import it at
their end, unless `KEYSHARD_NO_EXTENSIONS=1` (see `keyshard.speedups_enabled`).

    twin                                 reference
    RedisRequestParser, RedisReplyParser keyshard.protocol.redis        (_speedups_redis.pxi)
    split, merge                         keyshard.protocol.redis_merge  (_speedups_merge.pxi)
    memcache_framers                     keyshard.protocol.memcache     (_speedups_memcache.pxi)
      (subclasses of its framers with a compiled `_parse`)
    9 of the 12 hashes                   keyshard.hashing               (_speedups_hash.pxi)
      (not md5, crc32, crc32a: hashlib's and zlib's C already; the routers have C loops
      for all but md5)
    ketama_router, modula_router         keyshard.pool._ketama_router / _modula_router

Rule 1: a twin behaves bit for bit like its reference: the same frames, the same `error`
        text, at the same byte, under any cut of the input (tests/unit/test_speedups.py
        feeds both the same streams). Only the internal state differs.
Rule 2: framers scan `const unsigned char*` with memchr and C integers; the only Python
        objects made per request are the ones handed out (raw, key, args, the Request).
Rule 3: requests are `keyshard.protocol.base.Request`, the pure-Python class itself, built
        without calling it: allocated, then each slot stored at its offset (`_new_request`).
        A cdef class was measured and rejected: its attributes are getset descriptors, 6x
        slower to read from Python than slots (~35 ns vs ~6 ns) and the net layer touches a
        request ~15 times. If the class ever stops being plain slots, the call is used.
Rule 4: client garbage never raises out of `feed` (base.py Rule 4); our own bugs become
        `error = "internal error: ..."`, as in the reference.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport uint32_t, uint64_t, int32_t
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp, memcpy

from keyshard.protocol import base as _base

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
        int flags
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    int T_OBJECT_EX
    int READONLY
    PyObject* PyType_GenericAlloc(PyTypeObject* t, Py_ssize_t n) except NULL


# --------------------------------------------------------------------------------------------
# Building `Request`s (Rule 3)

cdef enum:
    MAX_SLOTS = 32

cdef object _Request = _base.Request
cdef PyTypeObject* _req_type = <PyTypeObject*>_base.Request
cdef int _req_nslots = 0
cdef Py_ssize_t _req_offset[MAX_SLOTS]
cdef int _req_field[MAX_SLOTS]  # 0..5: a codec field (below); -1: a default from _req_model
cdef PyObject* _req_default[MAX_SLOTS]
cdef object _req_model = None  # a Request built by the class; owns the defaults
cdef bint _req_fast = False

_CODEC_FIELDS = ("raw", "kind", "cmd", "key", "args", "noreply")


cdef bint _setup_request() except -1:
    """Read the slot layout of base.Request; `_req_fast` stays False if it is not plain."""
    global _req_nslots, _req_model, _req_fast
    cls = _Request
    slots = cls.__dict__.get("__slots__")
    if type(cls) is not type or cls.__bases__ != (object,) or not isinstance(slots, tuple):
        return False
    if len(slots) > MAX_SLOTS or cls.__init__ is object.__init__:
        return False
    model = cls(b"", 0, b"", b"")
    for i, name in enumerate(slots):
        descr = cls.__dict__.get(name)
        if type(descr).__name__ != "member_descriptor":
            return False
        member = (<PyMemberDescrObject*>descr).d_member
        if member.type != T_OBJECT_EX or member.flags & READONLY:
            return False
        _req_offset[i] = member.offset
        _req_field[i] = _CODEC_FIELDS.index(name) if name in _CODEC_FIELDS else -1
        default = getattr(model, name)  # kept alive by `model`
        _req_default[i] = <PyObject*>default
    if not set(_CODEC_FIELDS) <= set(slots):
        return False
    _req_nslots = len(slots)
    _req_model = model
    _req_fast = True
    return True


_setup_request()


cdef object _new_request(object raw, object kind, object cmd, object key, object args,
                         object noreply):
    """`Request(raw, kind, cmd, key, args, noreply)`, without the call (Rule 3)."""
    cdef PyObject* fields[6]
    cdef PyObject* obj
    cdef PyObject* value
    cdef int i, f
    if not _req_fast:
        return _Request(raw, kind, cmd, key, args, noreply)
    fields[0] = <PyObject*>raw
    fields[1] = <PyObject*>kind
    fields[2] = <PyObject*>cmd
    fields[3] = <PyObject*>key
    fields[4] = <PyObject*>args
    fields[5] = <PyObject*>noreply
    obj = PyType_GenericAlloc(_req_type, 0)  # zeroed; holds a reference to its type
    for i in range(_req_nslots):
        f = _req_field[i]
        value = fields[f] if f >= 0 else _req_default[i]
        Py_INCREF(<object>value)
        (<PyObject**>((<char*>obj) + _req_offset[i]))[0] = value
    result = <object>obj  # takes a new reference ...
    Py_XDECREF(obj)  # ... so drop the one from the allocation
    return result


def new_request(raw, kind, cmd, key, args=None, noreply=False):
    """The fast constructor, exposed for tests: must equal `Request(...)` slot by slot."""
    return _new_request(raw, kind, cmd, key, args, noreply)


def request_fast_path() -> bool:
    """Whether requests are built slot by slot (True) or by calling the class."""
    return _req_fast


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
include "_speedups_memcache.pxi"
include "_speedups_merge.pxi"
include "_speedups_hash.pxi"
