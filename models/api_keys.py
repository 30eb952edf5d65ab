"""API keys as their owners manage them: issue (the key shown once), list, revoke — and the ApiKeyResponse body.

The table, hashing and the low-level operations are ``models.identity`` (``create_api_key``,
``api_key_by_secret``…). A key acts for the user who creates it: see ``models.access``.
"""

from __future__ import annotations

from models.access import Principal, project_for
from models.base import (
    check_cap,
    invalid,
    not_found,
    parse_timestamp,
    rfc3339,
    rfc3339_raw,
    split_names,
    transaction,
    utcnow,
)
from models.identity import LIVE_API_KEY_ROWS, ApiKey, User, create_api_key, live_api_keys, revoke_api_key


def _api_key_body(key_id, name, prefix, scopes, project_id, last_used_at, expires_at, created_at) -> dict:
    """ApiKeyResponse from its values (timestamps already RFC 3339)."""
    body = {"id": key_id, "name": name, "keyPrefix": prefix, "scopes": scopes, "createdAt": created_at}
    if project_id is not None:
        body["projectId"] = project_id
    if last_used_at is not None:
        body["lastUsedAt"] = last_used_at
    if expires_at is not None:
        body["expiresAt"] = expires_at
    return body


def api_key_body(row: ApiKey) -> dict:
    """ApiKeyResponse of a key (never the key itself)."""
    return _api_key_body(row.id, row.name, row.key_prefix, list(row.scopes or []), row.project_id,
                         rfc3339(row.last_used_at), rfc3339(row.expires_at), rfc3339(row.created_at))


def list_key_bodies(principal: Principal) -> list[dict]:
    """The caller's live keys in its tenant, newest first (hot path: raw rows, see models.base.Prepared)."""
    return [
        _api_key_body(i, n, p, split_names(s), pid, rfc3339_raw(used), rfc3339_raw(exp), rfc3339_raw(created))
        for i, n, p, s, pid, used, exp, created
        in LIVE_API_KEY_ROWS.rows(tenant=principal.tenant_id, owner=principal.user_id)
    ]


def issue_key(principal: Principal, name: str, scopes: list[str], known_scopes, project_ref: str | None = None,
              expires_at: str | None = None, *, limit: int) -> dict:
    """Issue a key acting for the caller: CreateApiKeyResponse, the full key in it (and nowhere else, ever).

    400: a blank name, no scope or an unknown one (``known_scopes``: the document's catalogue), an
    ``expiresAt`` that is not an ISO 8601 date-time in the future; 404: ``project_ref`` names no project the
    caller may use; 409: the caller holds ``limit`` live keys already (``CORTEX_MAX_API_KEYS_PER_USER``).
    """
    name = name.strip()
    if not name:
        raise invalid("name must not be empty")
    unknown = sorted(set(scopes) - set(known_scopes))
    if unknown:
        raise invalid(f"unknown scopes {unknown}; see GET /api/api-keys/scopes")
    if not scopes:
        raise invalid("scopes must name at least one scope")
    project_id = project_for(principal, project_ref).id if project_ref is not None else None
    expires = None
    if expires_at is not None:
        try:
            expires = parse_timestamp(expires_at)
        except ValueError:
            raise invalid("expiresAt must be an ISO 8601 date-time, e.g. 2030-12-31T23:59:59Z") from None
        if expires <= utcnow():
            raise invalid("expiresAt must be in the future")
    with transaction():
        check_cap(User, principal.user_id, live_api_keys(principal.tenant_id, principal.user_id), limit,
                  "live API keys per user", "CORTEX_MAX_API_KEYS_PER_USER")
        row, key = create_api_key(principal.tenant_id, principal.user_id, name, scopes, project_id, expires)
    return {**api_key_body(row), "key": key}


def revoke_key(principal: Principal, key_id: str) -> dict:
    """Revoke one of the caller's live keys at once (404 when there is no such live key); its body."""
    row = revoke_api_key(principal.tenant_id, principal.user_id, key_id)
    if row is None:
        raise not_found(f"API key {key_id}")
    return api_key_body(row)
