"""Accept/reject decisions of the Redis request parser, checked against the real nutcracker.

One nutcracker 0.5.0 (-v 4) in front of one redis-server. Each candidate is one complete byte
string on its own connection: nutcracker rejects it when it closes the connection without a
reply; it accepts it when it forwards it (a reply comes back, or the connection stays open).
keyshard's parser must agree: an error with no request, or exactly one request of those bytes.
Candidates: hand-picked edge cases, then a few hundred random mutations of valid requests.
"""

from __future__ import annotations

import random
import shutil
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from keyshard.protocol.redis import RedisRequestParser
from keyshard.protocol.redis_commands import COMMANDS
from tests.support.rig import Rig

pytestmark = pytest.mark.skipif(
    not (shutil.which("nutcracker") or shutil.which("/usr/sbin/nutcracker"))
    or not shutil.which("redis-server"), reason="needs nutcracker and redis-server")

K = 16336


def cmd(*args: bytes | str) -> bytes:
    out = b"*%d\r\n" % len(args)
    for arg in args:
        raw = arg.encode("latin-1") if isinstance(arg, str) else arg
        out += b"$%d\r\n%s\r\n" % (len(raw), raw)
    return out


HAND_PICKED = [
    cmd("GET", "a"), cmd("gEt", "a"), cmd("GET", ""), cmd("GET", "a" * (K - 1)), cmd("GET", "a" * K),
    cmd("MGET", "a", "b" * K), cmd("MSET", "a", "1", "b" * K, "1"), cmd("MSET", "a", "v" * K),
    cmd("HSET", "a", "f" * K, "1"), cmd("EVAL", "return 1", "1", "k" * K),
    cmd("EVAL", "return 1", "2", "k", "k" * K), cmd("AUTH", "p" * K), cmd("AUTH", "x"),
    cmd("PING"), cmd("PING", "hello"), cmd("COMMAND"), cmd("COMMAND", "COUNT"), cmd("LOLWUT"),
    cmd("LOLWUT", "VERSION", "5"), cmd("MOVE", "a", "1"), cmd("KEYS", "*"), cmd("SELECT", "1"),
    cmd("EXPIRE", "k", "100", "NX"), cmd("MSET", "a", "1", "b"), cmd("AUTH", "u", "p"),
    cmd("EVAL", "s", "0", "k"), cmd("EVAL", "s", "01", "k"), cmd("EVAL", "s", "x", "k"),
    cmd("EVAL", "s", "1"), cmd("EVAL", "s", "4294967296", "k"), cmd("EVAL", "s", "4294967297", "k"),
    cmd("SET", "k"), cmd("ZDIFF", "2", "a", "b"), cmd("EXISTS", "a", "b"),
    b"PING\r\n", b"*0\r\n", b"*1\r\n$0\r\n\r\n", b"*-1\r\n", b"*2 \r\n", b"*2\n",
    b"*02\r\n$3\r\nget\r\n$1\r\na\r\n", b"*2\r\n$03\r\nget\r\n$1\r\na\r\n",
    b"*4294967298\r\n$3\r\nget\r\n$1\r\na\r\n", b"*2\r\n$4294967299\r\nget\r\n$1\r\na\r\n",
    b"*2\r\n$3\r\nget\r\n$\r\n\r\n", b"*3\r\n$3\r\nset\r\n$1\r\na\r\n$\r\n\r\n",
    b"*3\r\n$4\r\nmget\r\n$1\r\na\r\n$\r\n\r\n", b"*2\r\n$6\r\nlolwut\r\n$\r\n\r\n",
    b"*2\r\n$4\r\nauth\r\n$\r\n\r\n", b"*4\r\n$4\r\neval\r\n$\r\n\r\n$1\r\n1\r\n$1\r\nk\r\n",
    b"*4\r\n$4\r\neval\r\n$1\r\ns\r\n$1\r\n1\r\n$\r\n\r\n",
    b"*3\r\n$3\r\nGET\r\n$1\r\na\r\n", b"*2\r\n$3\r\nget\r\n$1\r\nab\r\n",
    b"*1\r\n$4\r\nping\r\r", b"*2\r\n$3\r\nget\r\n$-1\r\n", b"*2\r\n$3\r\nget\r\n$1x\r\n",
    b"*1\r\n$20\r\n" + b"a" * 20 + b"\r\n",
]


def _mutations(count: int, seed: int = 20210713) -> list[bytes]:
    rng = random.Random(seed)
    names = sorted(COMMANDS)
    out: list[bytes] = []
    while len(out) < count:
        name = rng.choice(names)
        if name == b"quit":
            continue
        args = [rng.choice([b"k", b"", b"1", b"0", b"x" * rng.randint(1, 12), b"2", b"-1"])
                for _ in range(rng.randint(0, 6))]
        name = rng.choice([name, name.upper()])
        data = bytearray(cmd(name, *args))
        for _ in range(rng.randint(0, 2)):
            i = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[i] = rng.choice(b"\r\n$*0129ax-")
            elif op < 0.7:
                del data[i]
            else:
                data[i:i] = rng.choice([b"0", b"\r\n", b"$1\r\nz\r\n", b"1"])
        out.append(bytes(data))
    return out


def verdict_of_keyshard(data: bytes) -> str | None:
    """'accept', 'reject', or None when the bytes are not exactly one decided request.

    'reject early' is a rejection nutcracker makes later (redis.py, Rule 4): a command name
    longer than any known one is refused at its `$` header, where nutcracker waits for it.
    """
    parser = RedisRequestParser()
    reqs = parser.feed(data)
    if parser.error is not None:
        if reqs:
            return None
        return "reject early" if "name length" in parser.error else "reject"
    if len(reqs) == 1 and reqs[0].raw == data and reqs[0].cmd != b"quit":
        return "accept"
    return None


def verdict_of_nutcracker(port: int, data: bytes) -> str:
    """'reject' (closed without a reply), 'accept' (a reply), 'open' (no reply yet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.settimeout(1.0)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return "open"
        except ConnectionResetError:
            return "reject"
        return "accept" if chunk else "reject"


def agree(ours: str, theirs: str) -> bool:
    if ours == "accept":
        return theirs in ("accept", "open")  # open: forwarded, redis waits for more
    if ours == "reject early":
        return theirs in ("reject", "open")
    return theirs == "reject"


@pytest.fixture(scope="module")
def nutcracker() -> Iterator[Rig]:
    rig = Rig("nutcracker", nbackends=1, verbose=4)
    try:
        yield rig
    finally:
        rig.close()


def test_hand_picked_cases_agree_with_nutcracker(nutcracker: Rig) -> None:
    _compare(nutcracker, HAND_PICKED, require_all=True)


def test_mutated_requests_agree_with_nutcracker(nutcracker: Rig) -> None:
    _compare(nutcracker, _mutations(1000), require_all=False)


def _compare(rig: Rig, candidates: list[bytes], require_all: bool) -> None:
    ours = [(data, verdict_of_keyshard(data)) for data in candidates]
    decided = [(data, v) for data, v in ours if v is not None]
    if require_all:
        assert len(decided) == len(candidates), [d for d, v in ours if v is None]
    assert len(decided) >= len(candidates) // 2
    with ThreadPoolExecutor(16) as pool:
        theirs = list(pool.map(lambda d: verdict_of_nutcracker(rig.port, d[0]), decided))
    mismatches = [(data[:80], v, t) for (data, v), t in zip(decided, theirs, strict=True)
                  if not agree(v, t)]
    assert not mismatches, mismatches
    assert rig.proxy.alive()
