"""The one way a process reaches Redis for state it shares with the other Cortex processes (counters, slots).

``REDIS_URL`` is optional: without it every such store falls back to counting in process. With it, a Redis
failure must not fail or stall requests either: :class:`RedisLink` hands out a client with short timeouts and,
after a failure, no client at all for a few seconds, during which the caller uses its in-process fallback.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("cortex.shared_state")

REDIS_PAUSE = 5.0  # seconds without Redis after a failure


_clients: dict[str, object] = {}


def redis_client(url: str):
    """This process's one Redis client for ``url`` (one connection pool; short timeouts: no request stalls on
    Redis)."""
    client = _clients.get(url)
    if client is None:
        import redis

        client = _clients[url] = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    return client


class RedisLink:
    """The Redis client of ``url`` (None: none configured) for one user, held back for a while after a failure."""

    def __init__(self, url: str | None, label: str, *, pause: float = REDIS_PAUSE, clock=time.monotonic):
        self.url = url
        self.label = label  # who uses it, for the log line of a failure
        self.pause = pause
        self.clock = clock
        self._paused_until = 0.0

    def client(self):
        """The Redis client, or None when no Redis is configured or it failed within the last ``pause`` s."""
        if self.url is None or self.clock() < self._paused_until:
            return None
        return redis_client(self.url)

    def failed(self) -> None:
        """A Redis call failed (call it from the ``except`` block): fall back in process for ``pause`` s."""
        self._paused_until = self.clock() + self.pause
        log.warning("%s: Redis unavailable, falling back to this process for %s s", self.label, self.pause,
                    exc_info=True)
