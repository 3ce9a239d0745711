"""The buffering both memcache framers share (`keyshard.protocol.memcache` builds on it).

Rule 1: a framer keeps what a read left unparsed as a short tail, joined to the next read, or,
        for a long wait (a large value, or a line over `LONG_LINE`), as a list of chunks
        joined once when enough bytes have arrived (`_need`) or a byte that may end the line
        (`WAKE`) has.
Rule 2: after an error or a stop nothing more is parsed; `feed` never raises (base.py Rule 4).
Rule 3: the state is declared once, in `FramerFields`; the compiled twin (keyshard._speedups,
        when built and not disabled) declares the same names as C struct members, which its
        compiled `feed` reads without a lookup. Python code sees the same attributes either way.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from keyshard import speedups_enabled

LONG_LINE = 65536  # a pending line longer than this is only re-read when a CR arrives

T = TypeVar("T")


class FramerFields:
    """The framers' state, declared once (Rule 3)."""

    __slots__ = ("_chunks", "_closed", "_have", "_need", "_tail", "error")


PyFramerFields = FramerFields  # the reference (tests)
if speedups_enabled():
    try:
        from keyshard._speedups import (  # type: ignore[no-redef]  # the twin: same fields
            FramerFields,
        )
    except ImportError:
        pass


class Framer(FramerFields, Generic[T]):
    """Buffering shared by both framers: a short tail, or a chunk list for long waits."""

    __slots__ = ()
    WAKE: tuple[bytes, ...] = (b"\r",)  # bytes that may end a long pending line

    def __init__(self) -> None:
        self.error: str | None = None
        self._closed = False
        self._tail = b""
        self._chunks: list[bytes] | None = None
        self._have = 0
        self._need = 0  # chunk mode: bytes needed before re-parsing; 0 = until a WAKE byte

    def feed(self, data: bytes) -> list[T]:
        if self._closed or not data:
            return []
        if self._chunks is not None:
            data = self._collect(data)
            if not data:
                return []
        elif self._tail:
            data = self._tail + data
            self._tail = b""
        try:
            return self._parse(data)
        except Exception as exc:  # noqa: BLE001 - our own bug; never escapes (base.py Rule 4)
            self._fail(f"internal error: {exc!r}")
            return []

    def _parse(self, data: bytes) -> list[T]:
        raise NotImplementedError

    def _collect(self, data: bytes) -> bytes:
        chunks = self._chunks
        assert chunks is not None
        chunks.append(data)
        self._have += len(data)
        if self._need:
            if self._have < self._need:
                return b""
        elif not any(wake in data for wake in self.WAKE):
            return b""
        self._chunks = None
        return b"".join(chunks)

    def _stash(self, data: bytes, pos: int, need: int = 0) -> None:
        """Keep data[pos:] until more arrives; `need`: bytes from pos worth waiting for."""
        pending = data[pos:]
        if need > len(pending) or len(pending) > LONG_LINE:
            self._chunks = [pending]
            self._have = len(pending)
            self._need = need if need > len(pending) else 0
        else:
            self._tail = pending

    def _fail(self, reason: str) -> None:
        self.error = reason
        self._stop()

    def _stop(self) -> None:
        self._closed = True
        self._tail = b""
        self._chunks = None
