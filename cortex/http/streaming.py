"""The HTTP side of the SSE streams: ``text/event-stream`` responses around ``cortex.events.sse.EventStream``."""

from __future__ import annotations

import flask

from cortex.events import sse
from cortex.http.app import runtime
from models.access import Principal

MIMETYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def open_stream(principal: Principal, project, types: str | None, resources: str | None,
                last_event_id: str | None) -> flask.Response:
    """The SSE response for the tenant-wide stream (``project`` None) or one project's stream: filters are parsed
    before the response starts, everything else happens while streaming (``cortex/events/sse.py``)."""
    if flask.request.method == "HEAD":
        sse.event_filter(principal, project, types, resources)
        return flask.Response(b"", mimetype=MIMETYPE, headers=HEADERS)
    services = runtime()
    stream = sse.open_stream(principal, project, types, resources, last_event_id, fanout=services.fanout,
                             max_seconds=services.settings.sse_max_seconds)
    return flask.Response(stream, mimetype=MIMETYPE, headers=HEADERS)
