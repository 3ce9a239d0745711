"""Hold N idle client connections to a proxy: `python -m bench.idle PORT N MAX_HOLD_SECONDS`.

Opens N TCP connections to 127.0.0.1:PORT, sends nothing, prints `ready N` and keeps them open
until stdin closes (the benchmark's signal) or MAX_HOLD_SECONDS pass, whichever comes first.
A line `ping` on stdin makes it send one redis PING on every connection, read every +PONG and
print `pinged N` (connections that have been used once, then sit idle, as in a client pool).
It runs as its own process so its sockets and memory are not the benchmark's.
Bounded: N is capped at 20000 and the hold at 600 s.
"""

from __future__ import annotations

import select
import socket
import sys
import time


def hold(port: int, count: int, max_hold: float) -> int:
    count, max_hold = min(count, 20_000), min(max_hold, 600.0)
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5.0))
    except OSError as err:
        print(f"error after {len(socks)} connections: {err}", flush=True)
        return 1
    print(f"ready {len(socks)}", flush=True)
    deadline = time.monotonic() + max_hold
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sys.stdin], [], [], min(left, 1.0))
        if not readable:
            continue
        line = sys.stdin.readline()
        if not line:
            break
        if line.strip() == "ping":
            print(f"pinged {ping_all(socks)}", flush=True)
    closed_by_peer = sum(1 for s in socks if _peer_closed(s))
    for s in socks:
        s.close()
    print(f"closed {len(socks)} (peer had closed {closed_by_peer})", flush=True)
    return 0


def ping_all(socks: list[socket.socket]) -> int:
    """PING on every connection, then read every reply; the number answered +PONG."""
    for s in socks:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
    ok = 0
    for s in socks:
        got = b""
        try:
            while len(got) < 7:
                chunk = s.recv(7 - len(got))
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        ok += got == b"+PONG\r\n"
    return ok


def _peer_closed(s: socket.socket) -> bool:
    """True when the proxy closed this idle connection while we held it."""
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


if __name__ == "__main__":
    sys.exit(hold(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
