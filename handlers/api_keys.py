"""API Keys tag: create (key shown once), list, revoke, and the scope catalogue."""

from cortex.app import current_spec
from cortex.problems import ApiProblem, bad_request
from cortex.security import resolve_project
from models.base import parse_timestamp, rfc3339, rfc3339_raw, split_names, utcnow
from models.identity import LIVE_API_KEY_ROWS, create_api_key, revoke_api_key


def _api_key_body(key_id, name, prefix, scopes, project_id, last_used_at, expires_at, created_at) -> dict:
    """ApiKeyResponse (the one place an API key is turned into JSON); timestamps already RFC 3339."""
    body = {"id": key_id, "name": name, "keyPrefix": prefix, "scopes": scopes, "createdAt": created_at}
    if project_id is not None:
        body["projectId"] = project_id
    if last_used_at is not None:
        body["lastUsedAt"] = last_used_at
    if expires_at is not None:
        body["expiresAt"] = expires_at
    return body


def _serialize_api_key(row) -> dict:
    """ApiKeyResponse from a model instance."""
    return _api_key_body(row.id, row.name, row.key_prefix, list(row.scopes or []), row.project_id,
                         rfc3339(row.last_used_at), rfc3339(row.expires_at), rfc3339(row.created_at))


def get_scopes():
    """GET /api/api-keys/scopes: every scope with what it allows."""
    return [{"name": name, "description": text} for name, text in current_spec()["x-cortex-scopes"].items()]


def list_keys(principal):
    """GET /api/api-keys: the caller's live keys (never the secret)."""
    return [
        _api_key_body(i, n, p, split_names(s), pid, rfc3339_raw(used), rfc3339_raw(exp), rfc3339_raw(created))
        for i, n, p, s, pid, used, exp, created in LIVE_API_KEY_ROWS.rows(tenant=principal.tenant_id, owner=principal.user_id)
    ]


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
    if "projectId" in body:
        project_id = resolve_project(principal, body["projectId"]).id  # 404 unless the caller's project
    expires_at = None
    if "expiresAt" in body:
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
    row = revoke_api_key(principal.tenant_id, principal.user_id, id_)
    if row is None:
        raise ApiProblem(404, f"API key {id_} not found")
    return _serialize_api_key(row)
