"""The HTTP side of the token providers (``models.tokens.TokenFetcher``) over the one outbound client.

A token-provider webservice URL is chosen by a tenant: it goes through :class:`cortex.integrations.outbound.
Sender` with the outbound address policy (``CORTEX_OUTBOUND_ALLOW_PRIVATE`` turns it off). The Rooms token API
(``CORTEX_ROOMS_API_URL``) is the operator's: trusted, no address policy. Either way: no redirects, a hard
timeout (``CORTEX_TOKEN_PROVIDER_TIMEOUT``), at most 1 MiB read, and a failure is answered by a 502 that names
the provider and the kind of failure ("address not allowed", "no answer within 10 s", "it answered HTTP 503",
"could not connect"), never a secret, a resolved address, a port state or an exception text.
"""

from __future__ import annotations

import json

from cortex import __version__
from cortex.integrations.outbound import Sender
from models.base import release_connection
from models.tokens import upstream_failed

MAX_REPLY_BYTES = 1024 * 1024


class HttpTokenFetcher:
    """``models.tokens.TokenFetcher``: one Sender for tenant-chosen URLs (address policy), one for trusted ones."""

    def __init__(self, *, timeout: float = 10.0, allow_private: bool = False):
        self.timeout = timeout
        self._tenant = Sender(timeout=timeout, allow_private=allow_private, max_body=MAX_REPLY_BYTES)
        self._trusted = Sender(timeout=timeout, allow_private=True, max_body=MAX_REPLY_BYTES)

    @classmethod
    def from_settings(cls, settings) -> HttpTokenFetcher:
        """The fetcher for ``CORTEX_TOKEN_PROVIDER_TIMEOUT`` and ``CORTEX_OUTBOUND_ALLOW_PRIVATE``."""
        return cls(timeout=settings.token_provider_timeout, allow_private=settings.outbound_allow_private)

    def close(self) -> None:
        """Close the pooled connections."""
        self._tenant.close()
        self._trusted.close()

    def fetch_json(self, what: str, url: str, method: str, headers: dict[str, str], body: bytes | None, *,
                   trusted: bool = False):
        """Send one request and return its parsed JSON reply; any failure → 502 naming ``what``."""
        release_connection()  # a slow provider must not hold a pooled database connection for its timeout
        sender = self._trusted if trusted else self._tenant
        outcome = sender.request(method, url, body, {"Accept": "application/json",
                                                     "User-Agent": f"Cortex/{__version__}", **headers})
        if outcome.status is None:
            raise upstream_failed(what, self._failure(outcome.error or ""))
        if not 200 <= outcome.status < 300:
            raise upstream_failed(what, f"it answered HTTP {outcome.status}")
        if outcome.truncated:
            raise upstream_failed(what, f"its reply is larger than {MAX_REPLY_BYTES} bytes")
        try:
            return json.loads(outcome.body)
        except ValueError:
            raise upstream_failed(what, "its reply is not valid JSON") from None

    def _failure(self, error: str) -> str:
        """The kind of failure of an exchange that got no response: never an address, a port state (refused vs.
        unreachable) or an exception text."""
        if error.startswith("timed out"):
            return f"no answer within {self.timeout:g} s"
        if error.startswith("refused:"):
            return "address not allowed"
        if error.startswith(("invalid URL", "unsupported URL")):
            return "its URL is not usable"
        return "could not connect"
