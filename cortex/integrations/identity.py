"""The identity provider behind login: one interface, the embedded implementation is the default.

An external Fusion service can be plugged in later by implementing :class:`IdentityProvider` and selecting it
with ``CORTEX_IDENTITY_PROVIDER``; handlers only ever talk to this interface.
"""

from __future__ import annotations

from typing import Protocol

from models import identity
from models.identity import User


class IdentityProvider(Protocol):
    """What the Auth operations need from an identity service."""

    def authenticate(self, email: str, password: str) -> User | None:
        """The user with these credentials, or None."""

    def open_session(self, user: User) -> str:
        """Start a Fusion session for the user and return its id."""

    def user_for_session(self, session_id: str) -> User | None:
        """The user of a live Fusion session, or None when unknown, expired or revoked."""

    def revoke_session(self, session_id: str) -> bool:
        """End a Fusion session."""


class EmbeddedIdentityProvider:
    """Users, Argon2id password hashes and hashed Fusion sessions in Cortex's own database."""

    def __init__(self, session_ttl: int):
        self.session_ttl = session_ttl

    def authenticate(self, email: str, password: str) -> User | None:
        """Check email and password."""
        return identity.authenticate(email, password)

    def open_session(self, user: User) -> str:
        """Create a hashed, expiring, revocable session."""
        return identity.open_fusion_session(user, self.session_ttl)

    def user_for_session(self, session_id: str) -> User | None:
        """Look up a live session."""
        return identity.user_for_fusion_session(session_id)

    def revoke_session(self, session_id: str) -> bool:
        """Revoke a session."""
        return identity.revoke_fusion_session(session_id)


PROVIDERS = {"embedded": EmbeddedIdentityProvider}


def make_identity_provider(name: str, session_ttl: int) -> IdentityProvider:
    """Instantiate the configured provider."""
    try:
        return PROVIDERS[name](session_ttl)
    except KeyError:
        raise ValueError(f"CORTEX_IDENTITY_PROVIDER {name!r} is unknown (choose from {sorted(PROVIDERS)})") from None
