"""The process's Prometheus metrics (prometheus-client), defined once here so every layer can count.

``GET /metrics`` (``cortex.http.observability``) exposes them with the ones computed at scrape time from the
database (``cortex_webhook_queue_depth``, ``cortex_consumer_lag_seconds``).

**Several processes on one host** (``cortex serve`` ×N, ``cortex worker``, ``cortex runtime``): set
``PROMETHEUS_MULTIPROC_DIR`` to one directory, the same for all of them, as prometheus-client documents it —
each process then keeps its values in memory-mapped files there (``counter_<pid>.db``, …) and any serving
process's ``/metrics`` adds up every process's (counters and histograms summed; ``cortex_sse_streams`` summed over
live processes). Empty the directory before the processes start (e.g. on deploy), never while they run.
Without it every process counts for itself (a worker's deliveries are then not visible through ``/metrics``).

Labels are bounded: ``operation`` is an operationId (or ``unknown``), outcomes and statuses are fixed sets, and
event types are the code's and the document's (beyond :data:`MAX_EVENT_TYPES` distinct ones: ``other``).
"""

from __future__ import annotations

import os
from bisect import bisect_left

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
if MULTIPROC_DIR:  # before any value exists: each one opens its process's file in the directory
    os.makedirs(MULTIPROC_DIR, exist_ok=True)
disable_created_metrics()  # no `*_created` series: half the scrape, and Prometheus itself does not need them

#: Seconds; finer than prometheus-client's default at the low end, where most API answers are.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INGEST_OUTCOMES = ("accepted", "replayed", "rejected", "rate_limited", "invalid")
WEBHOOK_OUTCOMES = ("delivered", "retry", "failed")
INVOCATION_OUTCOMES = ("ok", "timeout", "memory", "error", "not_found", "unavailable", "rejected")
MAIL_OUTCOMES = ("sent", "retry", "failed")
MAX_EVENT_TYPES = 500

HTTP_REQUESTS_HELP = "HTTP requests answered, by operationId and status"
HTTP_DURATION_HELP = ("Time from receiving a request to its response starting (event streams: to opening), by "
                      "operationId")
#: Every metric of this module. None is registered in prometheus-client's global registry (``own_metrics()``
#: exports them): importing this module again — a fresh import of our packages — registers nothing twice.
_OWN: list = []


def _own(metric):
    _OWN.append(metric)
    return metric


SSE_STREAMS = _own(Gauge("cortex_sse_streams", "Open event streams (text/event-stream responses)",
                         multiprocess_mode="livesum", registry=None))
EVENTS = _own(Counter("cortex_events", "Domain events written to the event log, by type", ["type"], registry=None))
INGEST_EVENTS = _own(Counter("cortex_ingest_events", "Signed-ingest requests, by outcome", ["outcome"],
                             registry=None))
WEBHOOK_DELIVERIES = _own(Counter("cortex_webhook_deliveries", "Webhook delivery attempts, by outcome (retry: "
                                  "failed, tried again later)", ["outcome"], registry=None))
FUNCTION_INVOCATIONS = _own(Counter("cortex_function_invocations", "HTTP invocations of functions, by outcome",
                                    ["outcome"], registry=None))
MAIL_SENT = _own(Counter("cortex_mail_sent", "Mail send attempts, by outcome (retry: failed, tried again later)",
                         ["outcome"], registry=None))

for _counter, _outcomes in ((INGEST_EVENTS, INGEST_OUTCOMES), (WEBHOOK_DELIVERIES, WEBHOOK_OUTCOMES),
                            (FUNCTION_INVOCATIONS, INVOCATION_OUTCOMES), (MAIL_SENT, MAIL_OUTCOMES)):
    for _outcome in _outcomes:  # every outcome is exported from the start, at 0
        _counter.labels(_outcome)

_event_children: dict[str, object] = {}

# ----------------------------------------------------------------- the two per-request metrics
#
# They are counted on every request, so they cost as little as possible. One process (the usual case): plain
# numbers that a collector turns into the two families at scrape time (~0.5 µs per request, against ~3 µs for a
# labelled Counter and Histogram of prometheus-client under gevent, whose every increment takes a lock; a serving
# process runs its requests in greenlets of one thread, so nothing interleaves an update). Multi-process mode:
# prometheus-client's own Counter and Histogram, whose values live in the shared directory's files.

_requests: dict[tuple[str, str], int] = {}  # (operation, status) → requests
_durations: dict[str, list] = {}  # operation → [count, sum, per bucket (the last one: beyond the largest)]


def _observe_in_process(operation: str, status: str, seconds: float) -> None:
    key = (operation, status)
    _requests[key] = _requests.get(key, 0) + 1
    histogram = _durations.get(operation)
    if histogram is None:
        histogram = _durations[operation] = [0, 0.0] + [0] * (len(DURATION_BUCKETS) + 1)
    histogram[0] += 1
    histogram[1] += seconds
    histogram[2 + bisect_left(DURATION_BUCKETS, seconds)] += 1


class RequestCollector:
    """``cortex_http_requests_total`` and ``cortex_http_request_duration_seconds`` of this process (one process)."""

    def collect(self):
        requests = CounterMetricFamily("cortex_http_requests", HTTP_REQUESTS_HELP, labels=["operation", "status"])
        for (operation, status), count in sorted(_requests.items()):
            requests.add_metric([operation, status], count)
        yield requests
        durations = HistogramMetricFamily("cortex_http_request_duration_seconds", HTTP_DURATION_HELP,
                                          labels=["operation"])
        bounds = [floatToGoString(bound) for bound in DURATION_BUCKETS] + ["+Inf"]
        for operation, (_count, total, *per_bucket) in sorted(_durations.items()):
            cumulative, buckets = 0, []
            for bound, in_bucket in zip(bounds, per_bucket, strict=True):
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            durations.add_metric([operation], buckets, total)
        yield durations


if MULTIPROC_DIR:
    HTTP_REQUESTS = _own(Counter("cortex_http_requests", HTTP_REQUESTS_HELP, ["operation", "status"], registry=None))
    HTTP_DURATION = _own(Histogram("cortex_http_request_duration_seconds", HTTP_DURATION_HELP, ["operation"],
                                   buckets=DURATION_BUCKETS, registry=None))
    _http_children: dict[tuple[str, str], tuple] = {}  # (operation, status) → (counter child, histogram child)

    def observe_request(operation: str, status: str, seconds: float) -> None:
        """Count one answered request (``status``: the three-digit code) and its duration."""
        children = _http_children.get((operation, status))
        if children is None:
            children = _http_children[(operation, status)] = (HTTP_REQUESTS.labels(operation, status),
                                                             HTTP_DURATION.labels(operation))
        children[0].inc()
        children[1].observe(seconds)
else:
    _own(RequestCollector())
    observe_request = _observe_in_process


def own_metrics():
    """The metric families of this process (this module's; single-process mode — in multi-process mode
    prometheus-client's ``MultiProcessCollector`` reads every process's values from the shared directory)."""
    for metric in _OWN:
        yield from metric.collect()


def count_events(types) -> None:
    """Count events written to the log (one type per event)."""
    for event_type in types:
        child = _event_children.get(event_type)
        if child is None:
            if len(_event_children) < MAX_EVENT_TYPES:
                child = _event_children[event_type] = EVENTS.labels(event_type)
            else:
                child = EVENTS.labels("other")
        child.inc()


def count(counter: Counter, outcome: str) -> None:
    """Count one outcome of ``counter`` (one of the ``*_OUTCOMES`` above)."""
    counter.labels(outcome).inc()
