"""Events tag: the example envelope, the SSE streams (``cortex/sse.py``) and signed ingest (``cortex/ingest.py``)."""

from cortex import ingest as signed_ingest
from cortex import sse
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


def stream(principal, types=None, resources=None, last_event_id=None, last_event_id_query=None):
    """GET /api/events/stream: the tenant's events as Server-Sent Events (see ``cortex/sse.py``)."""
    return sse.open_stream(principal, None, types, resources, last_event_id or last_event_id_query)


def stream_project(project, principal, types=None, resources=None, last_event_id=None, last_event_id_query=None):
    """GET /api/projects/{projectId}/events/stream: one project's events as Server-Sent Events."""
    return sse.open_stream(principal, project, types, resources, last_event_id or last_event_id_query)


def ingest(x_project_id, x_timestamp, x_signature, body, raw_body):
    """POST /api/events/ingest: a signed event from an ODIN service into the log (see ``cortex/ingest.py``).

    201 ``{id}``; any authentication failure 401 without detail; over the per-project rate 429 + Retry-After.
    """
    return {"id": signed_ingest.ingest(x_project_id, x_timestamp, x_signature, body, raw_body)}, 201
