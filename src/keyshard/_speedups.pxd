# Declarations shared with keyshard._netfast (cimported there).

cdef class Request:
    cdef public object raw, kind, cmd, key, args, noreply
    cdef public object reply, owner, ctx, pending, server
    cdef public double deadline, start
