"""Password logins that resist guessing and floods: failed logins are counted per account and per client address,
and past the limit every try answers 429 with ``Retry-After`` — whatever the password — without spending Argon2 work.

- ``CORTEX_LOGIN_MAX_FAILURES`` (10) failed logins of one account, or ``CORTEX_LOGIN_MAX_FAILURES_PER_ADDRESS`` (50)
  from one client address, within ``CORTEX_LOGIN_WINDOW`` (900 s) of the first of them block further tries of that
  account, or from that address, until the window ends. An account's attempt is counted before its password is
  checked (a burst of concurrent guesses against one account cannot all slip under its limit); an address counts
  failed logins only (people behind one address logging in at once are not refused for it). A successful login
  resets its account's count (not the address's: logging into one's own account must not clear a guessing run
  against others).
- Counters live in Redis when ``REDIS_URL`` is set (every process shares them: ``cortex:login:fail:*`` keys that
  expire with their window), in process otherwise — and for 5 s after a Redis failure.
- The client address is the connection's; behind ``CORTEX_TRUSTED_PROXIES`` reverse proxies it is taken from
  ``X-Forwarded-For`` (werkzeug's ProxyFix, set up by the app factory).
- Accounts are keyed by a SHA-256 of the normalised email: no email is stored in Redis.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time

from cortex.http.problems import ApiProblem, unauthorized
from cortex.integrations.shared_state import RedisLink
from models.identity import User, normalise_email

KEY_PREFIX = "cortex:login:fail:"


class LoginThrottle:
    """Failed-login counters per account and per client address (see the module docstring)."""

    def __init__(self, max_failures: int = 10, max_per_address: int = 50, window: float = 900.0,
                 redis_url: str | None = None, clock=time.monotonic):
        self.max_failures = max_failures
        self.max_per_address = max_per_address
        self.window = window
        self.redis_url = redis_url
        self.clock = clock
        self._local: dict[str, tuple[int, float]] = {}  # key → (failures, window end)
        self._lock = threading.Lock()
        self._redis = RedisLink(redis_url, "login throttle", clock=clock)

    @classmethod
    def from_settings(cls, settings) -> LoginThrottle:
        """The throttle of ``CORTEX_LOGIN_*`` and ``REDIS_URL``."""
        return cls(settings.login_max_failures, settings.login_max_failures_per_address, settings.login_window,
                   settings.redis_url)

    @staticmethod
    def account_key(email: str) -> str:
        return KEY_PREFIX + "account:" + hashlib.sha256(normalise_email(email).encode()).hexdigest()

    @staticmethod
    def address_key(address: str) -> str:
        return KEY_PREFIX + "address:" + address

    # ---------------------------------------------------------------- the rule

    def attempt(self, email: str, address: str) -> int | None:
        """Before a password is checked: whole seconds until this account and address may try again when one of
        them is over its limit, else None. The account's attempt is counted now, so concurrent guesses against one
        account cannot all slip under its limit; the address counts failures only (``failed``), so many people
        behind one address logging in at once are never refused for it."""
        waits = []
        count, remaining = self._add(self.account_key(email))
        if count > self.max_failures:
            waits.append(max(1, math.ceil(remaining)))
        count, remaining = self._read(self.address_key(address))
        if count >= self.max_per_address:
            waits.append(max(1, math.ceil(remaining)))
        return max(waits) if waits else None

    def failed(self, email: str, address: str) -> None:
        """The attempt was a failed login: it stays counted for the account, and counts for the address."""
        self._add(self.address_key(address))

    def succeeded(self, email: str) -> None:
        """The attempt was a successful login: the account's count starts again."""
        self._delete(self.account_key(email))

    # ---------------------------------------------------------------- storage: Redis, else in process

    def _add(self, key: str) -> tuple[int, float]:
        """Count one more for ``key`` (its window starts with its first count); (count, seconds left)."""
        client = self._redis.client()
        if client is not None:
            try:
                with client.pipeline() as pipe:
                    count, _new, ttl = pipe.incr(key).expire(key, math.ceil(self.window), nx=True).pttl(key).execute()
                return int(count), max(ttl, 0) / 1000.0
            except Exception:
                self._redis.failed()
        with self._lock:
            now = self.clock()
            count, ends = self._local.get(key, (0, 0.0))
            count, ends = (count + 1, ends) if ends > now else (1, now + self.window)
            self._local[key] = (count, ends)
            if len(self._local) > 100_000:  # forget windows that ended
                self._local = {k: v for k, v in self._local.items() if v[1] > now}
            return count, ends - now

    def _read(self, key: str) -> tuple[int, float]:
        """(count, seconds left) of ``key``."""
        client = self._redis.client()
        if client is not None:
            try:
                with client.pipeline() as pipe:
                    count, ttl = pipe.get(key).pttl(key).execute()
                return int(count or 0), max(ttl, 0) / 1000.0
            except Exception:
                self._redis.failed()
        with self._lock:
            now = self.clock()
            count, ends = self._local.get(key, (0, 0.0))
            return (count, ends - now) if ends > now else (0, 0.0)

    def _delete(self, key: str) -> None:
        client = self._redis.client()
        if client is not None:
            try:
                client.delete(key)
                return
            except Exception:
                self._redis.failed()
        with self._lock:
            self._local.pop(key, None)


def password_login(identity, throttle: LoginThrottle, email: str, password: str, address: str) -> User:
    """The user these credentials belong to: 429 (``Retry-After``) once the account or the address has used up its
    attempts — decided before any password work —, 401 for wrong credentials (counted for the address too), the
    user otherwise (the account's count reset)."""
    wait = throttle.attempt(email, address)
    if wait is not None:
        raise ApiProblem(429, f"Too many failed logins for this account or from this address; retry after {wait} s",
                         headers={"Retry-After": str(wait)})
    user = identity.authenticate(email, password)
    if user is None:
        throttle.failed(email, address)
        raise unauthorized("Wrong email or password", ["bearer"])
    throttle.succeeded(email)
    return user
