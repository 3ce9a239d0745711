"""Listeners: one per pool, on TCP (IPv4/IPv6) or a unix socket, as nutcracker binds them.

Rule 1: TCP listeners get SO_REUSEADDR and the pool's backlog, on every address the host
        resolves to (as `loop.create_server`); a unix socket path is unlinked before bind and
        chmod-ed to the configured permission after it (0 = leave as is).
Rule 2: a listener that cannot bind stops the start-up with one clear line (exit 1).
Rule 3: a client that has sent nothing yet is *parked*: the proxy holds only its file
        descriptor, watched by one epoll set per listener, and counts it as a client
        connection. Its first byte (or its EOF) makes it a `ClientConn` with an asyncio
        transport. An idle connection thus costs ~0.1 KB of memory instead of ~1.3 KB
        (a uvloop transport, its protocol and parser); nothing else changes for the client.
        It is counted as parked until the loop calls its `connection_made` (an iteration
        after the transport is made), so client_connections never dips meanwhile.
        Where epoll is missing the loop's own `create_server` is used.
Rule 4: accepting stops for a second when the process runs out of descriptors (EMFILE,
        ENFILE) or memory, instead of spinning on a listener that stays readable.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
import stat
from typing import TYPE_CHECKING, Any

from keyshard.net.client import ClientConn

if TYPE_CHECKING:
    from keyshard.net.runtime import PoolRuntime

log = logging.getLogger("keyshard.listener")

ACCEPT_BATCH = 128  # accepts per readiness of a listening socket
WAKE_BATCH = 256  # parked clients woken per readiness of the epoll set
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
EPOLL_MASK = getattr(select, "EPOLLIN", 1) | getattr(select, "EPOLLRDHUP", 0x2000)


class ListenError(Exception):
    pass


class Listener:
    """A pool's listening sockets and its parked clients (Rules 3, 4)."""

    def __init__(self, runtime: PoolRuntime, socks: list[socket.socket]) -> None:
        self.runtime = runtime
        self.loop = runtime.loop
        self.sockets = socks
        self.epoll = select.epoll()
        self.parked: set[int] = set()  # file descriptors of clients that sent nothing yet
        self.closed = False
        self.loop.add_reader(self.epoll.fileno(), self.wake)
        self.start_accepting()

    def start_accepting(self) -> None:
        if self.closed:
            return
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self.accept, sock)

    def accept(self, lsock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in OUT_OF_RESOURCES:  # Rule 4
                    log.error("accept on pool '%s' failed: %s", self.runtime.conf.name,
                              err.strerror)
                    for sock in self.sockets:
                        self.loop.remove_reader(sock.fileno())
                    self.loop.call_later(1.0, self.start_accepting)
                    return
                continue  # ECONNABORTED and the like: that client is gone, take the next
            self.park(conn)

    def park(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            set_client_options(conn, self.runtime.conf.tcpkeepalive)
            self.epoll.register(conn.fileno(), EPOLL_MASK)
        except OSError:
            conn.close()
            return
        fd = conn.detach()  # a parked client is a bare descriptor: no Python object
        self.parked.add(fd)
        self.runtime.client_parked()

    def wake(self) -> None:
        """Parked clients sent something (or closed): give each a transport."""
        try:
            ready = self.epoll.poll(0, WAKE_BATCH)
        except OSError:
            return
        for fd, _ in ready:
            self.unpark(fd)
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                self.runtime.parked -= 1
                continue
            self.runtime.spawn(self.promote(sock))

    def unpark(self, fd: int) -> None:
        self.parked.discard(fd)
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass

    async def promote(self, sock: socket.socket) -> None:
        runtime = self.runtime
        maker = _ClientMaker(runtime)
        try:
            await self.loop.connect_accepted_socket(maker, sock)
        except (OSError, RuntimeError) as err:
            client = maker.client
            if client is None:  # lost before it had a protocol: an error, as before
                runtime.parked -= 1
                runtime.stats.client_err += 1
            elif client in runtime.promoting:  # lost before connection_made: still parked
                runtime.promoting.discard(client)
                runtime.parked -= 1
            if log.isEnabledFor(logging.INFO):
                log.info("client on pool '%s' lost before its first read: %s",
                         runtime.conf.name, err)
            sock.close()

    def close(self) -> None:
        """Stop accepting; close the parked clients (they have nothing pending)."""
        if self.closed:
            return
        self.closed = True
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.loop.remove_reader(self.epoll.fileno())
        for fd in self.parked:
            os.close(fd)
        self.runtime.parked -= len(self.parked)
        self.parked.clear()
        self.epoll.close()



class _ClientMaker:
    """The protocol factory of one promotion (a class, not a closure: no reference cycle)."""

    __slots__ = ("runtime", "client")

    def __init__(self, runtime: PoolRuntime) -> None:
        self.runtime = runtime
        self.client: ClientConn | None = None

    def __call__(self) -> ClientConn:
        client = self.client = ClientConn(self.runtime)
        self.runtime.promoting.add(client)  # counted as parked until connection_made
        return client


class _AcceptedClient(ClientConn):
    """A client accepted by the loop's own server (no epoll): its socket options are set
    when its transport is made."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                set_client_options(sock, self.runtime.conf.tcpkeepalive)
            except OSError:
                pass
        super().connection_made(transport)


def set_client_options(sock: Any, keepalive: bool) -> None:
    """TCP_NODELAY, and SO_KEEPALIVE with `tcpkeepalive`, on an accepted TCP client socket."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


async def listen(runtime: PoolRuntime) -> Any:
    """The pool's listener: a `Listener` (Rule 3), or an asyncio server without epoll."""
    conf = runtime.conf
    try:
        if not hasattr(select, "epoll"):
            return await _asyncio_server(runtime)
        socks = _bind_unix(conf) if conf.listen_unix else await _bind_tcp(runtime)
    except OSError as err:
        raise ListenError(
            f"bind on pool '{conf.name}' to addr '{conf.listen}' failed: {err.strerror or err}"
        ) from None
    return Listener(runtime, socks)


def _bind_unix(conf: Any) -> list[socket.socket]:
    path = conf.listen_host
    _unlink_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if conf.listen_perm:
            os.chmod(path, conf.listen_perm)
        sock.listen(conf.backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return [sock]


async def _bind_tcp(runtime: PoolRuntime) -> list[socket.socket]:
    conf = runtime.conf
    infos = await runtime.loop.getaddrinfo(conf.listen_host, conf.listen_port,
                                           type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(conf.backlog)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


async def _asyncio_server(runtime: PoolRuntime) -> asyncio.AbstractServer:
    conf = runtime.conf
    loop = runtime.loop

    def factory() -> ClientConn:
        runtime.total_clients += 1
        return _AcceptedClient(runtime)

    if conf.listen_unix:
        path = conf.listen_host
        _unlink_socket(path)
        server = await loop.create_unix_server(factory, path, backlog=conf.backlog)
        if conf.listen_perm:
            os.chmod(path, conf.listen_perm)
        return server
    return await loop.create_server(
        factory, conf.listen_host, conf.listen_port, backlog=conf.backlog, reuse_address=True)


def _unlink_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
