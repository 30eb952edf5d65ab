"""The one outbound HTTP client for every request the server makes to a URL a tenant chose (webhook
endpoints, token-provider webservices), and for operator-configured services (the Rooms token API).

:class:`Sender` sends one request and always answers with an :class:`Outcome` — it never raises for
network or HTTP problems. It keeps keep-alive pools per host (urllib3), follows no redirects, reads at
most ``max_body`` bytes of a response and bounds the whole exchange by ``timeout`` seconds (a hard
``gevent.Timeout`` when sockets are monkey-patched, urllib3's socket timeouts plus a deadline otherwise).

Server-side request forgery: before a new connection is made the host name is resolved here, every
resolved address is checked with the address policy of ``cortex.lib.addresses`` (loopback, private,
link-local, cloud metadata, multicast, reserved, shared address space, in every spelling and in IPv6 forms
embedding any of them), and the socket connects to a checked address itself — the name is not resolved a
second time, so DNS rebinding cannot slip in between check and connect. A refusal names the kind of address,
never the address. The ``Host`` header and TLS (SNI, certificate host name) still use the name.
``allow_private=True`` (``CORTEX_OUTBOUND_ALLOW_PRIVATE``, alias ``CORTEX_WEBHOOK_ALLOW_PRIVATE``) turns the
check off, e.g. for local receivers; a Sender for an operator-configured URL is built with it too (the
operator's own services may live on a private network).

Webhook signing (Standard Webhooks) is ``cortex.lib.webhook_signing``.
"""

from __future__ import annotations

import email.utils
import ipaddress
import math
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from urllib.parse import urljoin

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationValueError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import connection as urllib3_connection

from cortex.lib.addresses import address_kind, literal_ip
from cortex.lib.background import gevent_patched

__all__ = [
    "Outcome",
    "RefusedDestination",
    "Sender",
]

USER_AGENT = "Cortex-Webhooks/1.0"
ALLOW_PRIVATE_HINT = "set CORTEX_OUTBOUND_ALLOW_PRIVATE=true to allow"
MAX_RETRY_AFTER = 86400.0
_CHUNK = 16384
_MAX_ERROR = 300

class RefusedDestination(Exception):
    """A new connection was refused: an address of the host is not a permitted destination. Its message is
    the kind of address (``cortex.lib.addresses.address_kind``), never the address: a tenant must not learn
    what an internal name resolves to."""


class _ResolveError(Exception):
    """The host name could not be resolved (or resolved to nothing)."""


def _default_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, urllib3_connection.allowed_gai_family(), socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


@dataclass(slots=True)
class _Guard:
    """Resolution and the address check for one :class:`Sender`'s new connections."""

    resolver: Any
    allow_private: bool

    def addresses(self, host: str, port: int) -> list[str]:
        host = host.strip("[]")
        literal = literal_ip(host)
        if literal is not None:
            found = [str(literal)]  # nothing to resolve (any spelling: 127.1, 2130706433, 0x7f.0.0.1 …)
        else:
            try:
                found = list(dict.fromkeys(str(a) for a in self.resolver(host, port)))
            except Exception as e:  # resolvers may raise anything (gaierror, gevent DNS errors, ...)
                raise _ResolveError(host) from e
            if not found:
                raise _ResolveError(host)
        if not self.allow_private:
            for address in found:
                kind = address_kind(ipaddress.ip_address(address.split("%", 1)[0]))
                if kind is not None:
                    raise RefusedDestination(kind)
        return found


def _connect(conn: HTTPConnection, guard: _Guard) -> socket.socket:
    """urllib3's ``_new_conn`` with our resolution: connect to a checked address, never to the name."""
    host = conn._dns_host.rstrip(".")
    addresses = guard.addresses(host, conn.port)
    error: OSError | None = None
    for address in addresses:
        try:
            return urllib3_connection.create_connection(
                (address, conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except OSError as e:  # try the next address, as socket.create_connection does
            error = e
    assert error is not None
    if isinstance(error, TimeoutError):
        raise ConnectTimeoutError(conn, f"Connection to {host} timed out. (connect timeout={conn.timeout})")
    raise NewConnectionError(conn, f"Failed to establish a new connection: {error}") from error


class _GuardedHTTPConnection(HTTPConnection):
    guard: _Guard  # set on the per-Sender subclass

    def _new_conn(self) -> socket.socket:
        sock = _connect(self, self.guard)
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock


class _GuardedHTTPSConnection(HTTPSConnection):
    guard: _Guard

    def _new_conn(self) -> socket.socket:
        sock = _connect(self, self.guard)
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock


# --- the sender ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """What one request got back."""

    status: int | None  # None when there was no response (timeout, connection error, refused destination)
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names; repeats joined with ", "
    body: str = ""  # at most max_body bytes, decoded as UTF-8 (errors replaced)
    error: str | None = None  # None on 2xx, else a short human message
    duration_ms: float = 0.0
    retry_after: float | None = None  # seconds asked for by Retry-After on 429/503, within [0, 86400]
    truncated: bool = False  # the response body was longer than max_body (only max_body bytes were read)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value (delta-seconds or HTTP-date), clamped to [0, 86400]."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class _HardTimeout(Exception):
    """The overall deadline passed while reading the response body."""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__
        if isinstance(exc, ProtocolError) and len(exc.args) > 1 and isinstance(exc.args[1], BaseException):
            inner = exc.args[1]
        if inner is None:
            break
        exc = inner
    return exc


class Sender:
    """Sends requests over keep-alive pools; safe to share between threads and greenlets."""

    def __init__(
        self,
        *,
        timeout: float = 15.0,
        allow_private: bool = False,
        max_body: int = 65536,
        connections_per_host: int = 10,
        resolver=None,
    ) -> None:
        self.timeout = float(timeout)
        self.allow_private = allow_private
        self.max_body = max_body
        guard = _Guard(resolver or _default_resolver, allow_private)
        http_conn = type("GuardedHTTPConnection", (_GuardedHTTPConnection,), {"guard": guard})
        https_conn = type("GuardedHTTPSConnection", (_GuardedHTTPSConnection,), {"guard": guard})
        http_pool = type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn})
        https_pool = type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})
        self._pools = urllib3.PoolManager(
            num_pools=256,
            maxsize=connections_per_host,
            block=False,
            retries=False,
        )
        self._pools.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}

    def close(self) -> None:
        """Close every idle pooled connection (connections in use are closed when they come back)."""
        self._pools.clear()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        """Send one POST (see :meth:`request`)."""
        return self.request("POST", url, body, headers)

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Outcome:
        """Send one request; every network or HTTP problem comes back as an :class:`Outcome`, never raised."""
        started = time.perf_counter()
        try:
            parsed = urllib3.util.parse_url(url)
        except LocationValueError:
            return self._failed("invalid URL", started)
        if not parsed.scheme:
            return self._failed("invalid URL: no scheme", started)
        if parsed.scheme not in ("http", "https"):
            return self._failed(f"unsupported URL scheme {parsed.scheme!r} (only http and https)", started)
        if not parsed.host:
            return self._failed("invalid URL: no host", started)

        request_headers = dict(headers)
        names = {name.lower() for name in request_headers}
        if "content-type" not in names and body is not None:
            request_headers["Content-Type"] = "application/json"
        if "user-agent" not in names:
            request_headers["User-Agent"] = USER_AGENT

        timer = None
        if gevent_patched():
            import gevent

            timer = gevent.Timeout(self.timeout)
            timer.start()
        try:
            return self._exchange(method, url, parsed.host, body, request_headers, started)
        except BaseException as e:
            if timer is not None and e is timer:
                return self._failed(self._timed_out(), started)
            raise
        finally:
            if timer is not None:
                timer.close()

    # -- internals --

    def _timed_out(self) -> str:
        return f"timed out after {self.timeout:g} s"

    def _failed(self, error: str, started: float) -> Outcome:
        return Outcome(status=None, error=error, duration_ms=(time.perf_counter() - started) * 1000)

    def _exchange(self, method: str, url: str, host: str, body: bytes | None, headers: dict[str, str],
                  started: float) -> Outcome:
        deadline = started + self.timeout
        response = None
        try:
            response = self._pools.urlopen(
                method,
                url,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(total=self.timeout),
                preload_content=False,
                decode_content=True,
            )
            data, truncated = self._read_body(response, deadline)
        except Exception as e:
            if response is not None:
                _discard(response)
            return self._failed(self._describe(e, host), started)
        except BaseException:  # the hard gevent.Timeout (or a kill): the connection state is unknown
            if response is not None:
                _discard(response)
            raise

        status = response.status
        response_headers = {name.lower(): response.headers[name] for name in response.headers}
        error = None
        if not 200 <= status < 300:
            error = f"HTTP {status}"
            if 300 <= status < 400:
                location = response.headers.get("Location")
                target = f" to {urljoin(url, location.strip())}" if location else ""
                error = f"redirect not followed (HTTP {status}{target})"
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return Outcome(
            status=status,
            headers=response_headers,
            body=data.decode("utf-8", errors="replace"),
            error=error,
            duration_ms=(time.perf_counter() - started) * 1000,
            retry_after=retry_after,
            truncated=truncated,
        )

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> tuple[bytes, bool]:
        """Up to max_body bytes, and whether there was more; the connection goes back to the pool only if the
        body was read whole."""
        chunks: list[bytes] = []
        size = 0
        while size <= self.max_body:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise _HardTimeout
            conn = response.connection
            sock = getattr(conn, "sock", None) if conn is not None else None
            if sock is not None:
                sock.settimeout(remaining)
            # read1: at most one receive per call, so a body dripping in byte by byte still meets the deadline
            chunk = response.read1(min(_CHUNK, self.max_body + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
        if size > self.max_body:
            _discard(response)  # don't drain an unbounded body: drop the connection instead
            return data[: self.max_body], True
        response.release_conn()
        return data, False

    def _describe(self, exc: Exception, host: str) -> str:
        """A short human message for a failed exchange."""
        if isinstance(exc, RefusedDestination):
            return f"refused: address not allowed ({exc}; {ALLOW_PRIVATE_HINT})"
        if isinstance(exc, _ResolveError | NameResolutionError):
            return f"cannot resolve {host}"
        if isinstance(exc, _HardTimeout | ReadTimeoutError | TimeoutError):
            return self._timed_out()
        root = _root_cause(exc)
        if isinstance(exc, SSLError) or root.__class__.__module__ == "ssl":
            if isinstance(root, ssl.SSLCertVerificationError):
                return _short(f"TLS error: certificate verify failed: {root.verify_message}")
            reason = getattr(root, "reason", None) or str(root)
            return _short(f"TLS error: {reason}")
        if isinstance(root, TimeoutError) or (
            isinstance(exc, ConnectTimeoutError) and not isinstance(exc, NewConnectionError)
        ):
            return self._timed_out()
        if isinstance(root, ConnectionRefusedError):
            return "connection refused"
        if isinstance(root, ConnectionResetError | BrokenPipeError):
            return "connection reset"
        if root.__class__.__name__ == "RemoteDisconnected":
            return "connection closed without a response"
        if isinstance(exc, NewConnectionError):
            detail = getattr(root, "strerror", None) or str(root)
            return _short(f"connection failed: {detail}")
        if isinstance(exc, LocationValueError):
            return _short(f"invalid URL: {exc}")
        if isinstance(exc, HTTPError | OSError):
            return _short(f"connection error: {root}")
        return _short(f"error: {type(exc).__name__}: {exc}")


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Close the response's connection and hand the (closed) slot back to its pool."""
    try:
        response.close()
    except Exception:
        pass
    try:
        response.release_conn()
    except Exception:
        pass
