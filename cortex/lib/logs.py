"""Request-scoped log context and the process's logging setup (text or one JSON object per line).

Pure: no HTTP stack. The HTTP layer (``cortex.http.observability.RequestObserver``) opens a
:class:`RequestContext` for every request — its ``X-Request-Id`` (the client's when it sent a sane one, else a new
one), method, path, and, once known, the operation and project — in a context variable, which gevent keeps per
greenlet (per connection). :class:`RequestContextFilter` copies it onto every log record of that request, and
:func:`configure_logging` installs the one handler that writes them:

- ``text`` (default): ``<time> <LEVEL> <logger> [<request id or ->]: <message>``;
- ``json``: one JSON object per line (python-json-logger): ``time``, ``level``, ``logger``, ``message``,
  ``requestId`` (null outside a request), and when known ``operation``, ``project``; the access line adds
  ``method``, ``path``, ``status`` and ``durationMs``; a traceback is the ``exc_info`` string.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

#: A request id a client may choose (``X-Request-Id``); anything else is replaced by a new one.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(requestId)s]: %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(message)s %(requestId)s"
JSON_NAMES = {"levelname": "level", "name": "logger"}


class RequestContext:
    """What the log lines and metrics of one request share (changed in place as the request goes on)."""

    __slots__ = ("request_id", "method", "path", "operation", "project", "status", "streaming")

    def __init__(self, request_id: str, method: str | None = None, path: str | None = None):
        self.request_id = request_id
        self.method = method
        self.path = path
        self.operation: str | None = None  # the operationId, once routed (cortex.http.gate)
        self.project: str | None = None  # the project id, once resolved (cortex.http.gate)
        self.status: str | None = None  # the WSGI status line, once the response started
        self.streaming = False  # the body is produced while it is sent (an event stream): the context lasts as long


_current: ContextVar[RequestContext | None] = ContextVar("cortex_request", default=None)


def sane_request_id(value: str | None) -> bool:
    """May a client-sent ``X-Request-Id`` be used as the request's id?"""
    return value is not None and REQUEST_ID.fullmatch(value) is not None


_id_prefix = os.urandom(8).hex()  # 64 random bits per process …
_id_numbers = itertools.count(1)  # … and a counter: unique ids without a system call per request


def _new_process_ids() -> None:
    global _id_prefix, _id_numbers
    _id_prefix, _id_numbers = os.urandom(8).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_new_process_ids)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, unique (a random prefix per process + a counter); not a secret."""
    return f"{_id_prefix}{next(_id_numbers):016x}"


def current() -> RequestContext | None:
    """The context of the request this greenlet (thread) serves, if any."""
    return _current.get()


def current_request_id() -> str | None:
    """The id of the request being served, if any."""
    context = _current.get()
    return None if context is None else context.request_id


def enter(context: RequestContext) -> None:
    """Make ``context`` the current request's (until :func:`leave`, or the next request of this greenlet)."""
    _current.set(context)


def leave(context: RequestContext) -> None:
    """End ``context`` — unless a later request of the same greenlet or thread replaced it meanwhile."""
    if _current.get() is context:
        _current.set(None)


def set_operation(operation: str) -> None:
    """Name the current request's operation (its metrics label and log field)."""
    context = _current.get()
    if context is not None:
        context.operation = operation


def set_streaming() -> None:
    """The current request's body is produced while it is sent: keep its context until the body is closed."""
    context = _current.get()
    if context is not None:
        context.streaming = True


def set_project(project_id: str | None) -> None:
    """Record the project the current request resolved (log field)."""
    context = _current.get()
    if context is not None:
        context.project = project_id


class RequestContextFilter(logging.Filter):
    """Puts the current request's id, operation and project on each record (fields a record brings along through
    ``extra`` win); outside a request it adds nothing (text: ``-``; JSON: ``requestId`` null)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if context is not None:
            fields = record.__dict__
            fields.setdefault("requestId", context.request_id)
            if context.operation is not None:
                fields.setdefault("operation", context.operation)
            if context.project is not None:
                fields.setdefault("project", context.project)
        return True


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``CORTEX_LOG_FORMAT`` (``text`` or ``json``)."""
    if log_format == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields=JSON_NAMES, timestamp="time", json_ensure_ascii=False)
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT, defaults={"requestId": "-"})
    raise ValueError(f"unknown log format {log_format!r}; one of {', '.join(LOG_FORMATS)}")


_handler: logging.Handler | None = None  # the handler configure_logging installed on the root logger


def configure_logging(level: str = "INFO", log_format: str = "text", stream=None) -> logging.Handler | None:
    """Install the process's log handler on the root logger (stderr), with the request context on every line.

    Like ``logging.basicConfig`` it leaves a root logger alone that has handlers someone else installed (a test
    runner's); calling it again replaces the handler it installed itself. Returns the handler (None: left alone).
    """
    global _handler
    root = logging.getLogger()
    if any(handler is not _handler for handler in root.handlers):
        return None
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestContextFilter())
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    _handler = handler
    # Warnings go through logging too: in JSON mode every line of the process is a JSON object.
    logging.captureWarnings(log_format == "json")
    return handler
