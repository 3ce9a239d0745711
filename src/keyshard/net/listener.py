"""Listeners: one per pool, on TCP (IPv4/IPv6) or a unix socket, as nutcracker binds them.

Rule 1: TCP listeners get SO_REUSEADDR and the pool's backlog; a unix socket path is unlinked
        before bind and chmod-ed to the configured permission after it (0 = leave as is).
Rule 2: a listener that cannot bind stops the start-up with one clear line (exit 1).
"""

from __future__ import annotations

import asyncio
import os
import stat
from typing import TYPE_CHECKING

from keyshard.net.client import ClientConn

if TYPE_CHECKING:
    from keyshard.net.runtime import PoolRuntime


class ListenError(Exception):
    pass


async def listen(runtime: PoolRuntime) -> asyncio.AbstractServer:
    conf = runtime.conf
    loop = runtime.loop

    def factory() -> ClientConn:
        return ClientConn(runtime)

    try:
        if conf.listen_unix:
            path = conf.listen_host
            _unlink_socket(path)
            server = await loop.create_unix_server(factory, path, backlog=conf.backlog)
            if conf.listen_perm:
                os.chmod(path, conf.listen_perm)
            return server
        return await loop.create_server(
            factory, conf.listen_host, conf.listen_port, backlog=conf.backlog, reuse_address=True
        )
    except OSError as err:
        raise ListenError(
            f"bind on pool '{conf.name}' to addr '{conf.listen}' failed: {err.strerror or err}"
        ) from None


def _unlink_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
