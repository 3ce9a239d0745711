"""keyshard.hashing against nutcracker 0.5.0's vectors (reference doc §4, §6).

The vectors come from nutcracker's own unit tests ("apple") and from its hashkit C code
compiled on x86-64; tests/compat/test_placement.py checks the same functions against the real
binary. The property tests compare the optimised loops with plain restatements of the C.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyshard.hashing import HASHES, fnv1_64, fnv1a_64, hash_tag_key

ORDER = ["one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64", "fnv1a_64", "fnv1_32",
         "fnv1a_32", "hsieh", "murmur", "jenkins"]

APPLE = {
    "one_at_a_time": 2297466611, "md5": 3195025439, "crc16": 3662830516, "crc32": 10542,
    "crc32a": 2838417488, "fnv1_64": 473199127, "fnv1a_64": 1488911807, "fnv1_32": 67176023,
    "fnv1a_32": 280767167, "hsieh": 3738850110, "murmur": 4142305122, "jenkins": 1442444624,
}

KEYS = [b"", b"a", b"foo", b"foobar", b"key:1", b"hello world", b"123456789", b"\xff\xfe\x80",
        b"abc\x80", b"The quick brown fox jumps over the lazy dog"]

TABLE = {
    "one_at_a_time": [0, 3392050242, 596015325, 4182965735, 2729841284, 1045060183, 3328923845,
                      1422681282, 1450209970, 1369346549],
    "md5": [3649838548, 3111502092, 3675831724, 586569784, 1018217594, 3141252702, 2498230565,
            3673073221, 537159290, 2642219166],
    "crc16": [0, 31879, 205303702, 2667556901, 1880267265, 4060494820, 2257596867, 504196645,
              1956451740, 581169352],
    "crc32": [0, 26807, 3187, 7926, 2927, 3402, 19444, 9822, 19173, 16719],
    "crc32a": [0, 3904355907, 2356372769, 2666930069, 191839212, 222957957, 3421780262,
               643736300, 1256582000, 1095738169],
    "fnv1_64": [2216829733, 2248259518, 1805727027, 2765990338, 4257821445, 2979073647,
                737744598, 2481844474, 75214961, 2112060110],
    "fnv1a_64": [2216829733, 2248273036, 4275688823, 4147734504, 2519685833, 37540583,
                 600231420, 2400084368, 301519089, 3890508048],
    "fnv1_32": [2166136261, 84696446, 1083137555, 837857890, 2305095589, 1418570095, 605325334,
                2437714298, 1176603793, 3922226286],
    "fnv1a_32": [2166136261, 3826002220, 2851307223, 3214735720, 1477709737, 3582672807,
                 3146166556, 1651290800, 734756049, 76545936],
    "hsieh": [0, 2472816263, 1993659431, 128288300, 2159826137, 1333368947, 3841726064,
              2995217705, 1028753578, 471461527],
    "murmur": [0, 1262581116, 3303027599, 2884435735, 3691594071, 1578702139, 3077965456,
               2749433693, 315140978, 818385189],
    "jenkins": [3735928572, 3768813200, 2583187353, 266177376, 2193389018, 355681275, 427260662,
                538694325, 120043671, 314054204],
}


def test_table_order_is_nutcrackers() -> None:
    assert list(HASHES) == ORDER


@pytest.mark.parametrize("name", ORDER)
def test_apple(name: str) -> None:
    assert HASHES[name](b"apple") == APPLE[name]


@pytest.mark.parametrize("name", ORDER)
@pytest.mark.parametrize("col", range(len(KEYS)), ids=[repr(k)[2:-1] or "empty" for k in KEYS])
def test_vector_table(name: str, col: int) -> None:
    assert HASHES[name](KEYS[col]) == TABLE[name][col]


def _fnv1a_64_unsigned(key: bytes) -> int:
    h = 0x84222325
    for b in key:
        h = ((h ^ b) * 0x1B3) & 0xFFFFFFFF
    return h


def _one_at_a_time_unsigned(key: bytes) -> int:
    v = 0
    for b in key:
        v = (v + b) & 0xFFFFFFFF
        v = (v + (v << 10)) & 0xFFFFFFFF
        v ^= v >> 6
    v = (v + (v << 3)) & 0xFFFFFFFF
    v ^= v >> 11
    return (v + (v << 15)) & 0xFFFFFFFF


def test_signed_char_is_sign_extended() -> None:
    # nutcracker's values, and what unsigned bytes would have given instead.
    key = b"caf\xc3\xa9"
    assert HASHES["fnv1a_64"](key) == 3472276361
    assert _fnv1a_64_unsigned(key) == 3483635081
    assert HASHES["one_at_a_time"](key) == 3650908318
    assert _one_at_a_time_unsigned(key) == 2425794034
    # ASCII keys are the same either way.
    assert HASHES["fnv1a_64"](b"cafe") == _fnv1a_64_unsigned(b"cafe")
    assert HASHES["one_at_a_time"](b"cafe") == _one_at_a_time_unsigned(b"cafe")


def test_crc16_keeps_the_high_bits() -> None:
    value = HASHES["crc16"](b"foo")
    assert value == 205303702
    assert value > 0xFFFF


# -- the optimised loops against plain restatements of the C ----------------------------------

def _sx(b: int) -> int:
    return b - 256 if b >= 0x80 else b


def fnv1a_64_plain(key: bytes) -> int:
    h = 0x84222325
    for b in key:
        h = ((h ^ (_sx(b) & 0xFFFFFFFF)) * 0x1B3) & 0xFFFFFFFF
    return h


def fnv1_64_plain(key: bytes) -> int:
    """The C's real 64-bit state, truncated at the end."""
    h = 0xCBF29CE484222325
    for b in key:
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        h ^= _sx(b) & 0xFFFFFFFFFFFFFFFF
    return h & 0xFFFFFFFF


KEY = st.binary(max_size=200)
ASCII_KEY = st.text(alphabet=st.characters(max_codepoint=127), max_size=100).map(str.encode)


@given(st.one_of(KEY, ASCII_KEY))
def test_fnv1a_64_fast_path_is_the_plain_loop(key: bytes) -> None:
    assert fnv1a_64(key) == fnv1a_64_plain(key)


@given(KEY)
def test_fnv1_64_32_bit_state_is_the_64_bit_loop(key: bytes) -> None:
    assert fnv1_64(key) == fnv1_64_plain(key)


@pytest.mark.parametrize("name", ORDER)
@given(key=KEY)
def test_results_fit_in_32_bits(name: str, key: bytes) -> None:
    value = HASHES[name](key)
    assert 0 <= value <= (0x7FFF if name == "crc32" else 0xFFFFFFFF)


@pytest.mark.parametrize("name", ORDER)
def test_accepts_bytes_like_views(name: str) -> None:
    # Keys may be sliced out of a read buffer without a copy.
    data = bytearray(b"xx" + b"key:123\xc3\xa9" + b"yy")
    assert HASHES[name](bytes(memoryview(data)[2:-2])) == HASHES[name](b"key:123\xc3\xa9")


# -- hash_tag (reference §6) --------------------------------------------------------------------

@pytest.mark.parametrize(("key", "tag", "hashed"), [
    (b"user:{42}:name", b"{}", b"42"),
    (b"{42}", b"{}", b"42"),
    (b"a{b}{c}", b"{}", b"b"),           # only the first opener counts
    (b"a}{b}", b"{}", b"b"),             # a closer before the opener is not a closer
    (b"a{}b", b"{}", b"a{}b"),           # empty content: the whole key
    (b"a{}b}", b"{}", b"a{}b}"),         # the first closer after the opener decides
    (b"a{b", b"{}", b"a{b"),             # no closer
    (b"ab}", b"{}", b"ab}"),             # no opener
    (b"{", b"{}", b"{"),
    (b"", b"{}", b""),
    (b"x$y$z", b"$$", b"y"),             # equal opener and closer
    (b"x$$z", b"$$", b"x$$z"),
    (b"x$y$z$w$", b"$$", b"y"),
    (b"$", b"$$", b"$"),
    (b"ns:id:rest", b"::", b"id"),
    (b"ns::rest", b"::", b"ns::rest"),
    (b"key\xff{\x80\x81}", b"{}", b"\x80\x81"),
    (b"user:{42}:name", None, b"user:{42}:name"),
    (b"user:{42}:name", b"", b"user:{42}:name"),
])
def test_hash_tag_key(key: bytes, tag: bytes | None, hashed: bytes) -> None:
    assert hash_tag_key(key, tag) == hashed
