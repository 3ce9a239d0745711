"""Hold N idle client connections to a proxy: `python -m bench.idle PORT N MAX_HOLD_SECONDS`.

Opens N TCP connections to 127.0.0.1:PORT, sends nothing, prints `ready N` and keeps them open
until stdin closes (the benchmark's signal) or MAX_HOLD_SECONDS pass, whichever comes first.
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
        if readable and not sys.stdin.readline():
            break
    closed_by_peer = sum(1 for s in socks if _peer_closed(s))
    for s in socks:
        s.close()
    print(f"closed {len(socks)} (peer had closed {closed_by_peer})", flush=True)
    return 0


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
