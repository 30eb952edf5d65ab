"""The npm registry client: which versions and dist-tags a package has (``getNpmPackageInfo``).

:class:`NpmRegistryClient` asks the operator-configured registry (``CORTEX_NPM_REGISTRY``, default
``https://registry.npmjs.org``) for a package's abbreviated document (``application/vnd.npm.install-v1+json``:
``versions`` and ``dist-tags`` only, much smaller than the full one) through the server's one outbound client,
:class:`cortex.integrations.outbound.Sender`. The registry URL is the operator's, so the Sender is built with
``allow_private=True`` (an operator's mirror may live on a private network); the package name is checked with
``cortex.lib.npm.validate_package_name`` before it becomes part of a URL.

Answers (documents and 404s) are cached per name for ``ttl`` seconds in a bounded dict, shared by threads and
greenlets. Failures are the exceptions below; the models/HTTP layer maps them to problems. Their messages never
carry the registry's address or what it resolves to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from cortex import __version__
from cortex.integrations.outbound import Sender
from cortex.lib.npm import sort_versions, validate_package_name

__all__ = [
    "InvalidPackageName",
    "NpmRegistryClient",
    "NpmRegistryError",
    "PackageNotFound",
    "RegistryUnavailable",
]

log = logging.getLogger(__name__)

ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8"
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024  # abbreviated documents of very large packages run to a few MiB
MAX_CACHED = 1000


class NpmRegistryError(Exception):
    """Base class of the client's failures."""


class InvalidPackageName(NpmRegistryError):
    """The name is not a valid npm package name; the message is the reason."""


class PackageNotFound(NpmRegistryError):
    """The registry has no package of this name (HTTP 404)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class RegistryUnavailable(NpmRegistryError):
    """The registry gave no usable answer (no answer, timeout, 5xx or another unexpected status, not JSON,
    too large)."""


_NOT_FOUND = object()  # a cached 404


class NpmRegistryClient:
    """Reads package documents from one npm registry; safe to share between threads and greenlets."""

    def __init__(self, registry_url: str, sender: Sender | None = None, ttl: float = 300.0, timeout: float = 10.0,
                 *, clock: Callable[[], float] = time.monotonic, max_cached: int = MAX_CACHED):
        parts = urlsplit(registry_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("npm registry URL must be an http(s) URL")
        self.registry_url = registry_url.rstrip("/") + "/"
        self.ttl = float(ttl)
        self._owns_sender = sender is None
        self._sender = sender or Sender(timeout=timeout, allow_private=True, max_body=MAX_DOCUMENT_BYTES)
        self._clock = clock
        self._max_cached = max(1, int(max_cached))
        self._cache: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the Sender's idle connections if this client built it."""
        if self._owns_sender:
            self._sender.close()

    def package_url(self, name: str) -> str:
        """Where the registry serves the package document: ``/<name>`` or ``/@scope%2fname`` (npm's encoding; on
        the wire urllib3 normalizes the escape to ``%2F``, which RFC 3986 makes the same)."""
        return self.registry_url + name.replace("/", "%2f")

    def package_info(self, name: str) -> dict:
        """``{"name", "versions": [newest first by semver], "distTags": {tag: version}}``.

        Raises :class:`InvalidPackageName` (before any request), :class:`PackageNotFound` (404) or
        :class:`RegistryUnavailable`."""
        reason = validate_package_name(name)
        if reason:
            raise InvalidPackageName(reason)
        cached = self._cached(name)
        if cached is None:
            cached = self._fetch(name)
            self._store(name, cached)
        if cached is _NOT_FOUND:
            raise PackageNotFound(name)
        return {"name": cached["name"], "versions": list(cached["versions"]), "distTags": dict(cached["distTags"])}

    # -- internals --

    def _cached(self, name: str) -> Any:
        with self._lock:
            entry = self._cache.get(name)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._cache[name]
                return None
            return entry[1]

    def _store(self, name: str, value: Any) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._cache.pop(name, None)
            self._cache[name] = (self._clock() + self.ttl, value)
            while len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)

    def _fetch(self, name: str) -> Any:
        headers = {"Accept": ACCEPT, "User-Agent": f"Cortex/{__version__} (npm registry client)"}
        outcome = self._sender.request("GET", self.package_url(name), None, headers)
        if outcome.status == 404:
            return _NOT_FOUND
        if outcome.status is None:
            log.warning("npm registry: no answer for %s: %s", name, outcome.error)
            if outcome.error and outcome.error.startswith("timed out"):
                raise RegistryUnavailable("the npm registry did not answer in time")
            raise RegistryUnavailable("the npm registry is not reachable")
        if not outcome.ok:
            log.warning("npm registry: HTTP %s for %s", outcome.status, name)
            raise RegistryUnavailable(f"the npm registry answered HTTP {outcome.status}")
        if outcome.truncated:
            log.warning("npm registry: document of %s larger than %d bytes", name, MAX_DOCUMENT_BYTES)
            raise RegistryUnavailable("the npm registry's package document is too large")
        try:
            document = orjson.loads(outcome.body)
        except orjson.JSONDecodeError:
            raise RegistryUnavailable("the npm registry answered something that is not JSON") from None
        if not isinstance(document, dict):
            raise RegistryUnavailable("the npm registry answered something that is not a package document")
        versions = document.get("versions")
        tags = document.get("dist-tags")
        return {
            "name": name,
            "versions": sort_versions(versions) if isinstance(versions, dict) else [],
            "distTags": {tag: version for tag, version in tags.items() if isinstance(version, str)}
            if isinstance(tags, dict) else {},
        }
