"""The Redis command table: the 137 commands nutcracker 0.5.0 knows, as data.

This module owns which commands exist, how many arguments each accepts, which argument is
the routing key and what the proxy does with the request (forward, split, answer locally).
The request parser (`protocol.redis`) only reads `COMMANDS`; tests and docs derive from it.

Rule 1: a command belongs to exactly one argument class (nutcracker's `redis_arg*`
        functions). The class fixes the arity, counted in elements including the command name
        (`narg` of the `*<narg>` header):

          argz    exactly 1        PING QUIT COMMAND            (no key)
          nokey   1 or more        LOLWUT                       (no key, args are not keys)
          arg0    exactly 2        GET k                        (key)
          arg1    exactly 3        EXPIRE k s                   (key + 1)
          arg2    exactly 4        SETEX k s v                  (key + 2)
          arg3    exactly 5        LINSERT k where p v          (key + 3)
          argn    2 or more        SET k v [opts...]            (key + 0..n)
          argx    2 or more        MGET k [k...]                (every argument is a key)
          argkvx  3 or more, odd   MSET k v [k v...]            (keys at odd positions)
          argeval 4 or more        EVAL script numkeys k [...]  (numkeys: digits, not 0)

Rule 2: "key elements" are the arguments nutcracker parses in its key state: the first key of
        keyed classes (AUTH's password included: AUTH is arg0), every key of argx/argkvx, and
        the first key after numkeys of argeval. Only key elements are checked against the
        maximum key length, and only their `$` header may have no digits (length 0).
Rule 3: the routing key is the first key (element 1), the first key after numkeys (element 3)
        for EVAL/EVALSHA, and the fixed string b"placeholder" for argz/nokey. ZDIFF, ZINTER
        and ZUNION are plain argn: they route by their numkeys argument (nutcracker's quirk).
Rule 4: MGET/DEL/TOUCH/UNLINK with 2+ keys and MSET with 2+ pairs are split (`split_narg`);
        with one key they are forwarded as they are. EXISTS is not split.
Rule 5: MOVE is recognised but nutcracker closes the connection on it (it has no reply
        handler), so it is `unsupported`, like a command missing from the table.
"""

from __future__ import annotations

from typing import Final

from .base import KIND_AUTH, KIND_FORWARD, KIND_PING, KIND_QUIT, KIND_SPLIT

# Argument classes.
ARGZ: Final = 0
NOKEY: Final = 1
ARG0: Final = 2
ARG1: Final = 3
ARG2: Final = 4
ARG3: Final = 5
ARGN: Final = 6
ARGX: Final = 7
ARGKVX: Final = 8
ARGEVAL: Final = 9

CLASS_NAMES: Final = ("argz", "nokey", "arg0", "arg1", "arg2", "arg3", "argn", "argx",
                      "argkvx", "argeval")

# Which elements are key elements (Rule 2).
KEYS_NONE: Final = 0  # argz, nokey
KEYS_FIRST: Final = 1  # only the routing key element
KEYS_ALL: Final = 2  # argx: every argument
KEYS_ODD: Final = 3  # argkvx: elements 1, 3, 5, ...

NO_LIMIT: Final = 1 << 62  # "any number of elements"
PLACEHOLDER: Final = b"placeholder"

# class -> (min narg, max narg, routing key element, key elements)
_CLASS_RULES: Final = {
    ARGZ: (1, 1, 0, KEYS_NONE),
    NOKEY: (1, NO_LIMIT, 0, KEYS_NONE),
    ARG0: (2, 2, 1, KEYS_FIRST),
    ARG1: (3, 3, 1, KEYS_FIRST),
    ARG2: (4, 4, 1, KEYS_FIRST),
    ARG3: (5, 5, 1, KEYS_FIRST),
    ARGN: (2, NO_LIMIT, 1, KEYS_FIRST),
    ARGX: (2, NO_LIMIT, 1, KEYS_ALL),
    ARGKVX: (3, NO_LIMIT, 1, KEYS_ODD),
    ARGEVAL: (4, NO_LIMIT, 3, KEYS_FIRST),
}

# The table (reference §7.2, checked command by command against the binary).
_TABLE_TEXT: Final = """
argz    ping quit command
nokey   lolwut
arg0    auth decr dump get getdel hgetall hkeys hlen hvals incr llen persist pttl scard
        smembers strlen ttl type zcard
arg1    append decrby expire expireat getbit getset hexists hget hstrlen incrby incrbyfloat
        lindex move pexpire pexpireat rpoplpush setnx sismember zrank zrevrank zscore
arg2    getrange hincrby hincrbyfloat hsetnx lrange lrem lset ltrim psetex setbit setex
        setrange smove zcount zincrby zlexcount zremrangebylex zremrangebyrank
        zremrangebyscore
arg3    linsert lmove
argn    bitcount bitfield bitpos copy exists geoadd geodist geohash geopos georadius
        georadiusbymember geosearch geosearchstore getex hdel hmget hmset hrandfield hscan
        hset lpop lpos lpush lpushx pfadd pfcount pfmerge restore rpop rpush rpushx sadd
        sdiff sdiffstore set sinter sinterstore smismember sort spop srandmember srem sscan
        sunion sunionstore zadd zdiff zdiffstore zinter zinterstore zmscore zpopmax zpopmin
        zrandmember zrange zrangebylex zrangebyscore zrangestore zrem zrevrange
        zrevrangebylex zrevrangebyscore zscan zunion zunionstore
argx    del mget touch unlink
argkvx  mset
argeval eval evalsha
"""

# What the proxy does with a command, when it is not a plain forward.
_LOCAL_KINDS: Final = {b"ping": KIND_PING, b"quit": KIND_QUIT, b"auth": KIND_AUTH}
_SPLIT_NARG: Final = {b"mget": 3, b"del": 3, b"touch": 3, b"unlink": 3, b"mset": 5}
_UNSUPPORTED: Final = frozenset({b"move"})


class CommandSpec:
    """One row of the table, with everything the parser needs precomputed."""

    __slots__ = (
        "cls",
        "key_elements",
        "key_index",
        "kind",
        "local",
        "max_narg",
        "min_narg",
        "name",
        "plans",
        "split_narg",
        "supported",
    )

    def __init__(self, name: bytes, cls: int) -> None:
        min_narg, max_narg, key_index, key_elements = _CLASS_RULES[cls]
        self.name = name  # lower case, the `Request.cmd` value
        self.cls = cls
        self.min_narg = min_narg
        self.max_narg = max_narg
        self.key_index = key_index  # element holding the routing key; 0: placeholder
        self.key_elements = key_elements
        self.kind = _LOCAL_KINDS.get(name, KIND_FORWARD)
        self.split_narg = _SPLIT_NARG.get(name, NO_LIMIT)  # narg from which it is KIND_SPLIT
        self.local = name in _LOCAL_KINDS  # local kinds get `args`
        self.supported = name not in _UNSUPPORTED
        # plan(narg) for narg 0..9, for the parser's one-digit hot path
        self.plans = tuple(self.plan(narg) for narg in range(10))

    def arity_ok(self, narg: int) -> bool:
        """Whether nutcracker accepts a request of `narg` elements for this command."""
        if narg < self.min_narg or narg > self.max_narg:
            return False
        return self.cls != ARGKVX or narg % 2 == 1

    def kind_for(self, narg: int) -> int:
        return KIND_SPLIT if narg >= self.split_narg else self.kind

    def plan(self, narg: int) -> tuple[int, bool, bool] | None:
        """None if `narg` is refused, else (kind, whether `args` are collected, whether the
        parser's fast element loop may be used: not for EVAL, whose numkeys is checked)."""
        if not self.supported or not self.arity_ok(narg):
            return None
        kind = self.kind_for(narg)
        return kind, self.local or kind == KIND_SPLIT, self.cls != ARGEVAL

    def __repr__(self) -> str:
        return f"CommandSpec({self.name!r}, {CLASS_NAMES[self.cls]})"


def _build() -> dict[bytes, CommandSpec]:
    table: dict[bytes, CommandSpec] = {}
    cls = -1
    for line in _TABLE_TEXT.strip().splitlines():
        words = line.split()
        if not line[0].isspace():
            cls = CLASS_NAMES.index(words.pop(0))
        for word in words:
            name = word.encode()
            assert name not in table, name
            table[name] = CommandSpec(name, cls)
    return table


# name (lower case) -> spec. 137 entries.
COMMANDS: Final[dict[bytes, CommandSpec]] = _build()

# Lookup table for the parser: lower- and upper-case spellings map to the same spec, so the
# common cases need no `.lower()`; mixed case falls back to it.
LOOKUP: Final[dict[bytes, CommandSpec]] = {
    **COMMANDS, **{name.upper(): spec for name, spec in COMMANDS.items()}}

MAX_NAME_LEN: Final = max(len(name) for name in COMMANDS)


def _fast_heads() -> dict[bytes, tuple[CommandSpec, int, int, bool, bool]]:
    table = {}
    for name, spec in LOOKUP.items():
        for narg in range(1, 10):
            plan = spec.plans[narg]
            if plan is not None and len(name) <= 9:
                table[b"*%d\r\n$%d\r\n%s\r\n" % (narg, len(name), name)] = (spec, narg, *plan)
    return table


# The parser's hot path: the exact head `*<narg>\r\n$<len>\r\n<NAME>\r\n` of every accepted
# request with a one-digit narg and name length, in lower and upper case -> (spec, narg, *plan).
FAST_HEADS: Final = _fast_heads()

assert len(COMMANDS) == 137, len(COMMANDS)
