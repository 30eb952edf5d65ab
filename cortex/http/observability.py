"""Request ids, the access log and ``GET /metrics`` (Prometheus text format).

**Request ids.** :class:`RequestObserver` wraps the Flask WSGI app (inside ``ProxyFix``) and is the one source of
a request's id: the client's ``X-Request-Id`` when it is sane (``cortex.lib.logs.REQUEST_ID``: 1–64 of
``A-Za-z0-9._:-``), else 32 new hex digits. It lives in a ``cortex.lib.logs.RequestContext`` (a context variable,
per greenlet) while the request is served (an event stream: until its body is closed); every response carries it as ``X-Request-Id``, every
problem+json body as ``instance`` (``urn:request:<id>``, ``cortex.http.problems``), every log line of the request
as ``requestId`` (``cortex.lib.logs.RequestContextFilter``), and a function invocation as ``ctx.requestId``.

**Access log.** One line per request on the ``cortex.access`` logger (INFO): method, path (never the query),
operation, project (once resolved), status and duration in ms — timed until the response starts (an event stream:
until it opened).

**Metrics.** Per request: ``cortex_http_requests_total{operation,status}`` and
``cortex_http_request_duration_seconds{operation}``, ``operation`` being the operationId (``unknown`` when no route
matched; the documentation routes and ``/metrics`` have names of their own). The other metrics are counted where
things happen (``cortex.lib.metrics``); the queue depth and consumer lags are read from the database at scrape
time. ``GET /metrics`` needs ``Authorization: Bearer <CORTEX_METRICS_TOKEN>`` when that is set (401 problem
otherwise) and is open when it is not. With ``PROMETHEUS_MULTIPROC_DIR`` it reports every process of the host.
"""

from __future__ import annotations

import hmac
import logging
import os
from time import perf_counter

import flask
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from cortex.engines.function_events import CONSUMER as FUNCTIONS_CONSUMER
from cortex.engines.plugins import CONSUMER as PLUGINS_CONSUMER
from cortex.engines.sanctions import CONSUMER as SANCTIONS_CONSUMER
from cortex.engines.webhooks import CONSUMER as WEBHOOKS_CONSUMER
from cortex.http.problems import problem_response
from cortex.lib import logs, metrics
from models.base import as_utc, own_connection, utcnow
from models.events import DomainEvent, EventCursor
from models.webhooks import WebhookEvent

log = logging.getLogger("cortex.observability")
access_log = logging.getLogger("cortex.access")

UNKNOWN_OPERATION = "unknown"
#: The persistent event-log consumers whose lag is reported (any other cursor row is reported too).
CONSUMERS = (WEBHOOKS_CONSUMER, PLUGINS_CONSUMER, FUNCTIONS_CONSUMER, SANCTIONS_CONSUMER)
_INFO = logging.INFO


class RequestObserver:
    """WSGI middleware: the request's id and context, ``X-Request-Id`` on the response, the request's metrics and
    its access-log line (see the module doc). Kept lean: it runs on every request (~2 µs)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        started = perf_counter()
        request_id = environ.get("HTTP_X_REQUEST_ID")
        if request_id is None or _SANE_ID(request_id) is None:
            request_id = _new_id()
        context = RequestContext(request_id, environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
        _enter(context)
        header = ("X-Request-Id", request_id)

        def start(status, headers, exc_info=None):
            context.status = status
            headers.append(header)
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, start)
        except BaseException:
            context.status = context.status or "500"
            _finish(context, perf_counter() - started)
            logs.leave(context)
            raise
        _finish(context, perf_counter() - started)
        if context.streaming:  # its log lines come while the body is sent: the context ends when it is closed
            return _Body(body, context)
        logs.leave(context)
        return body


_SANE_ID = logs.REQUEST_ID.fullmatch
_new_id = logs.new_request_id
_enter = logs.enter
RequestContext = logs.RequestContext


def _finish(context: logs.RequestContext, seconds: float) -> None:
    """The request's metrics and access-log line."""
    status = (context.status or "500")[:3]
    operation = context.operation or UNKNOWN_OPERATION
    metrics.observe_request(operation, status, seconds)
    if access_log.isEnabledFor(_INFO):
        milliseconds = round(seconds * 1000, 3)
        path = context.path or ""
        if not path.isprintable():  # a decoded %0A must not start a line of its own (text format)
            path = path.encode("unicode_escape").decode("ascii")
        access_log.info("%s %s %s %.1f ms (%s%s)", context.method, path, status, milliseconds, operation,
                        f", project {context.project}" if context.project else "",
                        extra={"method": context.method, "path": path, "operation": operation,
                               "status": int(status), "durationMs": milliseconds})


class _Body:
    """The response body, passed through; the request's context ends when the server closes it (log lines of a
    streamed body still carry the request's id)."""

    __slots__ = ("body", "context")

    def __init__(self, body, context: logs.RequestContext):
        self.body = body
        self.context = context

    def __iter__(self):
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            logs.leave(self.context)


# ----------------------------------------------------------------- GET /metrics


class DatabaseCollector:
    """The metrics read from the database at scrape time: the webhook queue's depth and each persistent event
    consumer's lag (the age of the oldest event after its cursor; 0 when it is caught up)."""

    def collect(self):
        try:
            with own_connection():
                depth = WebhookEvent.select().where(WebhookEvent.status == "pending").count()
                lags = consumer_lags()
        except Exception:  # the database is down: the scrape still answers (without these)
            log.warning("metrics: reading the webhook queue and consumer cursors failed", exc_info=True)
            return
        yield GaugeMetricFamily("cortex_webhook_queue_depth", "Webhook deliveries waiting (pending, due or later)",
                                value=depth)
        lag = GaugeMetricFamily("cortex_consumer_lag_seconds", "Age of the oldest event after a persistent "
                                "consumer's cursor (0: caught up)", labels=["consumer"])
        for consumer, seconds in sorted(lags.items()):
            lag.add_metric([consumer], seconds)
        yield lag


def consumer_lags() -> dict[str, float]:
    """consumer → seconds its oldest unread event has waited (a consumer without a cursor row starts at 0)."""
    cursors = {consumer: 0 for consumer in CONSUMERS}
    cursors.update(EventCursor.select(EventCursor.consumer, EventCursor.seq).tuples())
    now = utcnow()
    lags = {}
    for consumer, seq in cursors.items():
        oldest = (DomainEvent.select(DomainEvent.timestamp).where(DomainEvent.seq > seq)
                  .order_by(DomainEvent.seq).limit(1).scalar())
        lags[consumer] = max(0.0, (now - as_utc(oldest)).total_seconds()) if oldest is not None else 0.0
    return lags


class _Scrape:
    """What one scrape exports: this process's metrics and prometheus-client's process/platform ones (every
    process's values from the shared directory in multi-process mode), then the database's."""

    def collect(self):
        if metrics.MULTIPROC_DIR:
            from prometheus_client import multiprocess

            metrics.flush_requests()  # this process's own requests, up to this one
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=metrics.MULTIPROC_DIR)
            yield from registry.collect()
        else:
            yield from REGISTRY.collect()
            yield from metrics.own_metrics()
        yield from DatabaseCollector().collect()


def metrics_view():
    """``GET /metrics``: the Prometheus text format (bearer ``CORTEX_METRICS_TOKEN`` when set)."""
    logs.set_operation("getMetrics")
    token = flask.current_app.extensions["cortex"].settings.metrics_token
    if token is not None:
        given = flask.request.headers.get("Authorization", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), token.encode()):
            return problem_response(401, "GET /metrics needs Authorization: Bearer <CORTEX_METRICS_TOKEN>",
                                    headers={"WWW-Authenticate": 'Bearer realm="cortex-metrics"'})
    return flask.Response(generate_latest(_Scrape()), headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                               "Cache-Control": "no-store"})


def install(app: flask.Flask) -> None:
    """Add ``GET /metrics`` to an app (``create_app``); the app's WSGI callable is wrapped by ``create_app``."""
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


def process_exiting(pid: int | None = None) -> None:
    """Multi-process mode: this serving process (or the worker ``pid`` of a ``cortex serve --workers`` supervisor)
    ends — its last request counts are written, its live gauges (open streams) stop counting."""
    if metrics.MULTIPROC_DIR:
        from prometheus_client import multiprocess

        if pid is None:
            metrics.flush_requests()

        multiprocess.mark_process_dead(pid or os.getpid(), metrics.MULTIPROC_DIR)
