"""Events tag: the example envelope, the SSE streams (``cortex/events/sse.py``) and signed ingest
(``cortex/events/ingest.py``)."""

from cortex.events import ingest as signed_ingest
from cortex.http.app import current_settings, debug_audio_store
from cortex.http.streaming import open_stream
from models.events import example_event_body


def get_event_schema():
    """GET /api/events/schema: one example envelope of the union (a ``session.created`` event)."""
    return example_event_body()


def stream(principal, types=None, resources=None, last_event_id=None, last_event_id_query=None):
    """GET /api/events/stream: the tenant's events as Server-Sent Events (see ``cortex/events/sse.py``)."""
    return open_stream(principal, None, types, resources, last_event_id or last_event_id_query)


def stream_project(project, principal, types=None, resources=None, last_event_id=None, last_event_id_query=None):
    """GET /api/projects/{projectId}/events/stream: one project's events as Server-Sent Events."""
    return open_stream(principal, project, types, resources, last_event_id or last_event_id_query)


def ingest(x_project_id, x_timestamp, x_signature, body, raw_body):
    """POST /api/events/ingest: a signed event from an ODIN service into the log (see ``cortex/events/ingest.py``).

    201 ``{id}``; any authentication failure 401 without detail; over the per-project rate 429 + Retry-After.
    """
    event_id = signed_ingest.ingest(x_project_id, x_timestamp, x_signature, body, raw_body,
                                    redis_url=current_settings().redis_url, audio_store=debug_audio_store())
    return {"id": event_id}, 201
