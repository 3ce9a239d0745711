"""`--nutcracker-quirks`: the nutcracker defects keyshard fixes by default, reproduced on demand.

Each case runs nutcracker, keyshard with the switch, and keyshard without it on identical
backends: with the switch keyshard must match nutcracker; without it, keyshard does the
documented better thing (README, compatibility).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from tests.compat.test_memcache_diff import REJECTED as MC_REJECTED
from tests.compat.test_memcache_diff import stream as mc_stream
from tests.compat.test_redis_diff import REJECTED, encode
from tests.compat.test_redis_diff import stream as redis_stream
from tests.support.rig import Rig, exchange, first_difference, resp

QUIRKS = ["--nutcracker-quirks"]


def settle(rig: Rig) -> None:
    """Wait until the requests the proxy forwarded for a closed client have reached the
    backends: a multi-key request that touches every backend, on the same (FIFO) server
    connections, is answered after them. Without this a forwarded SET can land after the
    next `flush_backends` and show up in the next exchange."""
    keys = [f"settle{i}" for i in range(32)]
    if rig.redis:
        assert rig.exchange(resp("MGET", *keys)).startswith(b"*32\r\n")
    else:
        assert rig.exchange(b"get " + " ".join(keys).encode() + b"\r\n") == b"END\r\n"


def three(**opts: Any) -> tuple[Rig, Rig, Rig]:
    return (Rig("nutcracker", **opts), Rig("keyshard", extra=QUIRKS, **opts),
            Rig("keyshard", **opts))


def test_bad_request_in_the_same_read_drops_earlier_replies() -> None:
    nut, quirky, ks = three(timeout=3000)
    try:
        differences = []
        for seed in range(40):
            payload, _, _ = redis_stream(seed)
            payload = payload[:4000]  # one read: nutcracker's outcome depends on read boundaries
            tail = encode(random.Random(seed).choice(REJECTED))
            got = []
            for rig in (nut, quirky):
                rig.flush_backends()
                got.append(rig.exchange(payload + tail))
                settle(rig)
            if got[0] != got[1]:
                differences.append(f"seed {seed}: {first_difference(got[0], got[1])}")
        assert not differences, "\n".join(differences[:3])
        ks.flush_backends()
        assert ks.exchange(resp("SET", "a", "1") + resp("KEYS", "*")) == b"+OK\r\n"
        assert quirky.exchange(resp("SET", "a", "1") + resp("KEYS", "*")) == b""
    finally:
        for rig in (nut, quirky, ks):
            rig.close()


def test_memcache_bad_request_in_the_same_read() -> None:
    nut, quirky, ks = three(redis=False, nbackends=2, timeout=3000)
    try:
        for seed in range(20):
            payload, _, _ = mc_stream(seed)
            payload = payload[:3000]
            payload = payload[: payload.rfind(b"\r\n") + 2] if b"\r\n" in payload else b""
            tail = random.Random(seed).choice(MC_REJECTED)
            got = []
            for rig in (nut, quirky):
                rig.flush_backends()
                got.append(rig.exchange(payload + tail))
                settle(rig)
            assert got[0] == got[1], f"seed {seed}: {first_difference(got[0], got[1])}"
        assert ks.exchange(b"set a 0 0 1\r\n1\r\nstats\r\n") == b"STORED\r\n"
    finally:
        for rig in (nut, quirky, ks):
            rig.close()


def test_select_before_auth() -> None:
    """With the switch, SELECT goes first and fails against requirepass: keys land in db 0."""
    landed = {}
    for name, rig in zip(("nutcracker", "quirks", "keyshard"),
                         three(nbackends=1, redis_auth="sesame", redis_db=3)):
        with rig:
            rig.backends[0].client().config_set("requirepass", "sesame")
            assert rig.exchange(resp("AUTH", "sesame") + resp("SET", "k", "v")) == b"+OK\r\n+OK\r\n"
            backend = rig.backends[0]
            landed[name] = [db for db in (0, 3)
                            if backend.client(password="sesame", db=db).get("k") == b"v"]
    assert landed == {"nutcracker": [0], "quirks": [0], "keyshard": [3]}


def test_fragments_not_counted() -> None:
    counted = {}
    for name, rig in zip(("nutcracker", "quirks", "keyshard"), three()):
        with rig:
            rig.exchange(resp("MSET", *[x for i in range(20) for x in (f"f{i}", "v")]))
            time.sleep(0.1)
            doc = json.loads(exchange(rig.proxy.stats_port, b""))
            counted[name] = doc["alpha"]["fragments"]
    assert counted["nutcracker"] == 0 and counted["quirks"] == 0 and counted["keyshard"] >= 1
