"""Fake servers for failures a real one cannot show, run in a background thread.

- `BlackHole`: accepts connections and never answers (timeouts).
- `Scripted`: answers every complete request line/array with a fixed reply (`-LOADING ...`),
  or closes after receiving (`close_after_recv`), or sends a reply nobody asked for.
- `FaultProxy`: a TCP relay in front of a real server whose mode can be switched at run time:
  "pass", "refuse" (stop listening), "stall" (stop relaying), "reset" (RST every connection),
  "cut" (close a connection in the middle of the next reply).

Rule: everything listens on 127.0.0.1 on a free port and stops when `close()` is called.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time

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
            for key, _ in self.sel.select(0.05):
                if key.data is None:
                    self._accept(key.fileobj)  # type: ignore[arg-type]
                else:
                    key.data(key.fileobj)
        for c in list(self.conns):
            self._drop(c)
        self.unlisten()

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
    return data.count(b"*") if data.startswith(b"*") else data.count(b"\r\n")


class Scripted(_Server):
    """Answers each request with `reply`; or closes on receipt; or sends `stray` on accept."""

    def __init__(self, reply: bytes = b"", close_after_recv: bool = False, stray: bytes = b"",
                 port: int | None = None) -> None:
        self.reply = reply
        self.close_after_recv = close_after_recv
        self.stray = stray
        self.received = b""
        super().__init__(port)

    def on_accept(self, conn: socket.socket) -> None:
        super().on_accept(conn)
        if self.stray:
            conn.sendall(self.stray)

    def on_data(self, conn: socket.socket, data: bytes) -> None:
        self.received += data
        if self.close_after_recv:
            self._drop(conn)
        elif self.reply:
            conn.sendall(self.reply * max(1, _count_redis_requests(data)))


class FaultProxy(_Server):
    """A relay in front of `target_port` whose behaviour can be switched (see module doc)."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.peers: dict[socket.socket, socket.socket] = {}
        self.lock = threading.Lock()
        super().__init__(port)

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "refuse", "stall", "reset", "cut")
        with self.lock:
            self.mode = mode
        time.sleep(0.1)  # let the loop see it

    def run(self) -> None:
        listening = True
        while self.running:
            with self.lock:
                mode = self.mode
            if mode == "refuse" and listening:
                self.unlisten()
                listening = False
            elif mode != "refuse" and not listening:
                self.listen()
                listening = True
            if mode == "reset":
                for c in list(self.peers):
                    self._reset(c)
            for key, _ in self.sel.select(0.02):
                if key.data is None:
                    self._accept(key.fileobj)  # type: ignore[arg-type]
                elif mode != "stall":
                    key.data(key.fileobj)
        for c in list(self.conns):
            self._drop(c)
        self.unlisten()

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
        self.peers[conn] = up
        self.peers[up] = conn
        self.sel.register(conn, selectors.EVENT_READ, self.on_read)
        self.sel.register(up, selectors.EVENT_READ, self.on_upstream)

    def on_data(self, conn: socket.socket, data: bytes) -> None:
        peer = self.peers.get(conn)
        if peer is not None:
            peer.setblocking(True)
            peer.sendall(data)
            peer.setblocking(False)

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
            client.sendall(data[: max(1, len(data) // 2)])
            self._drop_pair(up)
            return
        client.setblocking(True)
        client.sendall(data)
        client.setblocking(False)

    def _reset(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._drop_pair(conn)

    def _drop_pair(self, conn: socket.socket) -> None:
        peer = self.peers.pop(conn, None)
        if peer is not None:
            self.peers.pop(peer, None)
            self._drop(peer)
        self._drop(conn)
