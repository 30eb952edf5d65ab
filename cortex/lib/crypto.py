"""Secrets at rest: Argon2id password hashes, SHA-256 token hashes, Fernet encryption of readable secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cortex.lib.background import gevent_patched

_hasher = PasswordHasher()  # Argon2id, memory-hard (64 MiB, t=3) per RFC 9106 defaults
_fernet: MultiFernet | None = None


def _fernet_for(secret_key: str) -> Fernet:
    """The Fernet key derived from a server secret (HKDF-SHA256)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"cortex-at-rest-v1", info=b"fernet").derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def init_encryption(secret_key: str, previous: tuple[str, ...] | list[str] = ()) -> None:
    """Derive the data-encryption key from the server secret; ``previous`` keys (CORTEX_SECRET_KEY_PREVIOUS)
    still decrypt what was stored under them — new secrets are always encrypted with the current key."""
    global _fernet
    _fernet = MultiFernet([_fernet_for(secret_key), *(_fernet_for(key) for key in previous)])


def encrypt(plaintext: str) -> str:
    """Encrypt a secret that must be read back later."""
    if _fernet is None:
        raise RuntimeError("encryption is not initialised (cortex.lib.crypto.init_encryption)")
    return _fernet.encrypt(plaintext.encode()).decode()


def reencrypt(token: str) -> str:
    """A stored secret encrypted again with the current key (read with the current or a previous one)."""
    if _fernet is None:
        raise RuntimeError("encryption is not initialised (cortex.lib.crypto.init_encryption)")
    try:
        return _fernet.rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise RuntimeError("stored secret cannot be decrypted with the configured secret keys") from exc


def decrypt(token: str) -> str:
    """Decrypt a secret written by :func:`encrypt`."""
    if _fernet is None:
        raise RuntimeError("encryption is not initialised (cortex.lib.crypto.init_encryption)")
    try:
        return _fernet.decrypt(token.encode()).decode()
    except InvalidToken as exc:  # wrong CORTEX_SECRET_KEY for this database
        raise RuntimeError("stored secret cannot be decrypted with the configured secret key") from exc


def _off_the_event_loop(function, *args):
    """Run CPU-heavy work (Argon2: tens of ms, GIL released) in gevent's thread pool when serving.

    Under ``cortex serve`` every request shares one event loop; an Argon2 computation there would stall all
    other connections. Outside gevent (CLI, tests) it simply runs inline.
    """
    if not gevent_patched():
        return function(*args)
    from gevent import get_hub

    with _argon2_slots():  # a greenlet waits here, not in the pool, while as many hashes run as there are cores
        return get_hub().threadpool.apply(function, args)


_slots = None


def _argon2_slots():
    """A greenlet-aware semaphore with one slot per core this process may use: a flood of logins cannot run more
    Argon2 computations at once than there are cores (each takes ~100 ms of CPU and 64 MiB), so the event loop
    keeps its share and memory stays bounded."""
    global _slots
    if _slots is None:
        import threading  # monkey-patched by then: gevent's semaphore

        _slots = threading.BoundedSemaphore(argon2_concurrency())
    return _slots


def argon2_concurrency() -> int:
    """How many Argon2 computations may run at once: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def hash_password(password: str) -> str:
    """Argon2id hash of a password."""
    return _off_the_event_loop(_hasher.hash, password)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_password(password_hash: str, password: str) -> bool:
    """Check a password against its Argon2id hash."""
    return _off_the_event_loop(_verify, password_hash, password)


# A valid hash to verify against when the user does not exist, so timing does not reveal emails.
_DUMMY_HASH = None


def burn_password_check(password: str) -> None:
    """Spend the same time as a real verification (unknown user)."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher.hash(secrets.token_hex(8))
    verify_password(_DUMMY_HASH, password)


def token_hash(token: str) -> str:
    """SHA-256 hex digest used to store bearer secrets (API keys, session ids)."""
    return hashlib.sha256(token.encode()).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    """Compare two strings without leaking where they differ."""
    return hmac.compare_digest(a.encode(), b.encode())
