"""Fake servers for failures a real one cannot show, run in a background thread.

- `BlackHole`: accepts connections, reads, never answers (timeouts).
- `Scripted`: answers every complete request (RESP array, or memcache line with its data
  block) with a fixed `reply` (`-LOADING ...`; two replies make the second a reply nobody
  asked for), or closes as soon as a request arrives (`close_after_recv`: EOF with a request
  outstanding), or sends `stray` on accept.
- `FaultProxy`: a TCP relay in front of a real server whose mode can be switched at run time:
  "pass", "refuse" (stop listening: new connects are refused), "stall" (accept, relay
  nothing), "reset" (RST every connection, new ones right after accept), "cut" (send half of
  the next reply, then close). `drop()` closes the connections it relays (FIN).

Rule 1: everything listens on 127.0.0.1 on a free port and stops when `close()` is called.
Rule 2: a fake never spins: a stalled relay stops watching its connections.
Rule 3: a socket error on one connection drops that connection, never the thread.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable

from tests.support.procs import free_port


class _Server(threading.Thread):
    def __init__(self, port: int | None = None) -> None:
        super().__init__(daemon=True)
        self.port = port or free_port()
        self.sel = selectors.DefaultSelector()
        self.lsock: socket.socket | None = None
        self.running = True
        self.conns: set[socket.socket] = set()
        self.accepted = 0
        self.listen()
        self.start()

    def listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        s.setblocking(False)
        self.lsock = s
        self.sel.register(s, selectors.EVENT_READ, None)

    def unlisten(self) -> None:
        if self.lsock is not None:
            self.sel.unregister(self.lsock)
            self.lsock.close()
            self.lsock = None

    def run(self) -> None:
        while self.running:
            self.step()
        for c in list(self.conns):
            self._drop(c)
        self.unlisten()

    def step(self) -> None:
        for key, _ in self.sel.select(0.02):
            if key.data is None:
                self._accept(key.fileobj)  # type: ignore[arg-type]
            else:
                key.data(key.fileobj)

    def _accept(self, lsock: socket.socket) -> None:
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        conn.setblocking(False)
        self.accepted += 1
        self.conns.add(conn)
        self.on_accept(conn)

    def on_accept(self, conn: socket.socket) -> None:
        self.sel.register(conn, selectors.EVENT_READ, self.on_read)

    def on_read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        self.on_data(conn, data)

    def on_data(self, conn: socket.socket, data: bytes) -> None:
        pass

    def send(self, conn: socket.socket, data: bytes) -> bool:
        """Send all of `data` (blocking briefly); False, and the connection dropped, on error."""
        try:
            conn.setblocking(True)
            conn.settimeout(5)
            conn.sendall(data)
            conn.setblocking(False)
            return True
        except OSError:
            self._drop(conn)
            return False

    def _drop(self, conn: socket.socket) -> None:
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        self.conns.discard(conn)
        conn.close()

    def close(self) -> None:
        self.running = False
        self.join(5)


class BlackHole(_Server):
    """Accepts and reads, never answers."""


def _count_redis_requests(data: bytes) -> int:
    """Requests in one read, roughly (no framing across reads; kept for simple fakes)."""
    return data.count(b"*") if data.startswith(b"*") else data.count(b"\r\n")


def count_redis(buf: bytearray) -> int:
    """Remove the complete RESP arrays at the head of `buf`; how many there were."""
    n = 0
    while buf[:1] == b"*":
        end = buf.find(b"\r\n")
        if end < 0:
            break
        pos, ok = end + 2, True
        for _ in range(int(buf[1:end])):
            e = buf.find(b"\r\n", pos)
            if e < 0 or buf[pos:pos + 1] != b"$":
                ok = False
                break
            pos = e + 2 + int(buf[pos + 1:e]) + 2
            if pos > len(buf):
                ok = False
                break
        if not ok:
            break
        del buf[:pos]
        n += 1
    return n


_STORAGE = (b"set", b"add", b"replace", b"append", b"prepend", b"cas")


def count_memcache(buf: bytearray) -> int:
    """Remove the complete memcache requests (storage ones with their data) at the head."""
    n = 0
    while True:
        end = buf.find(b"\r\n")
        if end < 0:
            break
        words = bytes(buf[:end]).split()
        pos = end + 2
        if words and words[0] in _STORAGE and len(words) > 4:
            pos += int(words[4]) + 2
            if pos > len(buf):
                break
        del buf[:pos]
        n += 1
    return n


class Scripted(_Server):
    """Answers each request with `reply`; or closes on receipt; or sends `stray` on accept."""

    def __init__(self, reply: bytes = b"", close_after_recv: bool = False, stray: bytes = b"",
                 port: int | None = None, memcache: bool = False) -> None:
        self.reply = reply
        self.close_after_recv = close_after_recv
        self.stray = stray
        self.received = b""
        self.count: Callable[[bytearray], int] = count_memcache if memcache else count_redis
        self.buffers: dict[socket.socket, bytearray] = {}
        super().__init__(port)

    def on_accept(self, conn: socket.socket) -> None:
        super().on_accept(conn)
        self.buffers[conn] = bytearray()
        if self.stray:
            self.send(conn, self.stray)

    def on_data(self, conn: socket.socket, data: bytes) -> None:
        self.received += data
        if self.close_after_recv:
            self._drop(conn)
            return
        buf = self.buffers.setdefault(conn, bytearray())
        buf += data
        n = self.count(buf)
        if self.reply and n:
            self.send(conn, self.reply * n)

    def _drop(self, conn: socket.socket) -> None:
        self.buffers.pop(conn, None)
        super()._drop(conn)


class FaultProxy(_Server):
    """A relay in front of `target_port` whose behaviour can be switched (see module doc)."""

    MODES = ("pass", "refuse", "stall", "reset", "cut")

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.peers: dict[socket.socket, socket.socket] = {}
        self.upstreams: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.dropping = False
        self.applied = threading.Event()
        self.watching = True
        super().__init__(port)

    def set_mode(self, mode: str) -> None:
        """Switch mode; returns once the relay thread has applied it."""
        assert mode in self.MODES, mode
        with self.lock:
            self.mode = mode
            self.applied.clear()
        self.applied.wait(5)

    def drop(self) -> None:
        """Close every relayed connection (FIN both ways); returns once done."""
        with self.lock:
            self.dropping = True
            self.applied.clear()
        self.applied.wait(5)

    def step(self) -> None:
        with self.lock:
            mode, dropping = self.mode, self.dropping
            self.dropping = False
        if dropping:
            for c in list(self.peers):
                self._drop_pair(c)
        if (mode == "refuse") == (self.lsock is not None):
            if mode == "refuse":
                self.unlisten()
            else:
                self.listen()
        if mode == "reset":
            for c in [c for c in self.peers if c not in self.upstreams]:
                self._reset(c)
        self._watch(mode != "stall")
        self.applied.set()
        if self.lsock is None and not self.watching:
            time.sleep(0.02)
            return
        super().step()

    def _watch(self, on: bool) -> None:
        """(Un)register the relayed connections: a stalled relay does not read (Rule 2)."""
        if on == self.watching:
            return
        self.watching = on
        for sock in self.peers:
            if on:
                handler = self.on_upstream if sock in self.upstreams else self.on_read
                self.sel.register(sock, selectors.EVENT_READ, handler)
            else:
                self.sel.unregister(sock)

    def on_accept(self, conn: socket.socket) -> None:
        if self.mode == "reset":
            self._reset(conn)
            return
        try:
            up = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
        except OSError:
            self._drop(conn)
            return
        up.setblocking(False)
        self.conns.add(up)
        self.upstreams.add(up)
        self.peers[conn] = up
        self.peers[up] = conn
        if self.watching:
            self.sel.register(conn, selectors.EVENT_READ, self.on_read)
            self.sel.register(up, selectors.EVENT_READ, self.on_upstream)

    def on_read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        peer = self.peers.get(conn)
        if not data or peer is None:
            self._drop_pair(conn)
            return
        if not self.send(peer, data):
            self._drop_pair(conn)

    def on_upstream(self, up: socket.socket) -> None:
        try:
            data = up.recv(65536)
        except OSError:
            data = b""
        client = self.peers.get(up)
        if not data or client is None:
            self._drop_pair(up)
            return
        if self.mode == "cut":
            self.send(client, data[: max(1, len(data) // 2)])
            self._drop_pair(up)
            return
        if not self.send(client, data):
            self._drop_pair(up)

    def _reset(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self._drop_pair(conn)

    def _drop_pair(self, conn: socket.socket) -> None:
        peer = self.peers.pop(conn, None)
        if peer is not None:
            self.peers.pop(peer, None)
            self.upstreams.discard(peer)
            self._drop(peer)
        self.upstreams.discard(conn)
        self._drop(conn)
