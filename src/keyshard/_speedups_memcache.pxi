# Included by _speedups.pyx. Twins of the hot loops of keyshard.protocol.memcache.
#
# Unlike the Redis twins these are subclasses of the reference framers, made by
# `memcache_framers` (called by protocol.memcache itself, so this module never imports it):
# only `feed` (Framer.feed, its buffering) and `_parse`, the loop with the anchored fast
# paths, are compiled. Every line `_parse` does not match in the usual spelling goes to the
# reference's own methods (`_general`, `_data_end`, `_scan`, ...), so the grammar and its
# error texts have one implementation.
#
# The matchers below are the reference's regexes, written out; each is deterministic (no
# backtracking changes the outcome), which is what makes a single left-to-right scan exact:
#   _GET1    (gets?) ([^ \r]{1,250})\r\n
#   _GETN    (gets?)((?: [^ \r]{1,250}){2,})\r\n
#   _STORE1  (set|add|replace|append|prepend) ([^ \r]{1,250}) [0-9]+ [0-9]+ ([0-9]+)( noreply)?\r\n
#   BLOCK    VALUE +[^ ]+ +[0-9]+ +([0-9]+)(?=[ \r])[^\r]*\r\n

cdef enum:
    MC_MAX_KEY = 250
    MC_MAX_KEYS = 1024  # keys of one fast multi-get (more: the reference's general path)

cdef int _KIND_FORWARD = _base.KIND_FORWARD
cdef int _KIND_QUIT = _base.KIND_QUIT
cdef object _MC_VERBS = (b"get", b"gets", b"set", b"add", b"replace", b"append", b"prepend")
cdef tuple _MC_LINES = ()  # memcache.LINE_REPLIES
cdef tuple _MC_REPLY_LINES = ()  # each of _MC_LINES with its CRLF: a reply made once
cdef tuple _MC_TEXT = ()  # memcache.TEXT_PREFIXES
cdef object _mc_request_type = None  # memcache_framers' classes whose `feed` is `_mc_feed`
cdef object _mc_reply_type = None


cdef class FramerFields:
    """Twin of keyshard.protocol.memcache_framer.FramerFields: the framers' state as C struct
    members (the reference and the compiled framers both inherit it)."""
    cdef public object _chunks, _tail, error
    cdef public bint _closed
    cdef public Py_ssize_t _have, _need


cdef inline Py_ssize_t _mc_key(const unsigned char* b, Py_ssize_t p, Py_ssize_t n) noexcept:
    """End of the `[^ \\r]` run at `p`, at most MC_MAX_KEY long; -1 if empty."""
    cdef Py_ssize_t e = p
    cdef Py_ssize_t lim = p + MC_MAX_KEY if p + MC_MAX_KEY < n else n
    while e < lim and b[e] != 32 and b[e] != 13:
        e += 1
    return e if e > p else -1


cdef inline Py_ssize_t _mc_digits(const unsigned char* b, Py_ssize_t p, Py_ssize_t n,
                                  uint32_t* value) noexcept:
    """End of the `[0-9]+` run at `p` (its value modulo 2**32 in `value`); -1 if empty."""
    cdef Py_ssize_t e = p
    cdef uint32_t v = 0
    while e < n and _isdigit(b[e]):
        v = v * <uint32_t>10 + (b[e] - 48)
        e += 1
    value[0] = v
    return e if e > p else -1


cdef inline bint _mc_at(const unsigned char* b, Py_ssize_t p, Py_ssize_t n,
                        const char* word, Py_ssize_t size) noexcept:
    return p + size <= n and memcmp(b + p, word, size) == 0


cdef inline int _mc_store_verb(const unsigned char* b, Py_ssize_t p, Py_ssize_t n) noexcept:
    """Index in _MC_VERBS of the storage verb at `p` followed by a space, or -1."""
    cdef unsigned char c = b[p]
    if c == 115 and _mc_at(b, p, n, "set ", 4):
        return 2
    if c == 97:
        if _mc_at(b, p, n, "add ", 4):
            return 3
        if _mc_at(b, p, n, "append ", 7):
            return 5
    elif c == 114 and _mc_at(b, p, n, "replace ", 8):
        return 4
    elif c == 112 and _mc_at(b, p, n, "prepend ", 8):
        return 6
    return -1


def _mc_request_parse(self, data):
    """MemcacheRequestParser._parse, compiled (see the top of this file)."""
    return _mc_request_parse_c(self, data)


def _mc_request_feed(self, data):
    """MemcacheRequestParser.feed (Framer.feed), compiled: calls the compiled `_parse`."""
    return _mc_feed(self, data, True)


cdef object _mc_request_parse_c(object self, object data):
    """The loop of `_parse`: each request by its fast path (`_mc_get`, `_mc_store`) when it
    is in the usual spelling, else by the reference's `_general` (`_mc_general`)."""
    cdef bytes buf = _as_bytes(data)
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t pos = 0, end
    cdef Py_ssize_t starts[MC_MAX_KEYS]  # the keys of a multi-get (`_mc_get`'s scratch)
    cdef Py_ssize_t ends[MC_MAX_KEYS]
    cdef int verb
    cdef list out = []
    while pos < n:
        end = 0
        if b[pos] == 103 and _mc_at(b, pos, n, "get", 3):  # get / gets
            end = _mc_get(buf, b, pos, n, starts, ends, out)
        else:
            verb = _mc_store_verb(b, pos, n)
            if verb >= 0:
                end = _mc_store(self, buf, b, pos, n, verb, out)
        if end == 0:  # not a fast path's spelling
            end = _mc_general(self, buf, pos, n, out)
        if end < 0:
            break
        pos = end
    return out


cdef inline Py_ssize_t _mc_get(bytes buf, const unsigned char* b, Py_ssize_t pos, Py_ssize_t n,
                               Py_ssize_t* starts, Py_ssize_t* ends, list out) except -2:
    """_GET1 or _GETN at `pos`, whose `get` is matched: append its request and return its end;
    0 when the line is not in that spelling. `starts`, `ends`: room for MC_MAX_KEYS keys."""
    cdef Py_ssize_t q = pos + 3, e, end, k
    cdef Py_ssize_t nkeys = 0
    cdef int verb = 0
    cdef list keys
    if q + 1 < n and b[q] == 115 and b[q + 1] == 32:  # gets
        verb = 1
        q += 1
    while q < n and b[q] == 32 and nkeys < MC_MAX_KEYS:
        e = _mc_key(b, q + 1, n)
        if e < 0 or e >= n:
            break
        starts[nkeys] = q + 1
        ends[nkeys] = e
        nkeys += 1
        q = e
        if b[e] == 13:
            break
    if not (nkeys and q + 1 < n and b[q] == 13 and b[q + 1] == 10):
        return 0
    end = q + 2
    if nkeys == 1:  # _GET1
        PyList_Append(out, _new_request(
            _slice(buf, pos, end), _KIND_FORWARD, _MC_VERBS[verb],
            _slice(buf, starts[0], ends[0]), None, False))
    else:  # _GETN
        keys = [_slice(buf, starts[k], ends[k]) for k in range(nkeys)]
        PyList_Append(out, _new_request(
            _slice(buf, pos, end), _KIND_SPLIT, _MC_VERBS[verb], keys[0], keys, False))
    return end


cdef inline Py_ssize_t _mc_store(object self, bytes buf, const unsigned char* b, Py_ssize_t pos,
                                 Py_ssize_t n, int verb, list out) except -2:
    """_STORE1 at `pos`, whose verb (`_MC_VERBS[verb]`) and space are matched: append its
    request and return its end; 0 when the line is not in that spelling; -1 when its data
    is cut or bad (the reference's `_data_end` has kept it, or failed)."""
    cdef Py_ssize_t k = pos + len(<bytes>_MC_VERBS[verb]) + 1
    cdef Py_ssize_t e = _mc_key(b, k, n)
    cdef Py_ssize_t q = -1, vq = -1, mend = -1, end
    cdef uint32_t vlen, ignored
    cdef bint noreply = False
    if 0 < e < n and b[e] == 32:
        q = _mc_digits(b, e + 1, n, &ignored)
    if 0 < q < n and b[q] == 32:
        q = _mc_digits(b, q + 1, n, &ignored)
    if 0 < q < n and b[q] == 32:
        vq = q + 1
        q = _mc_digits(b, vq, n, &vlen)
    if 0 < q and vq > 0:
        if q + 1 < n and b[q] == 13 and b[q + 1] == 10:
            mend = q + 2
        elif _mc_at(b, q, n, " noreply\r\n", 10):
            mend = q + 10
            noreply = True
    if mend < 0:
        return 0
    end = mend + vlen + 2
    if end > n or b[end - 2] != 13 or b[end - 1] != 10:  # cut, or bad
        end = self._data_end(buf, pos, mend, _slice(buf, vq, q))
        if end < 0:
            return -1
    PyList_Append(out, _new_request(
        _slice(buf, pos, end), _KIND_FORWARD, _MC_VERBS[verb], _slice(buf, k, e), None,
        noreply))
    return end


cdef Py_ssize_t _mc_general(object self, bytes buf, Py_ssize_t pos, Py_ssize_t n,
                            list out) except -2:
    """Any other line, by the reference's `_general`: append its request and return its end;
    -1 to stop (the line is cut or rejected, or it was `quit`)."""
    req = self._general(buf, pos, n)
    if req is None:
        return -1
    PyList_Append(out, req)
    if req.kind == _KIND_QUIT:
        self._stop()  # nutcracker reads nothing after quit
        return -1
    return pos + len(req.raw)


cdef inline Py_ssize_t _mc_one_line(const unsigned char* b, Py_ssize_t p,
                                     Py_ssize_t cr) noexcept:
    """`line in LINE_REPLIES or line.isdigit() or line.startswith(TEXT_PREFIXES)`: 0 if
    not; the index in _MC_LINES plus 1 of a line in LINE_REPLIES; -1 for the others."""
    cdef Py_ssize_t size = cr - p, i
    cdef bytes word
    for i in range(len(_MC_LINES)):
        word = <bytes>_MC_LINES[i]
        if PyBytes_GET_SIZE(word) == size and memcmp(b + p, PyBytes_AS_STRING(word), size) == 0:
            return i + 1
    if size > 0:
        i = p
        while i < cr and _isdigit(b[i]):
            i += 1
        if i == cr:
            return -1
    for word in _MC_TEXT:
        if PyBytes_GET_SIZE(word) <= size and memcmp(
                b + p, PyBytes_AS_STRING(word), PyBytes_GET_SIZE(word)) == 0:
            return -1
    return 0


cdef Py_ssize_t _mc_block(const unsigned char* b, Py_ssize_t p, Py_ssize_t n,
                          uint32_t* vlen) noexcept:
    """End of a BLOCK header match at `p` (its data length in `vlen`), or -1."""
    cdef Py_ssize_t q = p + 5, s
    cdef uint32_t ignored
    cdef const unsigned char* cr
    if not _mc_at(b, p, n, "VALUE", 5):
        return -1
    s = q
    while q < n and b[q] == 32:
        q += 1
    if q == s:
        return -1
    s = q
    while q < n and b[q] != 32:  # the key: anything up to a space
        q += 1
    if q == s or q >= n:
        return -1
    s = q
    while q < n and b[q] == 32:
        q += 1
    q = _mc_digits(b, q, n, &ignored)
    if q < 0 or q >= n or b[q] != 32:
        return -1
    s = q
    while q < n and b[q] == 32:
        q += 1
    q = _mc_digits(b, q, n, vlen)
    if q < 0 or q >= n or (b[q] != 32 and b[q] != 13):
        return -1
    cr = <const unsigned char*>memchr(b + q, 13, n - q)
    if cr == NULL or cr - b + 1 >= n or cr[1] != 10:
        return -1
    return cr - b + 2


cdef object _mc_values(object self, bytes buf, const unsigned char* b, Py_ssize_t start,
                       Py_ssize_t n):
    """MemcacheReplyParser._values: VALUE blocks in the usual spelling, then END."""
    cdef Py_ssize_t p = start, mend, stop
    cdef uint32_t vlen
    while True:
        mend = _mc_block(b, p, n, &vlen)
        if mend < 0:
            break
        stop = mend + vlen
        if stop + 1 >= n or b[stop] != 13 or b[stop + 1] != 10:
            break
        p = stop + 2
        if _mc_at(b, p, n, "END\r\n", 5):
            return p + 5
        if not _mc_at(b, p, n, "VALUE ", 6):
            break
    return self._scan(buf, start, p, n)


def _mc_reply_parse(self, data):
    """MemcacheReplyParser._parse, compiled (see the top of this file)."""
    return _mc_reply_parse_c(self, data)


def _mc_reply_feed(self, data):
    """MemcacheReplyParser.feed (Framer.feed), compiled: calls the compiled `_parse`."""
    return _mc_feed(self, data, False)


cdef object _mc_feed(object self, object data, bint request):
    """Framer.feed, line for line (a Python frame per read is a measurable cost); the
    buffering methods it calls (`_collect`, `_fail`) stay the reference's."""
    cdef FramerFields fields = <FramerFields?>self
    if fields._closed or not data:
        return []
    if fields._chunks is not None:
        data = self._collect(data)
        if not data:
            return []
    else:
        tail = fields._tail
        if tail:
            data = tail + data
            fields._tail = b""
    try:
        if request:
            return _mc_request_parse_c(self, data)
        return _mc_reply_parse_c(self, data)
    except Exception as exc:  # our own bug; never escapes (protocol.base Rule 4)
        self._fail(f"internal error: {exc!r}")
        return []


cdef object _mc_reply_parse_c(object self, object data):
    cdef bytes buf = _as_bytes(data)
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t pos = 0, end, cr
    cdef const unsigned char* c
    cdef Py_ssize_t line
    cdef list out = []
    # a reply cut at the end of the last read: only `_cut` sets `_resume`, and it ends the
    # loop, so it is read once per read here rather than once per reply as in the reference
    resume = self._resume
    while pos < n:
        end = -1
        if resume:
            self._resume = 0
            end = self._scan(buf, pos, pos + resume, n)
            resume = 0
        elif b[pos] == 86 and _mc_at(b, pos, n, "VALUE ", 6):
            end = _mc_values(self, buf, b, pos, n)
        else:
            c = <const unsigned char*>memchr(b + pos, 13, n - pos)
            if c != NULL:
                cr = c - b
                if cr < n - 1 and b[cr + 1] == 10:
                    line = _mc_one_line(b, pos, cr)
                    if line > 0:  # STORED and the like: the same bytes, not a copy
                        PyList_Append(out, _MC_REPLY_LINES[line - 1])
                        pos = cr + 2
                        continue
                    if line < 0:
                        end = cr + 2
            if end < 0:
                end = self._scan(buf, pos, pos, n)
        if end < 0:
            break
        PyList_Append(out, _slice(buf, pos, end))
        pos = end
    return out


def memcache_framers(request_base, reply_base, line_replies, text_prefixes):
    """(MemcacheRequestParser, MemcacheReplyParser) whose `_parse` is compiled, and `feed`
    too when their state is the compiled `FramerFields`: subclasses of the reference classes
    given, which keep every other method."""
    global _MC_LINES, _MC_REPLY_LINES, _MC_TEXT, _mc_request_type, _mc_reply_type
    _MC_LINES = tuple(sorted(line_replies))
    _MC_REPLY_LINES = tuple(bytes(line) + b"\r\n" for line in _MC_LINES)
    _MC_TEXT = tuple(text_prefixes)
    made = []
    for base, parse, feed in ((request_base, _mc_request_parse, _mc_request_feed),
                              (reply_base, _mc_reply_parse, _mc_reply_feed)):
        methods = {"_parse": parse}
        if issubclass(base, FramerFields):  # its state is in C struct members: `feed` too
            methods["feed"] = feed
        made.append(type(base.__name__, (base,), {
            "__slots__": (), "__module__": __name__, "__qualname__": base.__qualname__,
            "__doc__": f"{base.__doc__}\n\n(compiled {' and '.join(sorted(methods))}: "
                       "keyshard._speedups)",
            **methods,
        }))
    if "feed" in made[0].__dict__:  # parser_feed calls _mc_feed for exactly these classes
        _mc_request_type = made[0]
    if "feed" in made[1].__dict__:
        _mc_reply_type = made[1]
    return tuple(made)
