"""Who is calling: bearer JWTs and API keys become a ``models.access.Principal`` (which projects it may use is
``models.access``)."""

from __future__ import annotations

import time
import uuid

import jwt

from cortex.http.problems import ApiProblem, unauthorized
from models.access import Principal
from models.identity import api_key_by_secret, note_api_key_use

_config = {"secret_key": None, "access_token_ttl": 3600, "touch_interval": 60}
_last_touched: dict[str, float] = {}


def configure(secret_key: str, access_token_ttl: int, touch_interval: int) -> None:
    """Set the signing key and lifetimes (called by the app factory)."""
    _config.update(secret_key=secret_key, access_token_ttl=access_token_ttl, touch_interval=touch_interval)
    _last_touched.clear()
    _verified.clear()


def issue_access_token(user_id: str, tenant_id: str) -> str:
    """A signed HS256 access token for a user."""
    now = int(time.time())
    claims = {
        "sub": user_id,
        "tid": tenant_id,
        "iat": now,
        "exp": now + _config["access_token_ttl"],
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, _config["secret_key"], algorithm="HS256")


#: Verified tokens → claims. Verification costs ~60 µs of a ~300 µs request; the signature of a given token
#: string never changes, so only ``exp`` is re-checked on a hit. Bounded; cleared when the key changes.
_verified: dict[str, dict] = {}
_VERIFIED_MAX = 10_000


def _from_bearer(token: str) -> Principal:
    """Verify a bearer access token."""
    claims = _verified.get(token)
    if claims is not None and claims["exp"] > time.time():
        return Principal(kind="user", tenant_id=claims["tid"], user_id=claims["sub"])
    try:
        claims = jwt.decode(
            token, _config["secret_key"], algorithms=["HS256"], options={"require": ["sub", "tid", "exp", "iat"]}
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("Access token has expired", ["bearer"]) from None
    except jwt.InvalidTokenError:
        raise unauthorized("Access token is invalid", ["bearer"]) from None
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[token] = claims
    return Principal(kind="user", tenant_id=claims["tid"], user_id=claims["sub"])


def _from_api_key(key: str) -> Principal:
    """Verify an API key, noting its use at most once per touch interval."""
    row = api_key_by_secret(key)
    if row is None:
        raise unauthorized("API key is invalid, revoked or expired", ["api-key"])
    now = time.monotonic()
    if now - _last_touched.get(row.id, -1e9) >= _config["touch_interval"]:
        _last_touched[row.id] = now
        note_api_key_use(row.id)
    return Principal(
        kind="api_key",
        tenant_id=row.tenant_id,
        user_id=row.created_by_id,
        api_key_id=row.id,
        scopes=frozenset(row.scopes or []),
        project_id=row.project_id,
    )


def authenticate(request, schemes: list[str], scope: str | None) -> Principal:
    """Authenticate a request against the operation's accepted schemes; 401/403 problems otherwise.

    Every credential header the operation accepts that is present must be valid, empty ones included (401):
    a broken ``X-API-Key`` beside a valid bearer token is refused, not ignored. With both valid, the API key
    is the principal (its scopes apply).
    """
    api_key = request.headers.get("X-API-Key") if "api-key" in schemes else None
    authorization = request.headers.get("Authorization") if "bearer" in schemes else None
    bearer = None
    if authorization is not None:
        kind, _, token = authorization.strip().partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise unauthorized("Authorization header must be 'Bearer <access token>'", schemes)
        bearer = _from_bearer(token.strip())
    if api_key is not None:
        if not api_key.strip():
            raise unauthorized("X-API-Key header is empty", ["api-key"])
        principal = _from_api_key(api_key.strip())
        if not scope:  # fail closed: an operation that names no scope takes no API key
            raise ApiProblem(403, "This operation declares no API-key scope; use a bearer token")
        if scope not in principal.scopes:
            raise ApiProblem(403, f"API key lacks the scope '{scope}' required by this operation")
        return principal
    if bearer is not None:
        return bearer
    accepted = " or ".join({"bearer": "a bearer access token", "api-key": "an X-API-Key header"}[s] for s in schemes)
    raise unauthorized(f"Authentication required: send {accepted}", schemes)


__all__ = ["Principal", "authenticate", "issue_access_token"]
