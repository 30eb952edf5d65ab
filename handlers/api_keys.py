"""API Keys tag: create (key shown once), list, revoke, and the scope catalogue."""

from cortex.app import current_spec
from cortex.problems import ApiProblem, bad_request
from cortex.security import resolve_project
from models.base import parse_timestamp, rfc3339, utcnow
from models.identity import create_api_key, live_api_keys, revoke_api_key


def _serialize_api_key(row) -> dict:
    """ApiKeyResponse (the one place an API key is turned into JSON)."""
    body = {
        "id": row.id,
        "name": row.name,
        "keyPrefix": row.key_prefix,
        "scopes": list(row.scopes or []),
        "createdAt": rfc3339(row.created_at),
    }
    for field, value in (("projectId", row.project_id), ("lastUsedAt", rfc3339(row.last_used_at)),
                         ("expiresAt", rfc3339(row.expires_at))):
        if value is not None:
            body[field] = value
    return body


def get_scopes():
    """GET /api/api-keys/scopes: every scope with what it allows."""
    return [{"name": name, "description": text} for name, text in current_spec()["x-cortex-scopes"].items()]


def list_keys(principal):
    """GET /api/api-keys: the tenant's live keys (never the secret)."""
    return [_serialize_api_key(row) for row in live_api_keys(principal.tenant_id)]


def create_key(principal, body):
    """POST /api/api-keys: issue a key; the full key is in this response only."""
    name = body["name"].strip()
    if not name:
        raise bad_request("name must not be empty")
    known = current_spec()["x-cortex-scopes"]
    unknown = sorted(set(body["scopes"]) - set(known))
    if unknown:
        raise bad_request(f"unknown scopes {unknown}; see GET /api/api-keys/scopes")
    if not body["scopes"]:
        raise bad_request("scopes must name at least one scope")
    project_id = None
    if body.get("projectId"):
        project_id = resolve_project(principal, body["projectId"]).id  # 404 unless the caller's project
    expires_at = None
    if body.get("expiresAt"):
        try:
            expires_at = parse_timestamp(body["expiresAt"])
        except ValueError:
            raise bad_request("expiresAt must be an ISO 8601 date-time, e.g. 2030-12-31T23:59:59Z") from None
        if expires_at <= utcnow():
            raise bad_request("expiresAt must be in the future")
    row, key = create_api_key(principal.tenant_id, principal.user_id, name, body["scopes"], project_id, expires_at)
    return {**_serialize_api_key(row), "key": key}, 201


def revoke_key(principal, id_):
    """DELETE /api/api-keys/{id}: revoke at once."""
    row = revoke_api_key(principal.tenant_id, id_)
    if row is None:
        raise ApiProblem(404, f"API key {id_} not found")
    return _serialize_api_key(row)
