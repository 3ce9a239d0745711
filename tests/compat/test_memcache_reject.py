"""The memcache codec's verdicts against the real proxy, input by input.

For every request input of the unit tests (accepted, rejected, cut before its end) and every
reply of a fake server, the proxy's behaviour is compared with what `keyshard.protocol.memcache`
says it must be:

- requests: is the client closed; which bytes reach the server (each request as received, a
  multi-get as its fragment); which replies the client gets before that;
- replies (to `get k`): passed through, `SERVER_ERROR Invalid argument`, or nothing yet.

Every input gets its own pool (and its own fake server port) in one proxy process, so that a
cut request or reply of one case cannot leak into the next, and all cases run at once.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from keyshard.protocol.base import KIND_QUIT, KIND_SPLIT, Request
from keyshard.protocol.memcache import MemcacheReplyParser, MemcacheRequestParser
from keyshard.protocol.memcache_merge import merge_retrieval, split_retrieval
from tests.support.procs import Keyshard, Nutcracker, free_port
from tests.unit.test_memcache_codec import NOREPLY, PREFIXES, REJECTED, REPLIES, SINGLE

BAD_REPLIES = [
    b"END \r\n", b"12a\r\n", b" STORED\r\n", b"\r\n", b"OK\r\n", b"-1\r\n", b"ERROR foo\r\n",
    b"STORED foo\r\n", b"END\n\r\n", b"SERVER_ERROR a\rb\r\n", b"VALUE k x 1\r\na\r\nEND\r\n",
    b"VALUE k 0 1\r\nab\r\nEND\r\n", b"VALUE k 0\r\na\r\nEND\r\n", b"VALUE k 0 1\r\na\r\n123\r\n",
    b"VALUE k 0 1\r\na\r\nEND \r\n", b"VALUE k\r\n0 1\r\na\r\nEND\r\n", b"STORED\r\nxyz\r\n",
    b"STORED\r\nSTORED\r\n", b"STORED\n", b"VALUE\r\n", b"VALUE k 0 1\r\na\r\nVALUE",
]
WAIT = 0.4  # seconds of silence after which a connection counts as "still open"


class Backends(threading.Thread):
    """One thread, many ports: records what each port receives and answers through `answer`."""

    def __init__(self, answer: Callable[[int, bytes], bytes]) -> None:
        super().__init__(daemon=True)
        self.answer = answer
        self.sel = selectors.DefaultSelector()
        self.received: dict[int, bytes] = {}
        self.running = True
        self.lock = threading.Lock()

    def listen(self) -> int:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        port = int(sock.getsockname()[1])
        self.received[port] = b""
        self.sel.register(sock, selectors.EVENT_READ, ("listen", port))
        return port

    def run(self) -> None:
        while self.running:
            for key, _ in self.sel.select(0.05):
                what, port = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if what == "listen":
                    conn, _ = sock.accept()
                    self.sel.register(conn, selectors.EVENT_READ, ("conn", port))
                    continue
                data = sock.recv(65536)
                if not data:
                    self.sel.unregister(sock)
                    sock.close()
                    continue
                with self.lock:
                    self.received[port] += data
                reply = self.answer(port, data)
                if reply:
                    sock.sendall(reply)

    def stop(self) -> None:
        self.running = False
        self.join(5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]


def fake_memcached() -> Callable[[int, bytes], bytes]:
    """Answers every complete request a proxy forwards, as memcached would (roughly)."""
    parsers: dict[int, MemcacheRequestParser] = {}

    def answer(port: int, data: bytes) -> bytes:
        parser = parsers.setdefault(port, MemcacheRequestParser())
        return b"".join(reply_to(req) for req in parser.feed(data))

    return answer


def reply_to(req: Request) -> bytes:
    if req.noreply or req.kind == KIND_QUIT:
        return b""
    if req.cmd in (b"get", b"gets"):
        return b"END\r\n"
    if req.cmd == b"version":
        return b"VERSION 1.6.18\r\n"
    if req.cmd in (b"incr", b"decr", b"delete", b"touch"):
        return b"NOT_FOUND\r\n"
    return b"STORED\r\n"


def start_proxy(kind: str, npools: int, backends: Backends) -> tuple[list[int], Any]:
    servers = [backends.listen() for _ in range(npools)]  # first: free_port() then avoids them
    ports = [free_port() for _ in range(npools)]
    conf = "".join(f"p{i:03d}:\n  listen: 127.0.0.1:{port}\n  servers:\n   - 127.0.0.1:{server}:1\n"
                   for i, (port, server) in enumerate(zip(ports, servers, strict=True)))
    proxy = (Nutcracker if kind == "nutcracker" else Keyshard)(conf)
    proxy.extra = ["-o", str(proxy.dir / "proxy.log")]
    try:
        proxy.start(*ports)
    except RuntimeError as err:
        log = (proxy.dir / "proxy.log").read_text(errors="replace")[-2000:]
        proxy.cleanup()
        raise RuntimeError(f"{err}\n{log}") from None
    return ports, proxy


def talk_all(ports: list[int], payloads: list[bytes]) -> list[tuple[bytes, bool]]:
    """Send each payload to its port at once; collect (bytes received, closed by the proxy)."""
    socks = [socket.create_connection(("127.0.0.1", p), timeout=5) for p in ports]
    for sock, payload in zip(socks, payloads, strict=True):
        sock.sendall(payload)
        sock.setblocking(False)
    got = [b""] * len(socks)
    closed = [False] * len(socks)
    last = time.monotonic()
    while time.monotonic() - last < WAIT:
        time.sleep(0.02)
        for i, sock in enumerate(socks):
            if closed[i]:
                continue
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                got[i] += chunk
            else:
                closed[i] = True
            last = time.monotonic()
    for sock in socks:
        sock.close()
    return list(zip(got, closed, strict=True))


def expected_for_request_input(data: bytes, proxy_kind: str) -> tuple[bytes, bool, bytes]:
    """(bytes forwarded to the one server, client closed, client replies) by our codec."""
    parser = MemcacheRequestParser()
    reqs = parser.feed(data)
    forwarded = b""
    replies = b""
    closed = parser.error is not None
    for req in reqs:
        if req.kind == KIND_QUIT:
            closed = True
            break
        if req.kind == KIND_SPLIT:
            frags, _ = split_retrieval(req, lambda key: 0)
            forwarded += frags[0][1]
        else:
            forwarded += req.raw
        replies += reply_to(req)
    if parser.error is not None and proxy_kind == "nutcracker":
        # nutcracker closes a client at its first bad byte: the replies to the requests of
        # the same read, still in flight, are swallowed (they still reach the server).
        # keyshard answers them first, then closes (README: differences from nutcracker).
        replies = b""
    return forwarded, closed, replies


REQUEST_INPUTS = (
    [raw for raw, _, _ in SINGLE + NOREPLY]
    + [b"get a\r\nset b 0 0 1\r\nx\r\n" + bad for bad in REJECTED]
    + [b"get a b\r\n", b"gets a b a\r\n", b"get a\r\nquit\r\nget b\r\n", b"version\r\n"]
    + [prefix for prefix, _ in PREFIXES]
    + [b"set k 0 0 10\r\n0123", b"set k 0 0 4\r\nabcd\r", b"set k 0 0 1 noreply\r\na\r\nget b"]
)


@pytest.mark.parametrize("proxy_kind", ["nutcracker", "keyshard"])
def test_request_verdicts(proxy_kind: str) -> None:
    backends = Backends(fake_memcached())
    backends.start()
    ports, proxy = start_proxy(proxy_kind, len(REQUEST_INPUTS), backends)
    try:
        results = talk_all(ports, REQUEST_INPUTS)
        time.sleep(0.2)  # let the last forwarded bytes reach the fake servers
        received = list(backends.received.values())
    finally:
        proxy.cleanup()
        backends.stop()
    mismatches = []
    for data, (got, closed), forwarded in zip(REQUEST_INPUTS, results, received, strict=True):
        want = expected_for_request_input(data, proxy_kind)
        if (forwarded, closed, got) != want:
            mismatches.append(f"{data!r}: proxy {(forwarded, closed, got)!r} codec {want!r}")
    assert not mismatches, "\n".join(mismatches)


REPLY_CASES = REPLIES + BAD_REPLIES


def expected_for_reply(reply: bytes) -> bytes:
    parser = MemcacheReplyParser()
    frames = parser.feed(reply)
    if frames:
        return frames[0]
    return b"SERVER_ERROR Invalid argument\r\n" if parser.error is not None else b""


@pytest.mark.parametrize("proxy_kind", ["nutcracker", "keyshard"])
def test_reply_verdicts(proxy_kind: str) -> None:
    canned: dict[int, bytes] = {}
    backends = Backends(lambda port, data: canned[port])
    backends.start()
    ports, proxy = start_proxy(proxy_kind, len(REPLY_CASES), backends)
    for port, reply in zip(list(backends.received), REPLY_CASES, strict=True):
        canned[port] = reply
    try:
        results = talk_all(ports, [b"get k\r\n"] * len(REPLY_CASES))
    finally:
        proxy.cleanup()
        backends.stop()
    mismatches = [f"{reply!r}: proxy {got!r} codec {expected_for_reply(reply)!r}"
                  for reply, (got, _) in zip(REPLY_CASES, results, strict=True)
                  if got != expected_for_reply(reply)]
    assert not mismatches, "\n".join(mismatches)


def value_server(port: int, data: bytes) -> bytes:
    """Answers get/gets lines with a VALUE block for every key not starting with "m"."""
    out = b""
    for line in data.split(b"\r\n")[:-1]:
        toks = [t for t in line.split(b" ") if t]
        cas = b" 9" if toks[0] == b"gets" else b""
        for key in toks[1:]:
            if not key.startswith(b"m"):
                out += b"VALUE %s 0 %d%s\r\n%s!\r\n" % (key, len(key) + 1, cas, key)
        out += b"END\r\n"
    return out


MULTI_GETS = [
    b"get a1 a2 a3 a4 a5 a6\r\n",
    b"get m1 a1 a2 m2 a3 a4 a1 a5 m3 a6 b1 b2 m4 b3 b4 m5 b5\r\n",
    b"gets m1 a1  a2 m2 a3 a4 a1 a5 m3 a6 b1 b2 m4 b3 b4 m5 b5 \r\n",
    b"get m1 m2 m3 m4\r\n",
    b"get b5 b5 b5 m5 a1\r\n",
]


@pytest.mark.parametrize("proxy_kind", ["nutcracker", "keyshard"])
def test_split_and_merge_like_the_proxy(proxy_kind: str) -> None:
    backends = Backends(value_server)
    servers = [backends.listen() for _ in range(3)]
    backends.start()
    port = free_port()
    conf = (f"mc:\n  listen: 127.0.0.1:{port}\n  hash: md5\n  distribution: modula\n  servers:\n"
            + "".join(f"   - 127.0.0.1:{s}:1 s{i}\n" for i, s in enumerate(servers)))
    proxy = (Nutcracker if proxy_kind == "nutcracker" else Keyshard)(conf)
    proxy.start(port)
    shifted = 0  # requests where nutcracker's merge differs from "original key order"
    multi = 0  # requests split over more than one server
    try:
        for payload in MULTI_GETS:
            for s in servers:
                backends.received[s] = b""
            ((got, closed),) = talk_all([port], [payload])
            route = {key: i for i, s in enumerate(servers)
                     for key in backends.received[s].split()[1:]}
            req = MemcacheRequestParser().feed(payload)[0]
            frags, ctx = split_retrieval(req, route.__getitem__)
            assert {idx: raw for idx, raw in frags} == {
                i: backends.received[s] for i, s in enumerate(servers) if backends.received[s]}
            replies: list[bytes | None] = [value_server(0, raw) for _, raw in frags]
            assert not closed
            assert got == merge_retrieval(req, ctx, replies), payload
            assert req.args is not None
            in_key_order = b"".join(value_server(0, b"%s %s\r\n" % (req.cmd, key))[:-5]
                                    for key in req.args) + b"END\r\n"
            shifted += got != in_key_order
            multi += len(frags) > 1
    finally:
        proxy.cleanup()
        backends.stop()
    assert shifted >= 2 and multi >= 3
