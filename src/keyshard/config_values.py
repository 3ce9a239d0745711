"""Configuration values: the vocabulary of nutcracker.yml and one parser per kind of value.

`config` owns the directive table and the checks around it; this module owns turning one
scalar's text into its value, or into `Reject` with the phrase nutcracker logs after
`directive "<name>" ` (see `config`, Rules 3 and 5: text is never YAML-typed, numbers are
nutcracker's `nc_atoi`, and resolving a listen address is the only I/O).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerConf:
    pname: str  # "host:port:weight" (the entry without its name), for logs
    # identity for hashing and stats: explicit name, "host:port", "host" (port 11211), "path:"
    name: str
    host: str  # hostname / IP, or the unix socket path
    port: int  # 0 for a unix socket
    weight: int
    is_unix: bool


# --------------------------------------------------------------------------------------------
# Vocabulary of values

HASHES = (
    "one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64",
    "fnv1a_64", "fnv1_32", "fnv1a_32", "hsieh", "murmur", "jenkins",
)
DISTRIBUTIONS = ("ketama", "modula", "random")
KETAMA_PORT = 11211  # a server on this port is named "host" (libmemcached compatibility)
UNIX_PATH_MAX = 108  # sizeof(sun_path): a listen path must be shorter

_SERVER_FORMAT = '"hostname:port:weight [name]"or "/path/unix_socket:weight [name]" format string'
_ASCII_DIGITS = re.compile(r"[0-9]+")

Resolver = Callable[[str, int], "tuple[int, Any]"]


class Reject(Exception):
    """A value nutcracker rejects: `phrase` follows `directive "<name>" ` in its message."""

    def __init__(self, phrase: str, detail: str | None = None) -> None:
        super().__init__(phrase)
        self.phrase = phrase
        self.detail = detail


def nc_atoi(text: str) -> int:
    """nutcracker's atoi: ASCII digits only, C int wrap-around, -1 for anything else."""
    if not _ASCII_DIGITS.fullmatch(text):
        return -1
    # 10**32 is a multiple of 2**32, so the last 32 digits decide the value modulo 2**32.
    value = int(text[-32:]) & 0xFFFFFFFF
    return -1 if value >= 0x80000000 else value


def valid_port(port: int) -> bool:
    return 0 < port < 65536


def nc_key(name: str) -> tuple[int, bytes]:
    """Sort key of nutcracker's string_compare: shorter first, then bytewise."""
    data = name.encode("utf-8", "surrogateescape")
    return len(data), data


def resolve_tcp(host: str, port: int) -> tuple[int, Any]:
    """First getaddrinfo result for a listen address, as nutcracker's nc_resolve_inet."""
    try:
        if not host:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        info = socket.getaddrinfo(
            host, str(port), socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_NUMERICSERV
        )
    except (OSError, UnicodeError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise Reject(
            "has an invalid value",
            f"address resolution of node '{host}' service '{port}' failed: {reason}",
        ) from None
    family, _type, _proto, _canon, sockaddr = info[0]
    return int(family), sockaddr


# --------------------------------------------------------------------------------------------
# Value parsers: text -> value, or Reject with nutcracker's phrase


def parse_num(text: str, _resolve: Resolver) -> int:
    num = nc_atoi(text)
    if num < 0:
        raise Reject("is not a number")
    return num


def parse_bool(text: str, _resolve: Resolver) -> bool:
    if text in ("true", "false"):
        return text == "true"
    raise Reject('is not "true" or "false"')


def parse_hash(text: str, _resolve: Resolver) -> str:
    if text not in HASHES:
        raise Reject("is not a valid hash")
    return text


def parse_distribution(text: str, _resolve: Resolver) -> str:
    if text not in DISTRIBUTIONS:
        raise Reject("is not a valid distribution")
    return text


def parse_hash_tag(text: str, _resolve: Resolver) -> bytes:
    tag = text.encode("utf-8", "surrogateescape")
    if len(tag) != 2:
        raise Reject("is not a valid hash tag string with two characters")
    return tag


def parse_bytes(text: str, _resolve: Resolver) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class ListenAddr:
    """A parsed `listen:` value."""

    raw: str
    host: str  # host/IP, or the socket path
    port: int  # 0 for a unix socket
    unix: bool
    perm: int
    family: int
    sockaddr: Any


def _c_strtol_octal(text: str) -> tuple[int, bool]:
    """C strtol(text, NULL, 8): (value, out_of_range). No digits gives 0, as in C."""
    match = re.match(r"[ \t\n\v\f\r]*([+-]?)([0-7]*)", text)
    assert match is not None
    digits = match.group(2)
    value = int(digits, 8) if digits else 0
    if value > 2**63 - 1 + (match.group(1) == "-"):
        return 0, True
    return (-value if match.group(1) == "-" else value), False


def _parse_unix_listen(text: str) -> ListenAddr:
    path, perm = text, 0
    space = text.rfind(" ")
    if space >= 0:
        path = text[:space]
        value, out_of_range = _c_strtol_octal(text[space + 1 :])
        perm = value & 0xFFFFFFFF  # mode_t
        if out_of_range or perm > 0o777:
            raise Reject(
                'has an invalid file permission in "socket_path permission" format string'
            )
    if len(path.encode("utf-8", "surrogateescape")) >= UNIX_PATH_MAX:
        too_long = f"unix socket path longer than {UNIX_PATH_MAX - 1} bytes"
        raise Reject("has an invalid value", too_long)
    return ListenAddr(text, path, 0, True, perm, socket.AF_UNIX, path)


def parse_listen(text: str, resolve: Resolver) -> ListenAddr:
    if text.startswith("/"):
        return _parse_unix_listen(text)
    colon = text.rfind(":")
    if colon < 0:
        raise Reject('has an invalid "hostname:port" format string')
    port = nc_atoi(text[colon + 1 :])
    if port < 0 or not valid_port(port):
        raise Reject('has an invalid port in "hostname:port" format string')
    host = text[:colon]
    family, sockaddr = resolve(host, port)
    return ListenAddr(text, host, port, False, 0, family, sockaddr)


def _split_server(text: str) -> tuple[str, str | None, str, str | None, str]:
    """Split "host:port:weight [name]" / "/path:weight [name]" from the right.

    Returns (pname, name, weight, port, addr); port is None for a unix socket.
    """
    rest, name = text, None
    space = rest.rfind(" ")
    if space >= 0:
        rest, name = rest[:space], rest[space + 1 :]
    pname = rest if name else text
    colon = rest.rfind(":")
    if colon < 0:
        raise Reject("has an invalid " + _SERVER_FORMAT)
    rest, weight = rest[:colon], rest[colon + 1 :]
    colon = rest.rfind(":")
    if text.startswith("/"):
        if colon >= 0:
            raise Reject("has an invalid " + _SERVER_FORMAT)
        return pname, name, weight, None, rest
    if colon < 0 or "\0" in rest[:colon]:
        raise Reject("has an invalid " + _SERVER_FORMAT)
    return pname, name, weight, rest[colon + 1 :], rest[:colon]


def parse_server(text: str, _resolve: Resolver) -> ServerConf:
    pname, name, weight_text, port_text, addr = _split_server(text)
    weight = nc_atoi(weight_text)
    if weight < 0:
        raise Reject('has an invalid weight in "hostname:port:weight [name]" format string')
    if weight == 0:
        raise Reject('has a zero weight in "hostname:port:weight [name]" format string')
    port = 0
    if port_text is not None:
        port = nc_atoi(port_text)
        if port < 0 or not valid_port(port):
            raise Reject('has an invalid port in "hostname:port:weight [name]" format string')
    if name is None:  # hosts are resolved lazily, on every new server connection
        name = addr if port == KETAMA_PORT else f"{addr}:{port_text or ''}"
    return ServerConf(pname, name, addr, port, weight, port_text is None)
