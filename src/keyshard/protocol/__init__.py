"""Codecs: the bytes of the Redis and memcache protocols (sans-IO). See `protocol.base`."""
