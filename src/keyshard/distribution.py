"""Distributions: build a continuum from the live servers of a pool, and dispatch a hash on it.

This module owns nutcracker 0.5.0's `ketama_update`/`ketama_dispatch`, `modula_*` and
`random_*` (src/hashkit): given the servers of a pool (in the pool's name-sorted order) and
which of them are live, it builds the table that maps a 32-bit key hash to a server index.
It knows nothing of time, failures or hash functions; `keyshard.pool` decides which servers
are live and hashes the key.

Rule 1: a server index is the server's position in the pool's (name-sorted) server list,
        whether or not the server is live; dead servers are left out of the continuum only.
Rule 2: ketama gives each live server `pps` points, computed in float32 exactly as the C does:
        pct = (float)weight / (float)total_live_weight;
        pps = (uint32)(floorf((float)((double)(pct * 160 / 4 * (float)nlive) + 1e-10)) * 4).
        Equal weights give 160, except for some pool sizes where float rounding gives 156
        (n = 25, 47, 50, 55, ...); weights 100000:1 give the second server 0 points.
Rule 3: a ketama point group is MD5 of `"%s-%u" % (name, i)` for i = 0 .. pps/4 - 1, cut to
        272 bytes (nutcracker logs "Unexpectedly forced to truncate a hostname"); its 16 bytes
        are four little-endian uint32 points.
Rule 4: ketama points are sorted by value, ties kept in insertion (= server index) order, as
        glibc's merge-sort `qsort` does; dispatch takes the first point >= hash, wrapping to
        the first point.
Rule 5: modula has `weight` consecutive slots per live server, in index order; dispatch is
        `slots[hash % len(slots)]`.
Rule 6: random has one slot per live server (weights ignored) and ignores the hash; it draws
        from the `random.Random` it is given.
Rule 7: with no live server, `dispatch` returns -1 (nutcracker answers `Connection refused`).
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Sequence
from functools import lru_cache

__all__ = [
    "DISTRIBUTIONS",
    "KETAMA_MAX_HOSTLEN",
    "Continuum",
    "KetamaContinuum",
    "ModulaContinuum",
    "RandomContinuum",
    "build_continuum",
    "ketama_points_per_server",
    "ketama_server_points",
]

DISTRIBUTIONS = ("ketama", "modula", "random")

KETAMA_POINTS_PER_SERVER = 160
KETAMA_POINTS_PER_HASH = 4
KETAMA_MAX_HOSTLEN = 272  # bytes of "name-i" that are hashed (Rule 3)

_F32 = struct.Struct("<f")
_LE4 = struct.Struct("<4I")


def _f32(x: float) -> float:
    """Round a double to the nearest float32 (IEEE, round half to even), as a C cast does.

    One +, *, / done in double and then rounded to float32 gives the exact float32 result
    (53 >= 2 * 24 + 2), so float32 arithmetic is emulated by rounding after each operation.
    """
    return float(_F32.unpack(_F32.pack(x))[0])


def ketama_points_per_server(weight: int, total_weight: int, nlive: int) -> int:
    """How many ketama points a live server gets (Rule 2)."""
    pct = _f32(_f32(weight) / _f32(total_weight))
    x = _f32(pct * 160.0)
    x = _f32(x / 4.0)
    x = _f32(x * _f32(nlive))
    x = _f32(x + 1e-10)  # the addition is in double, then cast back to float
    return int(_f32(math.floor(x) * 4.0))


@lru_cache(maxsize=1024)
def ketama_server_points(name: bytes, npoints: int) -> tuple[int, ...]:
    """The first `npoints` ketama point values of the server called `name` (Rule 3)."""
    points: list[int] = []
    for i in range(npoints // KETAMA_POINTS_PER_HASH):
        host = (b"%s-%d" % (name, i))[:KETAMA_MAX_HOSTLEN]
        points.extend(_LE4.unpack(hashlib.md5(host).digest()))
    return tuple(points)


class Continuum(ABC):
    """Maps a key hash to a server index (or -1: no live server)."""

    __slots__ = ("nlive",)

    def __init__(self, nlive: int) -> None:
        self.nlive = nlive

    @abstractmethod
    def dispatch(self, hash: int) -> int:
        """The index of the server for a key with this hash, or -1 (Rule 7)."""


class KetamaContinuum(Continuum):
    """Sorted point values, and the owning server index of each point.

    `owners` has one more entry than `values`: a copy of the first owner, so that a hash above
    the last point wraps to the first without a branch (`bisect_left` returns len(values)).
    """

    __slots__ = ("owners", "values")

    def __init__(self, nlive: int, points: list[tuple[int, int]]) -> None:
        super().__init__(nlive)
        points.sort()  # (value, index): ties by index, as a stable sort by value (Rule 4)
        self.values: list[int] = [value for value, _ in points]
        self.owners: list[int] = [index for _, index in points]
        self.owners.append(self.owners[0] if points else -1)

    def dispatch(self, hash: int) -> int:
        return self.owners[bisect_left(self.values, hash)]


class ModulaContinuum(Continuum):
    __slots__ = ("slots",)

    def __init__(self, nlive: int, slots: list[int]) -> None:
        super().__init__(nlive)
        self.slots = slots

    def dispatch(self, hash: int) -> int:
        slots = self.slots
        return slots[hash % len(slots)] if slots else -1


class RandomContinuum(Continuum):
    __slots__ = ("rng", "slots")

    def __init__(self, nlive: int, slots: list[int], rng: random.Random) -> None:
        super().__init__(nlive)
        self.slots = slots
        self.rng = rng

    def dispatch(self, hash: int) -> int:
        slots = self.slots
        return slots[self.rng.randrange(len(slots))] if slots else -1


def _ketama(servers: Sequence[tuple[bytes, int]], live: Sequence[bool]) -> KetamaContinuum:
    nlive = sum(1 for alive in live if alive)
    total = sum(weight for (_, weight), alive in zip(servers, live) if alive)
    points: list[tuple[int, int]] = []
    for index, ((name, weight), alive) in enumerate(zip(servers, live)):
        if alive:
            pps = ketama_points_per_server(weight, total, nlive)
            points.extend((value, index) for value in ketama_server_points(name, pps))
    return KetamaContinuum(nlive, points)


def _modula(servers: Sequence[tuple[bytes, int]], live: Sequence[bool]) -> ModulaContinuum:
    slots: list[int] = []
    for index, ((_, weight), alive) in enumerate(zip(servers, live)):
        if alive:
            slots.extend([index] * weight)
    return ModulaContinuum(sum(1 for alive in live if alive), slots)


def _random(live: Sequence[bool], rng: random.Random) -> RandomContinuum:
    slots = [index for index, alive in enumerate(live) if alive]
    return RandomContinuum(len(slots), slots, rng)


def build_continuum(distribution: str, servers: Sequence[tuple[bytes, int]],
                    live: Sequence[bool], rng: random.Random | None = None) -> Continuum:
    """The continuum of `distribution` over `servers` ((name, weight), name-sorted).

    `live[i]` says whether server i takes keys. `rng` is used by `random` only (a fresh
    `random.Random()` if None).
    """
    if len(live) != len(servers):
        raise ValueError(f"{len(servers)} servers but {len(live)} live flags")
    if any(weight <= 0 for _, weight in servers):
        raise ValueError("server weights must be > 0")
    if distribution == "ketama":
        return _ketama(servers, live)
    if distribution == "modula":
        return _modula(servers, live)
    if distribution == "random":
        return _random(live, rng if rng is not None else random.Random())
    raise ValueError(f"unknown distribution {distribution!r}; expected one of {DISTRIBUTIONS}")
