"""API Keys tag: create (key shown once), list, revoke, and the scope catalogue."""

from cortex.http.app import current_settings, current_spec
from models import api_keys


def get_scopes():
    """GET /api/api-keys/scopes: every scope with what it allows."""
    return [{"name": name, "description": text} for name, text in current_spec()["x-cortex-scopes"].items()]


def list_keys(principal):
    """GET /api/api-keys: the caller's live keys (never the secret)."""
    return api_keys.list_key_bodies(principal)


def create_key(principal, body):
    """POST /api/api-keys: issue a key acting for the caller; the full key is in this response only."""
    return api_keys.issue_key(principal, body["name"], body["scopes"], current_spec()["x-cortex-scopes"],
                              body.get("projectId"), body.get("expiresAt"),
                              limit=current_settings().max_api_keys_per_user), 201


def revoke_key(principal, id_):
    """DELETE /api/api-keys/{id}: revoke at once."""
    return api_keys.revoke_key(principal, id_)
