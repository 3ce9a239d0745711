"""keyshard in front of real redis-servers: redis-py and raw sockets, every command class."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tests.support.procs import RedisServer
from tests.support.rig import Rig, assert_cut_everywhere, exchange, redis_client, resp


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with Rig("keyshard", nbackends=2, timeout=2000) as r:
        yield r


@pytest.fixture
def r(rig: Rig) -> redis.Redis:
    rig.flush_backends()
    return redis_client(rig.port)


def owner(rig: Rig, key: str) -> int:
    """Index of the backend that holds `key`."""
    found = [i for i, b in enumerate(rig.backends) if b.client().exists(key)]
    assert len(found) == 1, found
    return found[0]


def test_set_get_and_spread(rig: Rig, r: redis.Redis) -> None:
    for i in range(200):
        assert r.set(f"k{i}", f"v{i}") is True
    assert [r.get(f"k{i}") for i in range(200)] == [f"v{i}".encode() for i in range(200)]
    counts = [b.client().dbsize() for b in rig.backends]
    assert sum(counts) == 200 and min(counts) > 40, counts


def test_command_classes(r: redis.Redis) -> None:
    assert r.incr("n") == 1 and r.incrby("n", 5) == 6 and r.decr("n") == 5
    assert r.append("s", "ab") == 2 and r.strlen("s") == 2 and r.getrange("s", 0, 0) == b"a"
    assert r.hset("h", mapping={"a": "1", "b": "2"}) == 2 and r.hgetall("h") == {b"a": b"1", b"b": b"2"}
    assert r.rpush("l", *"abc") == 3 and r.lrange("l", 0, -1) == [b"a", b"b", b"c"]
    assert r.lpop("l") == b"a" and r.llen("l") == 2
    assert r.sadd("st", "x", "y") == 2 and r.smembers("st") == {b"x", b"y"}
    assert r.zadd("z", {"a": 1, "b": 2}) == 2 and r.zrange("z", 0, -1, withscores=True) == [(b"a", 1.0), (b"b", 2.0)]
    assert r.expire("s", 100) is True and 0 < r.ttl("s") <= 100
    assert r.type("h") == b"hash" and r.exists("h") == 1
    assert r.eval("return KEYS[1]", 1, "evk") == b"evk"
    assert r.pfadd("hll", "a", "b") == 1 and r.pfcount("hll") == 2
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.lpush("h", "x")


def test_split_commands(rig: Rig, r: redis.Redis) -> None:
    keys = [f"m{i}" for i in range(200)]
    assert r.mset({k: k.upper() for k in keys}) is True
    assert len({owner(rig, k) for k in keys}) == 2  # really split across both servers
    query = keys[::-1] + ["missing", keys[0], keys[0]]
    assert r.mget(query) == [k.upper().encode() for k in keys[::-1]] + [None, b"M0", b"M0"]
    assert r.touch(*keys[:5], "missing") == 5
    assert r.delete(*keys[:10], "missing", keys[0]) == 10
    assert r.unlink(*keys[10:]) == 190
    assert r.mget(keys) == [None] * 200


def test_split_fragment_error_is_invalid_argument() -> None:
    """A fragment answered with an error reply (-NOAUTH): -ERR Invalid argument, as nutcracker.

    Three keys on each server, so that every request stays under the 10 arguments redis 7
    accepts from an unauthenticated connection before it closes it.
    """
    stream = b""
    got = {}
    for kind in ("nutcracker", "keyshard"):
        with Rig(kind, nbackends=2) as rig:
            keys = keys_on_each(rig, 3)
            stream = (resp("MSET", *[x for k in keys for x in (k, "v")]) + resp("MGET", *keys)
                      + resp("DEL", *keys) + resp("PING"))
            rig.backends[1].client().config_set("requirepass", "locked")
            got[kind] = rig.exchange(stream)
    assert got["keyshard"] == got["nutcracker"]
    assert got["keyshard"] == b"-ERR Invalid argument\r\n" * 3 + b"+PONG\r\n"


def keys_on_each(rig: Rig, n: int) -> list[str]:
    """n keys on each backend of the rig, by the routing model (tests/compat/test_placement.py
    shows it places keys as nutcracker does)."""
    from keyshard.config import parse_config
    from keyshard.pool import ServerPool

    pool = ServerPool(parse_config(rig.conf, "rig.yml")[0])
    found: dict[int, list[str]] = {i: [] for i in range(len(rig.backends))}
    for i in range(1000):
        key = f"w{i}"
        holder = found[pool.route(key.encode(), 0.0)]
        if len(holder) < n:
            holder.append(key)
    return [k for keys in found.values() for k in keys]


def test_pipeline_spanning_servers_keeps_order(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"p{i}", i)
        pipe.get(f"p{i}")
        pipe.mget(f"p{i}", f"p{i // 2}", "nope")
        pipe.incr(f"c{i % 7}")
    out = pipe.execute()
    for i in range(500):
        assert out[4 * i] is True
        assert out[4 * i + 1] == str(i).encode()
        assert out[4 * i + 2] == [str(i).encode(), str(i // 2).encode(), None]


def test_pipelined_large_values_arrive_whole(r: redis.Redis) -> None:
    """Large requests pipelined in one stream: several to a server per write, past what one
    write takes (partial writes, resumed), and back in order, whole."""
    values = {f"big{i}": bytes([97 + i % 26]) * (3000 + 997 * i) for i in range(120)}
    pipe = r.pipeline(transaction=False)
    for key, value in values.items():
        pipe.set(key, value)
    assert pipe.execute() == [True] * len(values)
    pipe = r.pipeline(transaction=False)
    for key in values:
        pipe.get(key)
        pipe.strlen(key)
    out = pipe.execute()
    assert out[0::2] == list(values.values())
    assert out[1::2] == [len(v) for v in values.values()]
    assert r.mget(list(values)) == list(values.values())


def test_local_commands(rig: Rig) -> None:
    got = exchange(rig.port, resp("PING") + resp("SET", "q", "1") + resp("QUIT") + resp("GET", "q"))
    assert got == b"+PONG\r\n+OK\r\n"


@pytest.mark.parametrize("bad", [
    b"PING\r\n",  # inline
    resp("KEYS", "*"),
    resp("SELECT", "1"),
    resp("GET"),
    resp("GET", "a", "b"),
    resp("PING", "hello"),
    resp("MSET", "a", "1", "b"),
    b"*0\r\n",
    b"*1\r\n$x\r\n",
])
def test_bad_input_answers_earlier_then_closes(rig: Rig, bad: bytes) -> None:
    got = exchange(rig.port, resp("SET", "b1", "x") + resp("GET", "b1") + bad + resp("GET", "b1"))
    assert got == b"+OK\r\n$1\r\nx\r\n"


def test_stream_cut_at_every_byte(rig: Rig) -> None:
    stream = resp("SET", "cut", "v" * 5) + resp("MGET", "cut", "x1", "x2", "cut") + resp("PING")
    expected = b"+OK\r\n*4\r\n$5\r\nvvvvv\r\n$-1\r\n$-1\r\n$5\r\nvvvvv\r\n+PONG\r\n"
    assert_cut_everywhere(rig, stream, expected)


def test_hundred_concurrent_clients(rig: Rig) -> None:
    errors: list[str] = []

    def client(n: int) -> None:
        c = redis_client(rig.port)
        try:
            for i in range(50):
                key = f"cc:{n}:{i}"
                pipe = c.pipeline(transaction=False)
                pipe.set(key, f"{n}-{i}").get(key).mget(key, f"cc:{n}:0")
                out = pipe.execute()
                if out[1] != f"{n}-{i}".encode() or out[2] != [f"{n}-{i}".encode(), f"{n}-0".encode()]:
                    errors.append(f"{n}:{i}: {out}")
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(f"{n}: {e!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_huge_declared_length_does_not_allocate(rig: Rig, r: redis.Redis) -> None:
    before = rss_kb(rig.proxy.pid)
    socks = []
    for _ in range(20):
        s = rig.connect()
        s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2147483647\r\nabc")
        socks.append(s)
    assert r.set("still", "alive") and r.get("still") == b"alive"
    assert rss_kb(rig.proxy.pid) - before < 20_000
    for s in socks:
        s.close()


def test_client_that_never_reads_is_bounded(rig: Rig, r: redis.Redis) -> None:
    r.set("big", b"x" * 100_000)
    before = rss_kb(rig.proxy.pid)
    s = rig.connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    sent = 0
    req = resp("GET", "big") * 100
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sent < 200_000 * len(resp("GET", "big")) // 100:
        try:
            sent += s.send(req)
        except BlockingIOError:
            time.sleep(0.01)
    # ~8000+ GETs of 100 KB would be 800 MB of replies if nothing pushed back
    grown = rss_kb(rig.proxy.pid) - before
    assert grown < 600_000, f"proxy grew by {grown} KB"
    assert r.get("still-served") is None  # other clients are still served
    s.close()


def test_replies_to_a_slow_reader_stay_in_order(rig: Rig, r: redis.Redis) -> None:
    """Writer Rule 8: replies larger than a socket holds (6 MB), each followed by small ones,
    to a client that reads slowly, each request sent on its own so each reply is its own
    flush. A large reply goes out in part and the transport keeps the rest; the small
    replies behind it wait for that rest. Every byte arrives, in order."""
    big = {i: bytes([65 + i]) * (6_000_000 + i) for i in range(3)}
    for i, value in big.items():
        r.set(f"slow-big{i}", value)
    for j in range(100):
        r.set(f"slow-small{j}", f"s{j}")
    smalls = b"".join(b"$%d\r\ns%d\r\n" % (len(str(j)) + 1, j) for j in range(100))
    expected = b"".join(b"$%d\r\n%s\r\n" % (len(big[i]), big[i]) + smalls for i in range(3))
    s = rig.connect()
    got = bytearray()

    def read_slowly() -> None:
        time.sleep(0.05)
        while len(got) < len(expected):
            chunk = s.recv(4096)
            if not chunk:
                return
            got.extend(chunk)
            time.sleep(0.0001)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    for i in range(3):
        s.sendall(resp("GET", f"slow-big{i}"))
        time.sleep(0.002)
        for j in range(100):
            s.sendall(resp("GET", f"slow-small{j}"))
            time.sleep(0.0003)  # its own read and flush in the proxy
    reader.join(30)
    s.close()
    assert len(got) == len(expected)
    assert bytes(got) == expected


def test_auth_and_select(procs) -> None:
    with Rig("keyshard", nbackends=2, redis_auth="sesame", redis_db=3) as rig:
        for b in rig.backends:
            b.client().config_set("requirepass", "sesame")
        got = exchange(rig.port, resp("GET", "a") + resp("PING") + resp("AUTH", "bad")
                       + resp("AUTH", "sesame") + resp("SET", "a", "1") + resp("PING"))
        assert got == (b"-NOAUTH Authentication required\r\n" * 2 + b"-ERR invalid password\r\n"
                       + b"+OK\r\n+OK\r\n+PONG\r\n")
        held = [b.client(password="sesame", db=3).get("a") for b in rig.backends]
        assert held.count(b"1") == 1
    with Rig("keyshard", nbackends=1) as rig:
        assert exchange(rig.port, resp("AUTH", "x")) == b"-ERR Client sent AUTH, but no password is set\r\n"


def test_server_connections_round_robin(procs) -> None:
    with Rig("keyshard", nbackends=1, server_connections=3) as rig:
        c = redis_client(rig.port)
        for i in range(30):
            c.set(f"rr{i}", i)
        clients = rig.backends[0].client().client_list()
        assert len(clients) == 3 + 1  # three proxy connections and the one asking


def test_preconnect(procs) -> None:
    with Rig("keyshard", nbackends=2, preconnect=True, server_connections=3) as rig:
        time.sleep(0.3)
        assert [len(b.client().client_list()) for b in rig.backends] == [2, 2]


def test_unix_socket_backend(procs, tmp_path) -> None:
    sock = tmp_path / "r.sock"
    backend = procs(RedisServer(None, "--unixsocket", str(sock), "--unixsocketperm", "700").start())
    from tests.support.procs import Keyshard, free_port, pool_yaml

    port = free_port()
    proxy = procs(Keyshard(pool_yaml("u", port, [f"{sock}:1"], redis=True)).start(port))
    assert exchange(port, resp("SET", "u", "1") + resp("GET", "u")) == b"+OK\r\n$1\r\n1\r\n"
    assert backend.client().get("u") == b"1"
    assert proxy.alive()


def test_half_close_gets_every_reply(rig: Rig) -> None:
    """Replies answered in the same loop iteration as the client's FIN are still sent."""
    for i in range(200):
        got = exchange(rig.port, resp("SET", f"hc{i}", "v") + resp("GET", f"hc{i}"))
        assert got == b"+OK\r\n$1\r\nv\r\n", i
