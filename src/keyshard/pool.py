"""The server pool: which server a key goes to, failure counting, ejection, retry, rebuild.

This module owns nutcracker 0.5.0's `server_pool_update`, `server_pool_idx`,
`server_failure` and `server_ok` (src/nc_server.c), without I/O: the net layer passes the
time in (`now`, seconds of its monotonic loop clock, >= 0) and applies the answers.

Rule 1: a server index is the position in `conf.servers` (name-sorted by the config loader);
        `route` returns one, or -1 when no server is live (the caller answers
        `Connection refused`).
Rule 2: `route` hashes `hash_tag_key(key)` with the pool's hash (an empty key has hash 0),
        except in a one-server pool, which skips hashing, and with `random`, which ignores the
        key. It never fails for a key.
Rule 3: without `auto_eject_hosts` every server is always live; `failure` and `success`
        change nothing and `route` never returns -1.
Rule 4: with `auto_eject_hosts`, `failure` counts consecutive failures of a server; at
        `server_failure_limit` the server is ejected: `next_retry = now + server_retry_timeout`,
        its count is reset and the continuum is rebuilt without it. `success` resets the count
        and `next_retry` (only when the count is not 0, as nutcracker's `server_ok`).
Rule 5: a server is live when `next_retry <= now`. The continuum is rebuilt lazily by the
        first `route` after the earliest pending `next_retry` has passed (strictly after), and
        at every ejection; there is no health check. While no server is live, `route` returns
        -1 until then.
Rule 6: `group` is where a key lies on the continuum as it stands, without the lazy rebuild
        of Rule 5; while no server is live it is the last continuum that had one (nutcracker
        keeps it). nutcracker groups the keys of a split request (MGET, get k1 k2) this way,
        then routes each fragment by its first key with `route`: around a retry the two can
        differ, and a fragment then goes whole to the server of its first key.
Rule 7: the state is small (per server: failure count, next retry, ejected flag; per pool:
        the continuum and the next rebuild time), so a pool can be rebuilt from a new config
        and swapped in.

`route` is the hot path: one float comparison, then a closure prebuilt for the pool's
distribution and hash (for ketama: hash, `bisect_left` on a sorted list, one index).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from keyshard import speedups_enabled
from keyshard.config import PoolConf, ServerConf
from keyshard.distribution import (
    DISTRIBUTIONS,
    Continuum,
    KetamaContinuum,
    ModulaContinuum,
    RandomContinuum,
    build_continuum,
)
from keyshard.hashing import HASHES, HashFunc, hash_tag_key

__all__ = ["Router", "Server", "ServerPool"]

Router = Callable[[bytes], int]


@dataclass(slots=True, eq=False)
class Server:
    """One server of a pool and its failure state (nutcracker's `struct server`)."""

    conf: ServerConf
    index: int
    name: bytes  # conf.name in UTF-8: the identity hashed onto the continuum
    failure_count: int = 0
    next_retry: float = 0.0  # seconds on the caller's clock; 0.0 = no retry pending
    ejected: bool = False  # left out of the current continuum


def _refuse(key: bytes) -> int:
    return -1


def first_server(key: bytes) -> int:
    """A one-server pool's router (the compiled dispatch knows it and skips the call)."""
    return 0


def _key_hasher(hash_fn: HashFunc, tag: bytes | None) -> HashFunc:
    """key -> hash as server_pool_idx computes it: hash tag, then 0 for an empty key."""
    if tag is None:
        def key_hash(key: bytes) -> int:
            return hash_fn(key) if key else 0
    else:
        def key_hash(key: bytes) -> int:
            key = hash_tag_key(key, tag)
            return hash_fn(key) if key else 0
    return key_hash


def _ketama_router(cont: KetamaContinuum, hash_fn: HashFunc, tag: bytes | None) -> Router:
    values, owners = cont.values, cont.owners
    if tag is None:  # the common case, without the extra call of _key_hasher
        def route(key: bytes) -> int:
            return owners[bisect_left(values, hash_fn(key) if key else 0)]
        return route
    key_hash = _key_hasher(hash_fn, tag)

    def route_tagged(key: bytes) -> int:
        return owners[bisect_left(values, key_hash(key))]
    return route_tagged


def _modula_router(cont: ModulaContinuum, hash_fn: HashFunc, tag: bytes | None) -> Router:
    slots = cont.slots
    nslots = len(slots)
    key_hash = _key_hasher(hash_fn, tag)

    def route(key: bytes) -> int:
        return slots[key_hash(key) % nslots]
    return route


def _random_router(cont: RandomContinuum) -> Router:
    slots = cont.slots
    nslots = len(slots)
    randrange = cont.rng.randrange

    def route(key: bytes) -> int:
        return slots[randrange(nslots)]
    return route


def _generic_router(cont: Continuum, hash_fn: HashFunc, tag: bytes | None) -> Router:
    dispatch = cont.dispatch
    key_hash = _key_hasher(hash_fn, tag)

    def route(key: bytes) -> int:
        return dispatch(key_hash(key))
    return route


class PoolFields:
    """What the net layer's hot path reads of a pool (the compiled twin,
    `keyshard._speedups.PoolFields`, has them as C struct members): the router, the grouper,
    and when the continuum is due a rebuild. Only floats are stored in `_next_rebuild`."""

    __slots__ = ("_next_rebuild", "_router", "_group")
    _next_rebuild: float  # earliest pending next_retry; inf: nothing pending
    _router: Router
    _group: Router


PyPoolFields = PoolFields  # the reference stays reachable under this name (tests)
if speedups_enabled():  # its compiled twin, if built
    try:
        from keyshard._speedups import PoolFields  # type: ignore[no-redef]  # twin: same fields
    except ImportError:
        pass


class ServerPool(PoolFields):
    """Key placement and ejection for one pool (module docstring); the router and when a
    rebuild is due are its `PoolFields`, C struct members when the compiled twin is in use."""

    __slots__ = (
        "_failure_limit",
        "_hash",
        "_retry_timeout",
        "_rng",
        "_tag",
        "auto_eject",
        "conf",
        "continuum",
        "nlive",
        "servers",
    )

    def __init__(self, conf: PoolConf, rng: random.Random | None = None) -> None:
        if not conf.servers:
            raise ValueError(f"pool '{conf.name}' has no servers")
        if conf.hash not in HASHES:
            raise ValueError(f"pool '{conf.name}': unknown hash {conf.hash!r}")
        if conf.distribution not in DISTRIBUTIONS:
            raise ValueError(f"pool '{conf.name}': unknown distribution {conf.distribution!r}")
        self.conf = conf
        self.servers = [Server(s, i, s.name.encode("utf-8")) for i, s in enumerate(conf.servers)]
        self.auto_eject = conf.auto_eject_hosts
        self._hash = HASHES[conf.hash]
        self._tag = conf.hash_tag or None
        self._failure_limit = conf.server_failure_limit
        self._retry_timeout = conf.server_retry_timeout / 1000.0
        self._rng = rng if rng is not None else random.Random()
        self.nlive = 0
        self.continuum: Continuum | None = None
        self._next_rebuild = math.inf  # earliest pending next_retry; inf = nothing pending
        self._router = _refuse
        self._group = _refuse
        self._update(0.0)

    # -- the hot path -----------------------------------------------------------------------

    def route(self, key: bytes, now: float) -> int:
        """The index of the server for `key`, or -1 if no server is live (Rules 1, 2, 5)."""
        if now > self._next_rebuild:
            self._update(now)
        return self._router(key)

    def router(self, now: float) -> Router:
        """`route` split in two for a batch of keys at the same `now`: the rebuild check once,
        then the returned function per key (valid until the next failure or success)."""
        if now > self._next_rebuild:
            self._update(now)
        return self._router

    def grouper(self) -> Router:
        """`group` as a function of the key alone (valid until the next rebuild)."""
        return self._group

    def group(self, key: bytes) -> int:
        """The server of `key` on the current continuum, never rebuilding it (Rule 6)."""
        return self._group(key)

    # -- failures -----------------------------------------------------------------------------

    def failure(self, index: int, now: float) -> bool:
        """Count a failure of server `index`; True if this call ejected it (Rule 4)."""
        if not self.auto_eject:
            return False
        server = self.servers[index]
        server.failure_count += 1
        if server.failure_count < self._failure_limit:
            return False
        server.failure_count = 0
        server.next_retry = now + self._retry_timeout
        self._update(now)
        return True

    def success(self, index: int) -> None:
        """A reply came from server `index`: nutcracker's `server_ok` (Rule 4)."""
        server = self.servers[index]
        if server.failure_count != 0:
            server.failure_count = 0
            server.next_retry = 0.0

    @property
    def next_rebuild(self) -> float:
        """When the next `route` will rebuild the continuum (inf: no server is waiting)."""
        return self._next_rebuild

    # -- rebuild ------------------------------------------------------------------------------

    def _update(self, now: float) -> None:
        """Recompute which servers are live and rebuild the continuum (Rule 5)."""
        live = self._live(now)
        self.nlive = sum(live)
        if self.nlive == 0:
            # nutcracker keeps its old continuum and refuses until the next rebuild.
            self._router = _refuse
            return
        self.continuum = build_continuum(
            self.conf.distribution, [(s.name, s.conf.weight) for s in self.servers], live,
            self._rng)
        self._router = self._group = self._make_router(self.continuum)

    def _live(self, now: float) -> list[bool]:
        """Live flags at `now`; clears passed retries and sets `ejected` and next_rebuild."""
        next_rebuild = math.inf
        live: list[bool] = []
        for server in self.servers:
            alive = not self.auto_eject or server.next_retry <= now
            if alive:
                server.next_retry = 0.0
            else:
                next_rebuild = min(next_rebuild, server.next_retry)
            server.ejected = not alive
            live.append(alive)
        self._next_rebuild = next_rebuild
        return live

    def _make_router(self, cont: Continuum) -> Router:
        if len(self.servers) == 1:
            return first_server  # server_pool_idx skips hashing for a one-server pool
        if isinstance(cont, KetamaContinuum):
            return _ketama_router(cont, self._hash, self._tag)
        if isinstance(cont, ModulaContinuum):
            return _modula_router(cont, self._hash, self._tag)
        if isinstance(cont, RandomContinuum):
            return _random_router(cont)
        return _generic_router(cont, self._hash, self._tag)


# The reference routers stay reachable here (differential tests).
_py_ketama_router = _ketama_router
_py_modula_router = _modula_router

if speedups_enabled():  # their compiled twins, if built: hash and lookup in one C call
    try:
        from keyshard import _speedups
    except ImportError:
        pass
    else:
        _ketama_router = _speedups.ketama_router
        _modula_router = _speedups.modula_router
