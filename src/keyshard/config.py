"""Configuration: the nutcracker.yml directive table, YAML loading, validation.

(Skeleton: the data model below is the contract other modules build on. The loader is
being written.)
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(Exception):
    """A config file that must not start the proxy. str(err) is one clear line."""


@dataclass(frozen=True)
class ServerConf:
    pname: str  # "host:port:weight" (the entry without its name), for logs
    name: str  # identity for hashing and stats: explicit name, "host:port", "host" (port 11211), "path:"
    host: str  # hostname / IP, or the unix socket path
    port: int  # 0 for a unix socket
    weight: int
    is_unix: bool


@dataclass
class PoolConf:
    name: str
    listen: str  # the raw listen string
    listen_host: str  # host or IP, or the unix socket path
    listen_port: int  # 0 for a unix socket
    listen_unix: bool = False
    listen_perm: int = 0  # chmod of the unix socket, 0 = leave as is
    hash: str = "fnv1a_64"
    hash_tag: bytes | None = None
    distribution: str = "ketama"
    timeout: int = -1  # ms; <= 0 means no timeout
    backlog: int = 512
    preconnect: bool = False
    redis: bool = False
    redis_auth: bytes | None = None
    redis_db: int = 0
    server_connections: int = 1
    auto_eject_hosts: bool = False
    server_retry_timeout: int = 30000  # ms
    server_failure_limit: int = 2
    client_connections: int = 0
    tcpkeepalive: bool = False
    servers: list[ServerConf] = field(default_factory=list)  # sorted as nutcracker sorts them
