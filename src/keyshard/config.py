"""Configuration: the nutcracker.yml directive table, YAML loading, validation.

This module owns turning a nutcracker.yml (the 0.5.0 dialect) into `list[PoolConf]`. It accepts
exactly the files nutcracker 0.5.0 accepts, rejects exactly those it rejects, and explains a
rejection with nutcracker's own `conf:` phrase. The YAML checks are in `config_yaml`, the
parser of each kind of value in `config_values`; the table and the checks around it are here.

Rule 1: `DIRECTIVES` is the single source of truth. The key names, their parsers/validators,
        their defaults (which are the `PoolConf` defaults) and their documentation
        (`directive_docs()`) all come from that one table.
Rule 2: checks run in nutcracker's order, and the first failure wins: (a) the stream holds
        exactly one YAML document, (b) no disallowed token (flow style, anchors, aliases,
        tags, directives, `---`, `...`), (c) the event structure (pools of `key: scalar` with
        exactly one sequence each, depth <= 2), (d) every scalar in document order: empty
        scalars, unknown or duplicate directives, bad values, (e) each pool in file order:
        listen present, server_connections, redis_auth, servers, (f) across pools: same
        listen string, same pool name.
Rule 3: values are the raw YAML scalar text, never YAML-typed: numbers are read like
        nutcracker's `nc_atoi` (ASCII digits only, wrapping like a C int), booleans are
        exactly `true`/`false`, and a sequence under any key applies that key once per item.
Rule 4: names compare as nutcracker's `string_compare`: UTF-8 bytes, shorter first, then
        bytewise. Pools come out ordered by name, servers by server name; that order is the
        server index used by the distributions and the order of the stats.
Rule 5: the only I/O is reading the file and resolving the listen address (getaddrinfo, first
        result), which nutcracker does at load time; the resolver can be replaced.
Rule 6: a rejection raises `ConfigError`; `str()` is one line naming the file, the line, the
        pool and nutcracker's phrase; `.nc_message` is the exact text nutcracker logs (None
        where nutcracker logs nothing, e.g. for an empty scalar). Secrets are never echoed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from keyshard.config_values import (
    DISTRIBUTIONS,
    HASHES,
    ListenAddr,
    Reject,
    Resolver,
    ServerConf,
    nc_atoi,
    nc_key,
    parse_bool,
    parse_bytes,
    parse_distribution,
    parse_hash,
    parse_hash_tag,
    parse_listen,
    parse_num,
    parse_server,
    resolve_tcp,
    valid_port,
)
from keyshard.config_yaml import (
    ConfigError,
    Where,
    check_structure,
    check_tokens,
    fail,
    line_of,
    load_document,
    quote,
)


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
    client_connections: int = 0  # effective limit: always 0 (unlimited), as nutcracker 0.5.0
    tcpkeepalive: bool = False
    servers: list[ServerConf] = field(default_factory=list)  # sorted as nutcracker sorts them
    # The value written in the file; nutcracker parses it and then ignores it (issue #477).
    client_connections_configured: int = 0
    # The resolved listen address (first getaddrinfo result): family and sockaddr;
    # AF_UNIX and the path for a unix socket.
    listen_family: int = 0
    listen_sockaddr: Any = None


# --------------------------------------------------------------------------------------------
# The directive table


@dataclass(frozen=True)
class Directive:
    """One key of a pool. `field` is the PoolConf attribute it fills (None: several)."""

    name: str
    type: str
    default: Any  # also the PoolConf default; None = required or unset
    parse: Callable[[str, Resolver], Any]
    description: str
    field: str | None
    multi: bool = False  # every occurrence appends (servers); otherwise a repeat is a duplicate
    secret: bool = False  # never echo the value in a message


DIRECTIVES: tuple[Directive, ...] = (
    Directive("listen", "host:port | /path [perm]", None, parse_listen,
              "Required. Address of the pool's listener: `host:port` (parsed from the last ':',"
              " so IPv6 is written without brackets) or a unix socket path with an optional"
              " octal permission. Resolved at load time.", None),
    Directive("hash", "enum", "fnv1a_64", parse_hash,
              "Key hash function: " + ", ".join(HASHES) + ".", "hash"),
    Directive("hash_tag", "2 bytes", None, parse_hash_tag,
              "Two bytes; only the part of the key between them is hashed.", "hash_tag"),
    Directive("distribution", "enum", "ketama", parse_distribution,
              "Key distribution: " + ", ".join(DISTRIBUTIONS) + ".", "distribution"),
    Directive("timeout", "int ms", -1, parse_num,
              "Per-request server timeout in ms; -1 (the default) or 0 waits forever.", "timeout"),
    Directive("backlog", "int", 512, parse_num, "listen(2) backlog of the pool.", "backlog"),
    Directive("client_connections", "int", 0, parse_num,
              "Parsed, then ignored by nutcracker 0.5.0: clients are unlimited.",
              "client_connections_configured"),
    Directive("redis", "bool", False, parse_bool,
              "true: Redis protocol; false: memcached ASCII protocol.", "redis"),
    Directive("tcpkeepalive", "bool", False, parse_bool,
              "SO_KEEPALIVE on accepted client connections.", "tcpkeepalive"),
    Directive("redis_auth", "string", None, parse_bytes,
              "Password sent with AUTH on every new server connection; clients must AUTH too."
              " Redis pools only.", "redis_auth", secret=True),
    Directive("redis_db", "int", 0, parse_num,
              "Database selected on every new server connection when > 0.", "redis_db"),
    Directive("preconnect", "bool", False, parse_bool,
              "Open one connection per server at start-up.", "preconnect"),
    Directive("auto_eject_hosts", "bool", False, parse_bool,
              "Take a failing server out of the distribution for server_retry_timeout.",
              "auto_eject_hosts"),
    Directive("server_connections", "int", 1, parse_num,
              "Maximum connections per server (not 0).", "server_connections"),
    Directive("server_retry_timeout", "int ms", 30000, parse_num,
              "How long an ejected server stays out, in ms.", "server_retry_timeout"),
    Directive("server_failure_limit", "int", 2, parse_num,
              "Consecutive failures that eject a server.", "server_failure_limit"),
    Directive("servers", "sequence", None, parse_server,
              "Required. `host:port:weight [name]` or `/path/to.sock:weight [name]`; the name"
              " (default `host:port`, `host` for port 11211, `path:`) is the hashing identity.",
              "servers", multi=True),
)
DIRECTIVE_BY_NAME = {d.name: d for d in DIRECTIVES}


def directive_docs() -> str:
    """A Markdown table of the directives, derived from DIRECTIVES."""
    rows = ["| directive | type | default | meaning |", "|---|---|---|---|"]
    for d in DIRECTIVES:
        default = "required" if d.name in ("listen", "servers") else _doc_value(d.default)
        rows.append(f"| `{d.name}` | {d.type} | {default} | {d.description} |")
    return "\n".join(rows) + "\n"


def _doc_value(value: Any) -> str:
    if value is None:
        return "none"
    return f"`{json.dumps(value)}`"


# --------------------------------------------------------------------------------------------
# Parsing: every scalar in document order (nutcracker's conf_parse)


@dataclass
class _Draft:
    """A pool as read, before the per-pool checks."""

    name: str
    line: int | None
    values: dict[str, Any] = field(default_factory=dict)


def _scalar_text(node: Any, where: Where, empty: str) -> str:
    """The text of a scalar; nutcracker fails (silently) on an empty one."""
    if not isinstance(node, yaml.ScalarNode):  # excluded by _check_structure
        raise fail(where, "unexpected YAML structure", None)
    if node.value == "":
        raise fail(where, empty, None)
    return str(node.value)


def _items(node: Any) -> Iterator[Any]:
    """A directive's value nodes: the scalar, or each item of its sequence."""
    if isinstance(node, yaml.SequenceNode):
        yield from node.value
    else:
        yield node


def _apply(draft: _Draft, key: str, text: str, where: Where, resolve: Resolver) -> None:
    directive = DIRECTIVE_BY_NAME.get(key)
    if directive is None:
        phrase = f'directive "{key}" is unknown'
        raise fail(where, phrase, phrase)
    if not directive.multi and key in draft.values:
        phrase = f'directive "{key}" is a duplicate'
        raise fail(where, phrase, phrase)
    try:
        value = directive.parse(text, resolve)
    except Reject as reject:
        phrase = f'directive "{key}" {reject.phrase}'
        detail = reject.detail or (None if directive.secret else f"value {quote(text)}")
        raise fail(where, phrase, phrase, detail) from None
    if directive.multi:
        draft.values.setdefault(key, []).append(value)
    else:
        draft.values[key] = value


def _read_pool(name_node: Any, body: Any, path: str, resolve: Resolver) -> _Draft:
    name = _scalar_text(name_node, Where(path, line_of(name_node)), "pool name is empty")
    draft = _Draft(name, line_of(name_node))
    for key_node, value_node in getattr(body, "value", ()):
        where = Where(path, line_of(key_node), name)
        key = _scalar_text(key_node, where, "directive name is empty")
        for item in _items(value_node):
            where = Where(path, line_of(item), name)
            text = _scalar_text(item, where, f'directive "{key}" has an empty value')
            _apply(draft, key, text, where, resolve)
    return draft


# --------------------------------------------------------------------------------------------
# Post-validation: each pool, then across pools (nutcracker's conf_post_validate)


def _first_duplicate(names: Iterable[str]) -> str | None:
    """The first name equal to its predecessor in an already sorted sequence."""
    previous = None
    for name in names:
        if name == previous:
            return name
        previous = name
    return None


def _check_pool(draft: _Draft, path: str) -> list[ServerConf]:
    """nutcracker's per-pool checks, in its order; returns the servers sorted by name."""
    where, values = Where(path, draft.line, draft.name), draft.values
    for failed, phrase in (
        ("listen" not in values, 'directive "listen:" is missing'),
        (values.get("server_connections") == 0, 'directive "server_connections:" cannot be 0'),
        ("redis_auth" in values and not values.get("redis", False),
         'directive "redis_auth:" is only valid for a redis pool'),
    ):
        if failed:
            raise fail(where, phrase, phrase)
    servers = sorted(values.get("servers", []), key=lambda s: nc_key(s.name))
    if not servers:
        raise fail(where, "has no servers", f"pool '{draft.name}' has no servers")
    same = _first_duplicate(s.name for s in servers)
    if same is not None:
        text = f"has servers with same name '{same}'"
        raise fail(where, text, f"pool '{draft.name}' {text}")
    return servers


def _build_pool(draft: _Draft, servers: list[ServerConf]) -> PoolConf:
    values = draft.values
    listen: ListenAddr = values["listen"]
    settings = {
        d.field: values.get(d.name, d.default)
        for d in DIRECTIVES
        if d.field is not None and not d.multi
    }
    return PoolConf(
        name=draft.name, listen=listen.raw, listen_host=listen.host, listen_port=listen.port,
        listen_unix=listen.unix, listen_perm=listen.perm, listen_family=listen.family,
        listen_sockaddr=listen.sockaddr, servers=servers, **settings,
    )


def _order_pools(pools: list[PoolConf], path: str) -> list[PoolConf]:
    """Reject a repeated listen string or pool name; return the pools ordered by name."""
    by_listen = sorted(pools, key=lambda p: nc_key(p.listen))
    for first, second in itertools.pairwise(by_listen):
        if first.listen == second.listen:
            text = (f"pools '{first.name}' and '{second.name}' have the same listen "
                    f"address '{first.listen}'")
            raise fail(Where(path), text, text)
    by_name = sorted(by_listen, key=lambda p: nc_key(p.name))
    same = _first_duplicate(p.name for p in by_name)
    if same is not None:
        # nutcracker's own message lacks the opening quote; ours has both.
        raise fail(Where(path), f"has pools with same name '{same}'",
                    f"'{path}' has pools with same name {same}'")
    return by_name


# --------------------------------------------------------------------------------------------
# Entry points


def _parse(stream: str | bytes, path: str, resolve: Resolver) -> list[PoolConf]:
    root = load_document(stream, path)
    check_tokens(stream, path)
    check_structure(stream, path)
    drafts = [_read_pool(k, v, path, resolve) for k, v in getattr(root, "value", ())]
    if not drafts:
        raise fail(Where(path), "has no pools", f"'{path}' has no pools")
    pools = [_build_pool(d, _check_pool(d, path)) for d in drafts]
    return _order_pools(pools, path)


def parse_config(text: str, path: str, *, resolver: Resolver | None = None) -> list[PoolConf]:
    """Pools of a nutcracker.yml given as text; `path` only names it in messages."""
    return _parse(text, path, resolver or resolve_tcp)


def load_config(path: str, *, resolver: Resolver | None = None) -> list[PoolConf]:
    """Pools of the nutcracker.yml at `path`, ordered by name; ConfigError if nutcracker
    0.5.0 would refuse it."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        reason = err.strerror or str(err)
        raise fail(Where(path), f"failed to open configuration: {reason}",
                    f"failed to open configuration '{path}': {reason}") from None
    return _parse(data, path, resolver or resolve_tcp)


__all__ = [
    "DIRECTIVES", "DISTRIBUTIONS", "HASHES", "ConfigError", "Directive", "ListenAddr",
    "PoolConf", "ServerConf", "directive_docs", "load_config", "nc_atoi", "nc_key",
    "parse_config", "resolve_tcp", "valid_port",
]
