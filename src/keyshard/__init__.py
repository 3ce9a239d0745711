"""keyshard: a sharding proxy for Redis and memcached, drop-in compatible with nutcracker 0.5.0.

Compiled twins. `keyshard._speedups` (Cython, optional, built by `pip install` when a compiler
is present) holds compiled twins of the hot loops. Each module that has twins (protocol.redis,
protocol.memcache, hashing, pool) ends with

    if speedups_enabled():
        try:
            from keyshard._speedups import ...
        except ImportError:
            pass

so the pure-Python code above it stays the reference and the fallback.
`KEYSHARD_NO_EXTENSIONS=1` (read once, at the first import of keyshard) forces pure Python.
"""

import os

__version__ = "0.1.0"

_NO_EXTENSIONS = os.environ.get("KEYSHARD_NO_EXTENSIONS", "").strip() not in ("", "0")


def speedups_enabled() -> bool:
    """False when KEYSHARD_NO_EXTENSIONS forces pure Python."""
    return not _NO_EXTENSIONS


def speedups_in_use() -> bool:
    """Whether the compiled twins replace the pure-Python hot loops in this process."""
    if _NO_EXTENSIONS:
        return False
    try:
        from keyshard import _speedups  # noqa: F401
    except ImportError:
        return False
    return True
