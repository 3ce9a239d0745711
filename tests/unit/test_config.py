"""keyshard.config: nutcracker.yml loading, validation, naming and ordering.

The last part runs the real nutcracker 0.5.0 on the same files: both must accept and reject
the same configs, with the same `conf:` message, the same pool order and server names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from keyshard.config import (
    DIRECTIVES,
    HASHES,
    ConfigError,
    PoolConf,
    ServerConf,
    directive_docs,
    load_config,
    nc_atoi,
    nc_key,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
EXAMPLES = sorted(CONF_DIR.glob("*.yml"))
NUTCRACKER = shutil.which("nutcracker") or ("/usr/sbin/nutcracker"
                                            if os.path.exists("/usr/sbin/nutcracker") else None)

LISTEN = "  listen: 127.0.0.1:22121\n"
SERVERS = "  servers:\n   - 127.0.0.1:6379:1\n"


def pool(*lines: str, name: str = "a", listen: str = LISTEN, servers: str = SERVERS) -> str:
    body = "".join(f"  {line}\n" for line in lines)
    return f"{name}:\n{listen}{body}{servers}"


def load(text: str) -> list[PoolConf]:
    return parse_config(text, "t.yml")


def one(text: str) -> PoolConf:
    pools = load(text)
    assert len(pools) == 1
    return pools[0]


def reject(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text)
    return info.value


# --------------------------------------------------------------------------------------------
# Examples and defaults


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_loads(path: Path) -> None:
    pools = load_config(str(path))
    assert pools
    assert all(p.servers for p in pools)


def test_examples_cover_the_documented_features() -> None:
    pools = [p for path in EXAMPLES for p in load_config(str(path))]
    assert any(p.redis and p.hash_tag == b"{}" for p in pools)
    assert any(not p.redis and any(s.name != f"{s.host}:{s.port}" for s in p.servers)
               for p in pools)
    assert {"ketama", "modula", "random"} <= {p.distribution for p in pools}
    assert any(p.listen_unix and p.listen_perm == 0o600 for p in pools)
    assert any(p.auto_eject_hosts and p.server_failure_limit != 2 for p in pools)
    assert any(p.redis_auth and p.redis_db > 0 for p in pools)


def test_demo_keeps_its_ports() -> None:
    ports = {p.name: p.listen_port for p in load_config(str(CONF_DIR / "demo.yml"))}
    assert ports == {"alpha": 22121, "gamma": 22122}


def test_defaults_are_nutcrackers() -> None:
    p = one(pool())
    assert (p.hash, p.hash_tag, p.distribution) == ("fnv1a_64", None, "ketama")
    assert (p.timeout, p.backlog, p.client_connections) == (-1, 512, 0)
    assert (p.redis, p.redis_auth, p.redis_db) == (False, None, 0)
    assert (p.preconnect, p.auto_eject_hosts, p.tcpkeepalive) == (False, False, False)
    assert (p.server_connections, p.server_retry_timeout, p.server_failure_limit) == (1, 30000, 2)


def test_directive_table_defaults_are_the_poolconf_defaults() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(PoolConf)}
    for d in DIRECTIVES:
        if d.field is not None and not d.multi:
            assert defaults[d.field] == d.default, d.name
    assert [d.name for d in DIRECTIVES][:3] == ["listen", "hash", "hash_tag"]
    docs = directive_docs()
    assert all(f"`{d.name}`" in docs for d in DIRECTIVES)


def test_every_directive_is_applied() -> None:
    p = one(pool("hash: murmur", "hash_tag: '$$'", "distribution: modula", "timeout: 400",
                 "backlog: 1024", "client_connections: 5", "redis: true", "tcpkeepalive: true",
                 "redis_auth: s3cret", "redis_db: 3", "preconnect: true",
                 "auto_eject_hosts: true", "server_connections: 4",
                 "server_retry_timeout: 1500", "server_failure_limit: 0"))
    assert (p.hash, p.hash_tag, p.distribution, p.timeout, p.backlog) == (
        "murmur", b"$$", "modula", 400, 1024)
    assert (p.redis, p.tcpkeepalive, p.redis_auth, p.redis_db, p.preconnect) == (
        True, True, b"s3cret", 3, True)
    assert (p.auto_eject_hosts, p.server_connections, p.server_retry_timeout,
            p.server_failure_limit) == (True, 4, 1500, 0)
    # nutcracker 0.5.0 parses client_connections and then ignores it (issue #477)
    assert (p.client_connections, p.client_connections_configured) == (0, 5)


@pytest.mark.parametrize("name", HASHES)
def test_every_hash_name(name: str) -> None:
    assert one(pool(f"hash: {name}")).hash == name


def test_quoted_and_multibyte_values() -> None:
    assert one(pool("hash: 'md5'")).hash == "md5"
    assert one(pool('hash_tag: "{}"')).hash_tag == b"{}"
    assert one(pool("hash_tag: é")).hash_tag == "é".encode()  # two bytes, as in C


def test_numbers_are_read_like_nc_atoi() -> None:
    assert [nc_atoi(s) for s in ("0", "007", "4294967297", "2147483648", "", "-1", "1e3",
                                 " 1", "٣", "99999999999")] == [
        0, 7, 1, -1, -1, -1, -1, -1, -1, 1215752191]
    assert one(pool("timeout: 4294967297")).timeout == 1


# --------------------------------------------------------------------------------------------
# Rejections: one table, snippet -> nutcracker's phrase

S = "  servers:\n   - "
PERM_FORMAT = ('directive "listen" has an invalid file permission in "socket_path permission"'
               " format string")
SERVER_FORMAT = ('directive "servers" has an invalid "hostname:port:weight [name]"or'
                 ' "/path/unix_socket:weight [name]" format string')


def seq(*entries: str) -> str:
    """A servers: sequence of these entries."""
    return "  servers:\n" + "".join(f"   - {e}\n" for e in entries)

BAD: list[tuple[str, str, str]] = [
    # (id, config text, nutcracker's exact log message after "conf: ")
    ("hash", pool("hash: foo"), 'directive "hash" is not a valid hash'),
    ("hash-case", pool("hash: MD5"), 'directive "hash" is not a valid hash'),
    ("block-scalar", pool("hash: |\n    md5"), 'directive "hash" is not a valid hash'),
    ("hash_tag", pool("hash_tag: abc"),
     'directive "hash_tag" is not a valid hash tag string with two characters'),
    ("distribution", pool("distribution: consistent"),
     'directive "distribution" is not a valid distribution'),
    ("timeout-negative", pool("timeout: -1"), 'directive "timeout" is not a number'),
    ("timeout-hex", pool("timeout: 0x10"), 'directive "timeout" is not a number'),
    ("backlog", pool("backlog: 1k"), 'directive "backlog" is not a number'),
    ("redis_db", pool("redis: true", "redis_db: one"), 'directive "redis_db" is not a number'),
    ("bool-yes", pool("redis: yes"), 'directive "redis" is not "true" or "false"'),
    ("bool-True", pool("preconnect: True"), 'directive "preconnect" is not "true" or "false"'),
    ("bool-1", pool("tcpkeepalive: 1"), 'directive "tcpkeepalive" is not "true" or "false"'),
    ("duplicate", pool("timeout: 1", "timeout: 2"), 'directive "timeout" is a duplicate'),
    ("duplicate-bad-value", pool("hash: md5", "hash: foo"), 'directive "hash" is a duplicate'),
    ("duplicate-listen", pool("listen: 127.0.0.1:22122"), 'directive "listen" is a duplicate'),
    ("unknown", pool("foo: 1"), 'directive "foo" is unknown'),
    ("case-sensitive", pool("Hash: md5"), 'directive "Hash" is unknown'),
    ("reuseport", pool("reuseport: true"), 'directive "reuseport" is unknown'),
    ("redis_auth-memcache", pool("redis_auth: pw"),
     'directive "redis_auth:" is only valid for a redis pool'),
    ("server_connections-0", pool("server_connections: 0"),
     'directive "server_connections:" cannot be 0'),
    ("listen-missing", "a:\n" + SERVERS, 'directive "listen:" is missing'),
    ("listen-no-port", pool(listen="  listen: 127.0.0.1\n"),
     'directive "listen" has an invalid "hostname:port" format string'),
    ("listen-port-0", pool(listen="  listen: 127.0.0.1:0\n"),
     'directive "listen" has an invalid port in "hostname:port" format string'),
    ("listen-port-65536", pool(listen="  listen: 127.0.0.1:65536\n"),
     'directive "listen" has an invalid port in "hostname:port" format string'),
    ("listen-port-name", pool(listen="  listen: 127.0.0.1:redis\n"),
     'directive "listen" has an invalid port in "hostname:port" format string'),
    ("listen-empty-host", pool(listen="  listen: :22121\n"),
     'directive "listen" has an invalid value'),
    ("listen-perm-1000", pool(listen="  listen: /tmp/ks.sock 1000\n"),
     PERM_FORMAT),
    ("listen-perm-negative", pool(listen="  listen: /tmp/ks.sock -1\n"),
     PERM_FORMAT),
    ("listen-path-too-long", pool(listen=f"  listen: /tmp/{'x' * 103}\n"),
     'directive "listen" has an invalid value'),
    ("server-no-weight", pool(servers=S + "127.0.0.1:6379\n"),
     SERVER_FORMAT),
    ("server-unix-no-weight", pool(servers=S + "/tmp/r.sock\n"),
     SERVER_FORMAT),
    ("server-unix-colon", pool(servers=S + "/tmp/r.sock:6379:1\n"),
     SERVER_FORMAT),
    ("server-weight-0", pool(servers=S + "127.0.0.1:6379:0\n"),
     'directive "servers" has a zero weight in "hostname:port:weight [name]" format string'),
    ("server-weight-x", pool(servers=S + "127.0.0.1:6379:x\n"),
     'directive "servers" has an invalid weight in "hostname:port:weight [name]" format string'),
    ("server-two-names", pool(servers=S + "127.0.0.1:6379:1 a b\n"),
     'directive "servers" has an invalid weight in "hostname:port:weight [name]" format string'),
    ("server-port-0", pool(servers=S + "127.0.0.1:0:1\n"),
     'directive "servers" has an invalid port in "hostname:port:weight [name]" format string'),
    ("server-port-65536", pool(servers=S + "127.0.0.1:65536:1\n"),
     'directive "servers" has an invalid port in "hostname:port:weight [name]" format string'),
    ("server-same-name", pool(servers=S + "127.0.0.1:6379:1\n   - 127.0.0.1:6379:2\n"),
     "pool 'a' has servers with same name '127.0.0.1:6379'"),
    ("server-same-explicit-name", pool(servers=S + "127.0.0.1:1:1 x\n   - 127.0.0.2:2:1 x\n"),
     "pool 'a' has servers with same name 'x'"),
    ("no-servers", "a:\n  listen:\n   - 127.0.0.1:22121\n", "pool 'a' has no servers"),
    ("same-listen", pool() + pool(name="b"),
     "pools 'a' and 'b' have the same listen address '127.0.0.1:22121'"),
    ("same-pool-name", pool() + pool(listen="  listen: 127.0.0.1:22122\n"),
     "'t.yml' has pools with same name a'"),
    ("empty-file", "", "'t.yml' must contain only 1 document; found 0 documents"),
    ("comments-only", "# nothing\n", "'t.yml' must contain only 1 document; found 0 documents"),
    ("two-documents", pool() + "---\n" + pool(name="b"),
     "'t.yml' must contain only 1 document; found 2 documents"),
    ("document-start", "---\n" + pool(), "document start token (5) is disallowed"),
    ("document-end", pool() + "...\n", "document end token (6) is disallowed"),
    ("version-directive", "%YAML 1.1\n---\n" + pool(), "version directive token (3) is disallowed"),
    ("flow-sequence", pool(servers="  servers: [127.0.0.1:6379:1]\n"),
     "flow sequence start token (10) is disallowed"),
    ("flow-mapping", "a: {listen: 127.0.0.1:22121}\n",
     "flow mapping start token (12) is disallowed"),
    ("anchor", pool("hash: &h md5"), "anchor token (19) is disallowed"),
    ("tag", pool("hash: !!str md5"), "tag token (20) is disallowed"),
    ("undefined-alias", pool("hash: *h"), "failed (err 5) to get the next yaml document"),
    ("scanner-error", pool(listen="  listen: 127.0.0.1:\n"),
     "failed (err 3) to get the next yaml document"),
    ("parser-error", "a:\n  listen: 127.0.0.1:22121\n servers:\n   - x\n",
     "failed (err 4) to get the next yaml document"),
    ("depth-3", pool("x:\n    y: 1"), "'t.yml' has a depth greater than 2"),
    ("sentinels", pool() + "  sentinels:\n   - 127.0.0.1:26379:1\n",
     "'t.yml' has more than one sequence directive"),
    ("servers-twice", pool() + S + "127.0.0.1:6380:1\n",
     "'t.yml' has more than one sequence directive"),
    ("no-sequence", "a:\n" + LISTEN, "'t.yml' missing sequence directive at depth 2"),
    ("root-sequence", "- a\n- b\n", "'t.yml' has sequence at depth 0 instead of 2"),
    ("root-scalar", "hello\n", "'t.yml' has invalid empty \"key:\" at depth 0"),
    ("pool-scalar", "a: b\n", "'t.yml' has invalid mapping \"key:\" at depth 1"),
]

# nutcracker rejects an empty scalar without logging anything (nc_message None).
EMPTY: list[tuple[str, str, str]] = [
    ("empty-value", pool("hash:"), 'directive "hash" has an empty value'),
    ("empty-quoted", pool("redis: true", "redis_auth: ''"), 'directive "redis_auth" has an empty'),
    ("empty-listen", "a:\n  listen:\n" + SERVERS, 'directive "listen" has an empty value'),
    ("empty-server", "a:\n" + LISTEN + "  servers:\n   -\n", 'directive "servers" has an empty'),
    ("empty-key", pool("'': x"), "directive name is empty"),
    ("empty-pool-name", pool(name="''"), "pool name is empty"),
]


@pytest.mark.parametrize("text,phrase", [(t, p) for _, t, p in BAD], ids=[i for i, _, _ in BAD])
def test_rejections_use_nutcrackers_phrase(text: str, phrase: str) -> None:
    err = reject(text)
    assert err.nc_message == phrase
    line = str(err)
    assert "\n" not in line and line.startswith("conf: file 't.yml'")
    readable = phrase.replace("'t.yml' ", "").replace("pool 'a' ", "")
    readable = readable.replace("same name a'", "same name 'a'")
    assert readable in line


@pytest.mark.parametrize("text,phrase", [(t, p) for _, t, p in EMPTY], ids=[i for i, _, _ in EMPTY])
def test_empty_scalars_are_rejected(text: str, phrase: str) -> None:
    err = reject(text)
    assert err.nc_message is None
    assert phrase in str(err)


def test_message_names_file_pool_and_line() -> None:
    err = reject("b:\n" + LISTEN + SERVERS
                 + "a:\n  listen: 127.0.0.1:22122\n  hash: foo\n" + SERVERS)
    assert str(err) == ("conf: file 't.yml', pool 'a', line 7: "
                        'directive "hash" is not a valid hash (value "foo")')
    assert (err.path, err.pool, err.line) == ("t.yml", "a", 7)


def test_secret_values_are_not_echoed() -> None:
    err = reject(pool("redis: true", "redis_auth: hunter2", "redis_auth: hunter3"))
    assert "hunter" not in str(err)
    assert "hunter" not in str(reject(pool("redis_auth: hunter2")))


def test_first_error_in_document_order_wins() -> None:
    bad_hash = 'directive "hash" is not a valid hash'
    assert reject(pool("hash: foo", "timeout: x")).nc_message == bad_hash
    assert reject(pool("timeout: ''", "hash: foo")).nc_message is None
    # per-pool checks run after every directive of every pool was read
    text = ("b:\n" + LISTEN + "  redis_auth: x\n" + SERVERS
            + pool("hash: foo", name="c", listen="  listen: 127.0.0.1:22123\n"))
    assert reject(text).nc_message == bad_hash
    # pools are checked in file order: b (redis_auth) before a (server_connections)
    text = ("b:\n" + LISTEN + "  redis_auth: x\n" + SERVERS
            + "a:\n  server_connections: 0\n  listen: 127.0.0.1:22122\n" + SERVERS)
    assert "redis_auth" in str(reject(text))


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/nutcracker.yml")
    assert info.value.nc_message == (
        "failed to open configuration '/nonexistent/nutcracker.yml': No such file or directory")


def test_listen_resolution_failure_uses_the_resolver() -> None:
    def refuse(host: str, port: int) -> tuple[int, Any]:
        from keyshard.config import resolve_tcp

        return resolve_tcp("", port)

    with pytest.raises(ConfigError) as info:
        parse_config(pool(), "t.yml", resolver=refuse)
    assert info.value.nc_message == 'directive "listen" has an invalid value'
    assert "address resolution of node" in str(info.value)


# --------------------------------------------------------------------------------------------
# Order and names


def test_pools_are_ordered_by_name_shorter_first() -> None:
    text = "".join(pool(name=n, listen=f"  listen: 127.0.0.1:{22121 + i}\n")
                   for i, n in enumerate(["zeta", "beta", "aa", "b", "ab"]))
    assert [p.name for p in load(text)] == ["b", "aa", "ab", "beta", "zeta"]


def test_servers_are_ordered_by_name_shorter_first() -> None:
    servers = seq("127.0.0.1:6390:1", "127.0.0.1:6381:1", "10.0.0.1:11211:1",
                  "127.0.0.1:6380:1 zz", "127.0.0.1:6382:1 b")
    names = [s.name for s in one(pool(servers=servers)).servers]
    assert names == ["b", "zz", "10.0.0.1", "127.0.0.1:6381", "127.0.0.1:6390"]


def test_nc_key_compares_bytes() -> None:
    assert sorted(["é", "ab", "b"], key=nc_key) == ["b", "ab", "é"]


SERVER_CASES = [
    ("127.0.0.1:6379:1", ServerConf("127.0.0.1:6379:1", "127.0.0.1:6379", "127.0.0.1", 6379, 1,
                                    False)),
    ("127.0.0.1:11211:2", ServerConf("127.0.0.1:11211:2", "127.0.0.1", "127.0.0.1", 11211, 2,
                                     False)),
    ("cache1:11211:1 c1", ServerConf("cache1:11211:1", "c1", "cache1", 11211, 1, False)),
    ("/tmp/r.sock:1", ServerConf("/tmp/r.sock:1", "/tmp/r.sock:", "/tmp/r.sock", 0, 1, True)),
    ("/tmp/r.sock:3 r", ServerConf("/tmp/r.sock:3", "r", "/tmp/r.sock", 0, 3, True)),
    ("::1:6379:1", ServerConf("::1:6379:1", "::1:6379", "::1", 6379, 1, False)),
    ("127.0.0.1:06379:1", ServerConf("127.0.0.1:06379:1", "127.0.0.1:06379", "127.0.0.1", 6379,
                                     1, False)),
    ("h:1:1:2", ServerConf("h:1:1:2", "h:1:1", "h:1", 1, 2, False)),
    ("'127.0.0.1:6379:1 '", ServerConf("127.0.0.1:6379:1 ", "", "127.0.0.1", 6379, 1, False)),
]


@pytest.mark.parametrize("entry,expected", SERVER_CASES, ids=[e for e, _ in SERVER_CASES])
def test_server_entries(entry: str, expected: ServerConf) -> None:
    assert one(pool(servers=S + entry + "\n")).servers == [expected]


def test_weights_count_with_names() -> None:
    p = one(pool(servers=S + "127.0.0.1:6379:1 a\n   - 127.0.0.1:6380:2 bb\n"))
    assert [(s.name, s.weight) for s in p.servers] == [("a", 1), ("bb", 2)]


def test_listen_ipv6_without_brackets() -> None:
    p = one(pool(listen="  listen: ::1:22121\n"))
    assert (p.listen, p.listen_host, p.listen_port, p.listen_unix) == ("::1:22121", "::1",
                                                                      22121, False)
    assert p.listen_family == socket.AF_INET6 and p.listen_sockaddr[:2] == ("::1", 22121)


def test_listen_tcp_resolved_at_load() -> None:
    p = one(pool(listen="  listen: 127.0.0.1:022121\n"))
    assert (p.listen_port, p.listen_family, p.listen_sockaddr) == (
        22121, socket.AF_INET, ("127.0.0.1", 22121))


@pytest.mark.parametrize("value,path,perm", [
    ("/tmp/ks.sock 0600", "/tmp/ks.sock", 0o600),
    ("/tmp/ks.sock", "/tmp/ks.sock", 0),
    ("/tmp/ks.sock 777", "/tmp/ks.sock", 0o777),
    ("/tmp/ks.sock 999", "/tmp/ks.sock", 0),  # not octal: strtol gives 0, no chmod
    ("/tmp/a b/ks.sock", "/tmp/a", 0),  # the last space starts the permission
])
def test_listen_unix(value: str, path: str, perm: int) -> None:
    p = one(pool(listen=f"  listen: {value}\n"))
    assert (p.listen, p.listen_host, p.listen_port, p.listen_unix, p.listen_perm) == (
        value, path, 0, True, perm)
    assert (p.listen_family, p.listen_sockaddr) == (socket.AF_UNIX, path)


def test_a_sequence_applies_its_key_per_item() -> None:
    # nutcracker's parser does not care which key holds the pool's one sequence
    p = one("a:\n  servers: 127.0.0.1:6379:1\n  listen:\n   - 127.0.0.1:22121\n")
    assert (p.listen_port, [s.name for s in p.servers]) == (22121, ["127.0.0.1:6379"])


def test_same_listen_host_spelled_differently_is_accepted() -> None:
    text = pool(listen="  listen: localhost:22121\n") + pool(name="b")
    assert [p.listen for p in load(text)] == ["localhost:22121", "127.0.0.1:22121"]


# --------------------------------------------------------------------------------------------
# Against the real nutcracker 0.5.0

needs_nutcracker = pytest.mark.skipif(NUTCRACKER is None, reason="nutcracker is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nutcracker_verdict(path: Path) -> tuple[bool, str | None]:
    """(accepted, the last `conf:` line nutcracker logs) for the config at `path`."""
    assert NUTCRACKER is not None
    test = subprocess.run([NUTCRACKER, "-t", "-c", str(path)], capture_output=True, timeout=10,
                          check=False)
    if test.returncode == 0:
        return True, None
    log = path.with_suffix(".log")
    # -t hides the reason; a normal start logs it and exits 1 (the config is known bad).
    subprocess.run([NUTCRACKER, "-c", str(path), "-o", str(log), "-s", str(_free_port()),
                    "-a", "127.0.0.1"], capture_output=True, timeout=10, check=False)
    lines = [re.sub(r"^\[[^]]*\] \S+ ", "", line) for line in log.read_text().splitlines()]
    conf = [line[len("conf: "):] for line in lines if line.startswith("conf: ")]
    return False, (conf[-1] if conf else None)


def keyshard_verdict(path: Path) -> tuple[bool, str | None]:
    try:
        load_config(str(path))
    except ConfigError as err:
        return False, err.nc_message
    return True, None


@needs_nutcracker
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_nutcracker_accepts_every_example(path: Path) -> None:
    assert nutcracker_verdict(path) == (True, None) == keyshard_verdict(path)


ACCEPTED_QUIRKS = [
    pool("tcpkeepalive: true"),
    pool(listen="  listen: ::1:22121\n"),
    pool(listen="  listen: 127.0.0.1:4294989417\n"),  # the port wraps around to 22121
    pool(listen="  listen: /tmp/ks-test.sock abc\n"),
    pool(servers=S + "host:6379:1:2\n"),
    pool(servers=S + ":6379:1\n"),
    pool(servers=S + "'/tmp/r.sock:1 '\n"),
    pool(servers=S + "127.0.0.1:6379:4294967297\n"),
    "a:\n  servers: 127.0.0.1:6379:1\n  listen:\n   - 127.0.0.1:22121\n",
    pool(listen="  listen: localhost:22121\n") + pool(name="b"),
    pool("hash_tag: é", "timeout: 0", "hash: >-\n    md5"),
]


@needs_nutcracker
@pytest.mark.parametrize("text", [t for _, t, _ in BAD] + [t for _, t, _ in EMPTY]
                         + ACCEPTED_QUIRKS)
def test_agrees_with_nutcracker(text: str, tmp_path: Path) -> None:
    path = tmp_path / "t.yml"
    path.write_text(text)
    theirs = nutcracker_verdict(path)
    ours = keyshard_verdict(path)
    if ours[1] is not None:
        ours = (ours[0], ours[1].replace(f"'{path}'", "'t.yml'"))
    if theirs[1] is not None:
        theirs = (theirs[0], theirs[1].replace(f"'{path}'", "'t.yml'"))
    assert ours == theirs


def _stats_document(port: int, deadline: float) -> dict[str, Any]:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            return dict(json.loads(data))
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@needs_nutcracker
def test_pool_and_server_order_match_nutcrackers_stats(tmp_path: Path) -> None:
    assert NUTCRACKER is not None
    ports = [_free_port() for _ in range(4)]
    servers = seq("127.0.0.1:6390:1", "127.0.0.1:6381:1", "127.0.0.1:11211:1",
                  "127.0.0.1:6380:1 zz", "/tmp/ks-none.sock:1", "127.0.0.1:6382:2 b")
    text = "".join(pool(name=n, listen=f"  listen: 127.0.0.1:{p}\n", servers=servers)
                   for n, p in zip(["zeta", "beta", "aa"], ports))
    path = tmp_path / "order.yml"
    path.write_text(text)
    proc = subprocess.Popen([NUTCRACKER, "-c", str(path), "-s", str(ports[3]), "-a", "127.0.0.1",
                             "-o", str(tmp_path / "nc.log")])
    try:
        stats = _stats_document(ports[3], time.monotonic() + 10)
    finally:
        proc.terminate()
        proc.wait(10)
    theirs = {k: [s for s in v if isinstance(v[s], dict)] for k, v in stats.items()
              if isinstance(v, dict)}
    ours = {p.name: [s.name for s in p.servers] for p in load_config(str(path))}
    assert list(theirs) == list(ours) == ["aa", "beta", "zeta"]
    assert theirs == ours
