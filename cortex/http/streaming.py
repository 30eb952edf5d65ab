"""The HTTP side of the SSE streams: ``text/event-stream`` responses around ``cortex.events.sse.EventStream``."""

from __future__ import annotations

import flask

from cortex.events import sse
from cortex.http.app import runtime
from cortex.http.problems import ApiProblem
from cortex.lib.logs import set_streaming
from cortex.lib.metrics import SSE_STREAMS
from models.access import Principal
from models.base import release_connection

MIMETYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SLOT_RETRY_SECONDS = 10  # Retry-After of a stream refused at the caller's limit


def open_stream(principal: Principal, project, types: str | None, resources: str | None,
                last_event_id: str | None) -> flask.Response:
    """The SSE response for the tenant-wide stream (``project`` None) or one project's stream: filters are parsed
    before the response starts, everything else happens while streaming (``cortex/events/sse.py``)."""
    if flask.request.method == "HEAD":
        sse.event_filter(principal, project, types, resources)
        return flask.Response(b"", mimetype=MIMETYPE, headers=HEADERS)
    services = runtime()
    settings = services.settings
    release_connection()  # authenticated: the stream (which reads in batches) holds no connection while it waits
    release = services.streams.acquire(principal, settings.sse_max_streams_per_principal, settings.sse_max_seconds)
    if release is None:
        raise ApiProblem(429, f"At most {settings.sse_max_streams_per_principal} open event streams per user or API "
                              "key (CORTEX_SSE_MAX_STREAMS_PER_PRINCIPAL); close one, or retry after "
                              f"{SLOT_RETRY_SECONDS} s", headers={"Retry-After": str(SLOT_RETRY_SECONDS)})
    SSE_STREAMS.inc()  # cortex_sse_streams: until the stream ends (EventStream calls on_close once)
    set_streaming()  # the stream's log lines carry the request's id until it ends

    def closed() -> None:
        SSE_STREAMS.dec()
        release()

    try:
        stream = sse.open_stream(principal, project, types, resources, last_event_id, fanout=services.fanout,
                                 max_seconds=settings.sse_max_seconds, on_close=closed)
    except BaseException:
        closed()
        raise
    return flask.Response(stream, mimetype=MIMETYPE, headers=HEADERS)
