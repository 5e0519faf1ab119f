"""The Redis/Valkey backend (see `backend` for the key layout and options)."""

from sessionary.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
