"""keyshard: a sharding proxy for Redis and memcached, drop-in compatible with nutcracker 0.5.0."""

__version__ = "0.1.0"
