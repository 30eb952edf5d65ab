"""Voice tag: activation, peer limit, ODIN access keys (the key shown once, public halves kept), JWKS, analytics
(concurrent peers and active rooms over time, from presence spans)."""

from cortex.http.app import current_settings
from models import presence, voice
from models.base import deleted_body


def _settings_body(status: voice.VoiceStatus, principal, project) -> dict:
    """VoiceSettings with the permissions of the caller's role in the project (resolved by the gate)."""
    return voice.voice_settings_body(status, principal.roles[project.id], principal.scopes)


def get_voice_settings(principal, project):
    """GET …/voice/settings: activation, peer limit, number of keys, the caller's permissions."""
    return _settings_body(voice.voice_status(project), principal, project)


def activate_voice(principal, project):
    """POST …/voice/activate: idempotent; a second call answers 201 with the same settings."""
    return _settings_body(voice.activate_voice(project), principal, project), 201


def update_peer_limit(principal, project, body):
    """PUT …/voice/peer-limit: a whole number ≥ 0 (0 = unlimited); 409 before activation."""
    return _settings_body(voice.set_peer_limit(project, body["peerLimit"]), principal, project)


def list_access_keys(project):
    """GET …/voice/access-keys: public halves, oldest first."""
    return [voice.access_key_body(row) for row in voice.access_keys(project)]


def create_access_key(project, body):
    """POST …/voice/access-keys: a new ODIN access key, returned in this response only; 409 before activation."""
    row, access_key = voice.create_access_key(project, body["name"], body.get("description"),
                                              limit=current_settings().max_access_keys_per_project)
    return {**voice.access_key_body(row), "accessKey": access_key}, 201


def edit_access_key(project, access_key_id, body):
    """PUT …/voice/access-keys/{accessKeyId}: new name; description replaced when given (blank clears it)."""
    row = voice.edit_access_key(project, access_key_id, body["name"], body.get("description", voice.KEEP))
    return voice.access_key_body(row)


def delete_access_key(project, access_key_id):
    """DELETE …/voice/access-keys/{accessKeyId}: permanently; tokens signed with the key stop verifying."""
    return deleted_body(voice.delete_access_key(project, access_key_id).id)


def get_voice_jwks(project_id):
    """GET …/voice/jwks.json (public): the project's access-key public keys as a JWK set; by id or appId."""
    return voice.jwks_body(project_id)


def get_analytics(project, start):
    """GET …/voice/analytics: concurrent peers (present participants) per bucket since ``start`` (Unix seconds).

    Clamped to the last 31 days; 5-minute buckets up to 24 h, 1 hour up to 7 days, 6 hours beyond (see
    models.presence). A ``start`` in the future answers empty series; NaN answers 400.
    """
    return presence.peers_over_time(project.id, start)


def get_rooms_analytics(project, start):
    """GET …/voice/rooms-analytics: active rooms (distinct externalRoomId with a peer present) per bucket."""
    return presence.rooms_over_time(project.id, start)
