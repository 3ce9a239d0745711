"""The twelve key hash functions of nutcracker 0.5.0, and hash_tag extraction.

This module owns the mapping from key bytes to the 32-bit hash that the distributions
(`keyshard.distribution`) place on servers. Every function here must give the same number as
nutcracker's `src/hashkit` compiled for x86-64, bit for bit, for every byte string.

Rule 1: each function takes `bytes` and returns an int in 0 .. 2**32 - 1 (crc32: 0 .. 32767).
Rule 2: nutcracker hashes through `const char *`, and `char` is signed on x86-64. Where its C
        widens a key byte to 32 or 64 bits, a byte >= 0x80 is sign-extended (0x80 -> 0xffffff80).
        That happens in one_at_a_time, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32 and in hsieh's
        third tail byte; the `_SX` table holds those widened values.
Rule 3: the stdlib is used where it is exact: `hashlib.md5` (md5 and ketama points) and
        `zlib.crc32`, which is the standard reflected CRC-32 (poly 0xEDB88320, init and final
        xor 0xFFFFFFFF) that crc32a computes and that crc32 truncates to 15 bits.
Rule 4: the empty key is never hashed by nutcracker (the pool uses hash 0); the functions
        still return the C result for b"" so the tables can be checked against the C code.
Rule 5: `HASHES` is the table in nutcracker's order; config validation and `-D` read it.

fnv1a_64 is the default and runs once per request: its loop is the hot path. It skips the
mask while the value stays small (the low 32 bits of a product and of an xor depend only on
the low 32 bits of the operands), which is ~15-20% faster than masking every byte.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable

from keyshard import speedups_enabled

__all__ = [
    "HASHES",
    "HashFunc",
    "crc16",
    "crc32",
    "crc32a",
    "fnv1_32",
    "fnv1_64",
    "fnv1a_32",
    "fnv1a_64",
    "hash_tag_key",
    "hsieh",
    "jenkins",
    "md5",
    "murmur",
    "one_at_a_time",
]

HashFunc = Callable[[bytes], int]

_M32 = 0xFFFFFFFF

# Rule 2: a key byte as nutcracker widens it through a signed char.
_SX: tuple[int, ...] = tuple(b if b < 0x80 else b | 0xFFFFFF00 for b in range(256))

# Up to this length an ASCII key is hashed without masking in the loop (Rule 2 does not apply
# to ASCII, and the unmasked product stays a few machine words long).
_UNMASKED_MAX = 64


def one_at_a_time(key: bytes) -> int:
    """Jenkins one-at-a-time, with sign-extended bytes (Rule 2)."""
    sx = _SX
    v = 0
    for b in key:
        v = (v + sx[b]) & _M32
        v = (v + (v << 10)) & _M32
        v ^= v >> 6
    v = (v + (v << 3)) & _M32
    v ^= v >> 11
    return (v + (v << 15)) & _M32


def md5(key: bytes) -> int:
    """MD5 of the key; the first four digest bytes as a little-endian uint32."""
    return int.from_bytes(hashlib.md5(key).digest()[:4], "little")


def _crc16_table() -> tuple[int, ...]:
    """The CRC-16/XMODEM table (polynomial 0x1021, MSB first)."""
    table = []
    for n in range(256):
        c = n << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        table.append(c & 0xFFFF)
    return tuple(table)


_CRC16 = _crc16_table()


def crc16(key: bytes) -> int:
    """CRC-16/XMODEM steps, but the running value is a uint32 that is never cut to 16 bits.

    The bits shifted out above bit 15 stay in the result ("foo" -> 205303702).
    """
    tab = _CRC16
    crc = 0
    for b in key:
        crc = ((crc << 8) & _M32) ^ tab[((crc >> 8) ^ b) & 0xFF]
    return crc


def crc32(key: bytes) -> int:
    """libmemcached's crc32: bits 16..30 of the standard CRC-32 (so 0 .. 32767)."""
    return (zlib.crc32(key) >> 16) & 0x7FFF


def crc32a(key: bytes) -> int:
    """The standard CRC-32 (Rule 3)."""
    return zlib.crc32(key)


def fnv1_64(key: bytes) -> int:
    """FNV-1 with the 64-bit basis and prime, returning the low 32 bits.

    Only the low 32 bits are returned, and they depend only on the low 32 bits of the state,
    basis and prime, so a 32-bit state with 0x84222325 / 0x1b3 gives the same result.
    Bytes are sign-extended (Rule 2).
    """
    sx = _SX
    h = 0x84222325
    for b in key:
        h = ((h * 0x1B3) & _M32) ^ sx[b]
    return h


def fnv1a_64(key: bytes) -> int:
    """nutcracker's fnv1a_64: FNV-1a on a 32-bit state seeded with the 64-bit basis's low half.

    The hot path (module docstring). Bytes are sign-extended (Rule 2).
    """
    h = 0x84222325
    if len(key) <= _UNMASKED_MAX and key.isascii():
        for b in key:
            h = (h ^ b) * 0x1B3
        return h & _M32
    sx = _SX
    for b in key:
        h = ((h ^ sx[b]) * 0x1B3) & _M32
    return h


def fnv1_32(key: bytes) -> int:
    """FNV-1, 32-bit (multiply, then xor the sign-extended byte)."""
    sx = _SX
    h = 0x811C9DC5
    for b in key:
        h = ((h * 0x01000193) & _M32) ^ sx[b]
    return h


def fnv1a_32(key: bytes) -> int:
    """FNV-1a, 32-bit (xor the sign-extended byte, then multiply)."""
    sx = _SX
    h = 0x811C9DC5
    for b in key:
        h = ((h ^ sx[b]) * 0x01000193) & _M32
    return h


def hsieh(key: bytes) -> int:
    """Paul Hsieh's SuperFastHash; only the third byte of a 3-byte tail is sign-extended."""
    n = len(key)
    if n == 0:
        return 0
    h = 0
    end = n & ~3
    for i in range(0, end, 4):
        h = (h + (key[i] | key[i + 1] << 8)) & _M32
        tmp = (((key[i + 2] | key[i + 3] << 8) << 11) ^ h) & _M32
        h = ((h << 16) & _M32) ^ tmp
        h = (h + (h >> 11)) & _M32
    return _hsieh_final(_hsieh_tail(h, key, end, n - end))


def _hsieh_tail(h: int, key: bytes, i: int, rem: int) -> int:
    if rem == 3:
        h = (h + (key[i] | key[i + 1] << 8)) & _M32
        h ^= (h << 16) & _M32
        h ^= (_SX[key[i + 2]] << 18) & _M32
        h = (h + (h >> 11)) & _M32
    elif rem == 2:
        h = (h + (key[i] | key[i + 1] << 8)) & _M32
        h ^= (h << 11) & _M32
        h = (h + (h >> 17)) & _M32
    elif rem == 1:
        h = (h + key[i]) & _M32
        h ^= (h << 10) & _M32
        h = (h + (h >> 1)) & _M32
    return h


def _hsieh_final(h: int) -> int:
    h ^= (h << 3) & _M32
    h = (h + (h >> 5)) & _M32
    h ^= (h << 4) & _M32
    h = (h + (h >> 17)) & _M32
    h ^= (h << 25) & _M32
    return (h + (h >> 6)) & _M32


_MURMUR_M = 0x5BD1E995


def murmur(key: bytes) -> int:
    """MurmurHash2 with nutcracker's seed (0xdeadbeef * len); little-endian, unsigned bytes."""
    m = _MURMUR_M
    n = len(key)
    h = ((0xDEADBEEF * n) ^ n) & _M32
    nblocks = n >> 2
    for k in struct.unpack_from(f"<{nblocks}I", key):
        k = (k * m) & _M32
        k ^= k >> 24
        k = (k * m) & _M32
        h = ((h * m) & _M32) ^ k
    tail = n & 3
    if tail:
        h ^= int.from_bytes(key[n - tail:], "little")
        h = (h * m) & _M32
    h ^= h >> 13
    h = (h * m) & _M32
    return h ^ (h >> 15)


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _jenkins_mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _M32) ^ _rot(c, 4)
    c = (c + b) & _M32
    b = ((b - a) & _M32) ^ _rot(a, 6)
    a = (a + c) & _M32
    c = ((c - b) & _M32) ^ _rot(b, 8)
    b = (b + a) & _M32
    a = ((a - c) & _M32) ^ _rot(c, 16)
    c = (c + b) & _M32
    b = ((b - a) & _M32) ^ _rot(a, 19)
    a = (a + c) & _M32
    c = ((c - b) & _M32) ^ _rot(b, 4)
    b = (b + a) & _M32
    return a, b, c


def _jenkins_final(a: int, b: int, c: int) -> int:
    c = ((c ^ b) - _rot(b, 14)) & _M32
    a = ((a ^ c) - _rot(c, 11)) & _M32
    b = ((b ^ a) - _rot(a, 25)) & _M32
    c = ((c ^ b) - _rot(b, 16)) & _M32
    a = ((a ^ c) - _rot(c, 4)) & _M32
    b = ((b ^ a) - _rot(a, 14)) & _M32
    return ((c ^ b) - _rot(b, 24)) & _M32


def jenkins(key: bytes) -> int:
    """Bob Jenkins' lookup3 `hashlittle` with initval 13 (all of its read paths agree)."""
    n = len(key)
    a = b = c = (0xDEADBEEF + n + 13) & _M32
    if n == 0:
        return c
    # All but the last block (1..12 bytes) go through mix; the last is zero-padded.
    nfull = (n - 1) // 12
    words = struct.unpack(f"<{3 * nfull + 3}I", key + bytes(12 * (nfull + 1) - n))
    for i in range(0, 3 * nfull, 3):
        a, b, c = _jenkins_mix((a + words[i]) & _M32, (b + words[i + 1]) & _M32,
                               (c + words[i + 2]) & _M32)
    i = 3 * nfull
    return _jenkins_final((a + words[i]) & _M32, (b + words[i + 1]) & _M32,
                          (c + words[i + 2]) & _M32)


HASHES: dict[str, HashFunc] = {
    "one_at_a_time": one_at_a_time,
    "md5": md5,
    "crc16": crc16,
    "crc32": crc32,
    "crc32a": crc32a,
    "fnv1_64": fnv1_64,
    "fnv1a_64": fnv1a_64,
    "fnv1_32": fnv1_32,
    "fnv1a_32": fnv1a_32,
    "hsieh": hsieh,
    "murmur": murmur,
    "jenkins": jenkins,
}


def hash_tag_key(key: bytes, tag: bytes | None) -> bytes:
    """The part of `key` that is hashed under `hash_tag: tag` (nutcracker's server_pool_idx).

    The content between the first `tag[0]` and the first `tag[1]` after it, if that content
    is not empty; otherwise the whole key. `a{b}{c}` -> `b`, `a}{b}` -> `b`, `a{}b` -> `a{}b`.
    No tag (None or b"") -> the whole key.
    """
    if not tag:
        return key
    start = key.find(tag[0:1])
    if start < 0:
        return key
    end = key.find(tag[1:2], start + 1)
    if end - start > 1:
        return key[start + 1:end]
    return key


# The reference functions stay reachable here (differential tests, benchmarks).
PY_HASHES: dict[str, HashFunc] = dict(HASHES)

if speedups_enabled():  # compiled twins, if built (not md5, crc32, crc32a: C already)
    try:
        from keyshard._speedups import HASHES as _COMPILED_HASHES
        from keyshard._speedups import (  # type: ignore[no-redef]  # twins: same signatures
            crc16,
            fnv1_32,
            fnv1_64,
            fnv1a_32,
            fnv1a_64,
            hsieh,
            jenkins,
            murmur,
            one_at_a_time,
        )
    except ImportError:
        pass
    else:
        HASHES.update(_COMPILED_HASHES)  # same keys, so nutcracker's order is kept
