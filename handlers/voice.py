"""Voice tag: activation, peer limit, ODIN access keys (the key shown once, public halves kept), JWKS, analytics
(concurrent peers and active rooms over time, from presence spans)."""


from cortex import odin
from cortex.permissions import permissions_for
from cortex.problems import not_found
from models import presence, voice
from models.base import rfc3339


def _voice_settings(status: voice.VoiceStatus, principal, project) -> dict:
    """VoiceSettings (the one place voice state becomes JSON); permissions follow the caller's role."""
    return {
        "peerLimit": status.peer_limit,
        "accessKeysCount": status.access_keys_count,
        "hostingType": "hosted",
        "activated": status.activated,
        "permissions": permissions_for(principal.roles.get(project.id, "developer"), principal.scopes),
    }


def _access_key(row: voice.OdinAccessKey) -> dict:
    """OdinAccessKey (the one place an access key becomes JSON): public key and key id, never the key."""
    body = {"id": row.id, "name": row.name, "pubKey": row.pub_key, "keyId": row.key_id}
    if row.description is not None:
        body["description"] = row.description
    body["created"] = rfc3339(row.created_at)
    body["updated"] = rfc3339(row.updated_at)
    return body


def get_voice_settings(principal, project):
    """GET …/voice/settings: activation, peer limit, number of keys, the caller's permissions."""
    return _voice_settings(voice.voice_status(project), principal, project)


def activate_voice(principal, project):
    """POST …/voice/activate: idempotent; a second call answers 201 with the same settings."""
    return _voice_settings(voice.activate_voice(project), principal, project), 201


def update_peer_limit(principal, project, body):
    """PUT …/voice/peer-limit: a whole number ≥ 0 (0 = unlimited); 409 before activation."""
    status = voice.set_peer_limit(project, body["peerLimit"])
    return _voice_settings(status, principal, project)


def list_access_keys(project):
    """GET …/voice/access-keys: public halves, oldest first."""
    return [_access_key(row) for row in voice.access_keys(project)]


def create_access_key(project, body):
    """POST …/voice/access-keys: a new ODIN access key, returned in this response only; 409 before activation."""
    row, access_key = voice.create_access_key(project, body["name"], body.get("description"))
    return {**_access_key(row), "accessKey": access_key}, 201


def edit_access_key(project, access_key_id, body):
    """PUT …/voice/access-keys/{accessKeyId}: new name; description replaced when given (blank clears it)."""
    row = voice.edit_access_key(project, access_key_id, body["name"], body.get("description", voice.KEEP))
    return _access_key(row)


def delete_access_key(project, access_key_id):
    """DELETE …/voice/access-keys/{accessKeyId}: permanently; tokens signed with the key stop verifying."""
    row = voice.delete_access_key(project, access_key_id)
    return {"id": row.id, "deleted": True}


def get_voice_jwks(project_id):
    """GET …/voice/jwks.json (public): the project's access-key public keys as a JWK set; by id or appId."""
    keys = voice.public_keys(project_id)
    if keys is None:
        raise not_found(f"Project {project_id}")
    return {"keys": [odin.jwk(pub_key) for pub_key in keys]}


def get_analytics(project, start):
    """GET …/voice/analytics: concurrent peers (present participants) per bucket since ``start`` (Unix seconds).

    Clamped to the last 31 days; 5-minute buckets up to 24 h, 1 hour up to 7 days, 6 hours beyond (see
    models.presence). A ``start`` in the future answers empty series; NaN answers 400.
    """
    return presence.peers_over_time(project.id, start)


def get_rooms_analytics(project, start):
    """GET …/voice/rooms-analytics: active rooms (distinct externalRoomId with a peer present) per bucket."""
    return presence.rooms_over_time(project.id, start)
