"""Events tag: the documentation-only event schema (the streams and ingest arrive with the real-time issue)."""

from cortex.routing import unimplemented
from models.base import new_id, rfc3339, utcnow
from models.events import DomainEvent, envelope


def get_event_schema():
    """GET /api/events/schema: one example envelope of the union (a ``session.created`` event).

    Built through ``models.events.envelope`` from an unsaved event, so it has exactly the wire form the
    streams deliver.
    """
    tenant_id, project_id, session_id = new_id(), new_id(), new_id()
    now = utcnow()
    session = {
        "id": session_id,
        "tenantId": tenant_id,
        "externalRoomId": "lobby-eu-west-1",
        "projectId": project_id,
        "gateway": "gateway.odin.4players.io",
        "title": "Squad voice - match 4821",
        "createdByUserId": new_id(),
        "createdAt": rfc3339(now),
        "status": "created",
        "idleTimeout": 300,
    }
    example = DomainEvent(
        id=new_id(),
        tenant_id=tenant_id,
        project_id=project_id,
        resource_id=f"session:{session_id}",
        type="session.created",
        source="cortex:api",
        payload={"action": "created", "data": session},
        timestamp=now,
    )
    return envelope(example)


@unimplemented
def stream(principal, types=None, resources=None, last_event_id=None):
    """GET /api/events/stream: Subscribe to real-time events via SSE (Tenant-wide)."""
    raise NotImplementedError("scaffolded: implement me, then remove @unimplemented")


@unimplemented
def stream_project(project, principal, types=None, resources=None, last_event_id=None):
    """GET /api/projects/{projectId}/events/stream: Subscribe to real-time events via SSE (Project-scoped)."""
    raise NotImplementedError("scaffolded: implement me, then remove @unimplemented")


@unimplemented
def ingest(x_timestamp, x_signature, x_project_id, body):
    """POST /api/events/ingest: Ingest an external domain event."""
    raise NotImplementedError("scaffolded: implement me, then remove @unimplemented")
