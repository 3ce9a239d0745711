"""The fields of the two connection classes, declared once (slots, no per-instance dict).

`ClientConn` and `ServerConn` take their storage from these bases, and `PoolRuntime` and
`ServerSlot` the fields the hot paths read (`RuntimeFields`, `SlotFields`; their other
attributes stay in their `__dict__`). The compiled twin
(`keyshard._netfast`, when built and not disabled) declares the same names as C struct members
of extension types, so the compiled hot loops read and write them without a dictionary or
descriptor lookup; Python code sees the same attributes either way.

Rule 1: every attribute a connection has is listed here; setting another one raises
        AttributeError (a typo is loud, and no connection grows a `__dict__`).
Rule 2: the compiled twin types a few of them (`wbuf` is a list, the flags are booleans,
        `timeout` a float, `swallowed` an int); the code only ever stores such values there.
Rule 3: each class also annotates its slots, for the type checker only: an annotation without
        a value makes no class attribute, so the slots stay the storage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keyshard import speedups_enabled

if TYPE_CHECKING:
    import asyncio
    import socket
    from collections import deque

    from keyshard.net.runtime import PoolRuntime, ServerSlot
    from keyshard.net.server import ServerConn
    from keyshard.net.writer import Flusher
    from keyshard.pool import ServerPool
    from keyshard.prometheus import LatencyRows
    from keyshard.protocol.base import Request
    from keyshard.stats import PoolStats, ServerStats


class ConnFields:
    """What both connection classes have: the writer's buffer and the codec's parser."""

    __slots__ = ("runtime", "flusher", "codec", "parser", "transport", "wbuf", "dirty", "deferred",
                 "closed")
    runtime: PoolRuntime
    flusher: Flusher
    codec: Any  # the codec contract is duck-typed (keyshard.protocol.base)
    parser: Any  # the codec's request or reply parser
    transport: Any  # the asyncio transport once connected, else None
    wbuf: list[bytes]
    dirty: bool
    deferred: bool
    closed: bool


class ClientFields(ConnFields):
    __slots__ = ("queue", "close_mark", "closing", "eof", "quit", "failed", "counted",
                 "read_paused", "write_paused", "authenticated")
    queue: list[Request]
    close_mark: Request | None
    closing: bool
    eof: bool
    quit: bool
    failed: bool
    counted: bool
    read_paused: bool
    write_paused: bool
    authenticated: bool


class ServerFields(ConnFields):
    __slots__ = ("slot", "outq", "sock", "timer", "stats", "connected", "timeout", "swallowed",
                 "hold")
    slot: ServerSlot
    outq: deque[Request]
    sock: socket.socket | None
    timer: asyncio.TimerHandle | None
    stats: ServerStats
    connected: bool
    timeout: float
    swallowed: int
    hold: bool


class RuntimeFields:
    """What the hot paths read of a pool at run time (keyshard.net.runtime.PoolRuntime)."""

    __slots__ = ("loop", "pool", "slots", "stats", "codec", "latency", "quirks", "flusher",
                 "__dict__")
    loop: asyncio.AbstractEventLoop
    pool: ServerPool
    slots: list[ServerSlot]
    stats: PoolStats
    codec: Any  # as ConnFields.codec
    latency: LatencyRows | None
    quirks: bool
    flusher: Flusher


class SlotFields:
    """What the hot paths read of a server slot (keyshard.net.runtime.ServerSlot)."""

    __slots__ = ("ready", "stats", "conns", "next", "limit", "__dict__")
    ready: ServerConn | None
    stats: ServerStats
    conns: list[ServerConn]
    next: int
    limit: int


# The references stay reachable under these names (tests).
PyConnFields, PyClientFields, PyServerFields = ConnFields, ClientFields, ServerFields
PyRuntimeFields, PySlotFields = RuntimeFields, SlotFields

if speedups_enabled():  # their compiled twins, if built (keyshard/_netfast.pyx)
    try:
        from keyshard._netfast import (  # type: ignore[no-redef]  # twins: same fields
            ClientFields,
            ConnFields,
            RuntimeFields,
            ServerFields,
            SlotFields,
        )
    except ImportError:
        pass
