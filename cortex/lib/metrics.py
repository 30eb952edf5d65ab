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

from prometheus_client import Counter, Gauge, disable_created_metrics
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
# They are counted on every request, so they cost as little as possible: plain numbers in this process (~0.35 µs
# per request; a serving process runs its requests in greenlets of one thread, so nothing interleaves an update).
# One process (the usual case): a collector turns them into the two families at scrape time. Multi-process mode:
# :func:`flush_requests` writes them to this process's files in the shared directory every FLUSH_INTERVAL seconds
# (``cortex serve``) and before this process answers a scrape — prometheus-client's labelled Counter and Histogram
# write the files on every request instead, 3 memory-mapped values behind a lock each: ~4 µs per request, which
# cost ``GET /api`` 6-11 % of its throughput (``tools/bench_http.py --metrics-cost``).

HTTP_REQUESTS = "cortex_http_requests"
HTTP_DURATION = "cortex_http_request_duration_seconds"
FLUSH_INTERVAL = 1.0  # seconds: how late another process's /metrics may see this process's requests
_BOUNDS = [floatToGoString(bound) for bound in DURATION_BUCKETS] + ["+Inf"]

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


observe_request = _observe_in_process


class RequestCollector:
    """``cortex_http_requests_total`` and ``cortex_http_request_duration_seconds`` of this process (one process)."""

    def collect(self):
        requests = CounterMetricFamily(HTTP_REQUESTS, HTTP_REQUESTS_HELP, labels=["operation", "status"])
        for (operation, status), count in sorted(_requests.items()):
            requests.add_metric([operation, status], count)
        yield requests
        durations = HistogramMetricFamily(HTTP_DURATION, HTTP_DURATION_HELP, labels=["operation"])
        for operation, (_count, total, *per_bucket) in sorted(_durations.items()):
            cumulative, buckets = 0, []
            for bound, in_bucket in zip(_BOUNDS, per_bucket, strict=True):
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            durations.add_metric([operation], buckets, total)
        yield durations


_shared: dict[tuple, object] = {}  # (sample name, label values) → its memory-mapped value (multi-process mode)
_flushed: dict[tuple, float] = {}  # what flush_requests last wrote, per key of _requests / operation of _durations


def _shared_value(typ: str, family: str, sample: str, labelnames: tuple, labelvalues: tuple, help_text: str):
    """The memory-mapped value of one sample in this process's file, as prometheus-client's own Counter and
    Histogram name it (``values.ValueClass``, what they are built on), so ``MultiProcessCollector`` adds it up."""
    from prometheus_client import values

    value = _shared.get((sample, labelvalues))
    if value is None:
        value = _shared[(sample, labelvalues)] = values.ValueClass(typ, family, sample, labelnames, labelvalues,
                                                                   help_text)
    return value


def flush_requests() -> None:
    """Multi-process mode: write this process's request counts and durations (what changed since the last time)
    to its files in the shared directory; a no-op in one process. Totals, not increments: a flush that runs twice
    or late loses nothing."""
    if not MULTIPROC_DIR:
        return
    for (operation, status), requests in list(_requests.items()):
        if _flushed.get((operation, status)) != requests:
            _shared_value("counter", HTTP_REQUESTS, HTTP_REQUESTS + "_total", ("operation", "status"),
                          (operation, status), HTTP_REQUESTS_HELP).set(requests)
            _flushed[(operation, status)] = requests
    for operation, (observed, total, *per_bucket) in list(_durations.items()):
        if _flushed.get(operation) == observed:
            continue
        _shared_value("histogram", HTTP_DURATION, HTTP_DURATION + "_sum", ("operation",), (operation,),
                      HTTP_DURATION_HELP).set(total)
        for bound, in_bucket in zip(_BOUNDS, per_bucket, strict=True):
            _shared_value("histogram", HTTP_DURATION, HTTP_DURATION + "_bucket", ("operation", "le"),
                          (operation, bound), HTTP_DURATION_HELP).set(in_bucket)
        _flushed[operation] = observed


if not MULTIPROC_DIR:
    _own(RequestCollector())


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
