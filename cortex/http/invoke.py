"""``ANY /invoke/{projectId}/{slug}``: a function called over HTTP through Cortex.

The request is authenticated the way the function says (``authMode``: ``public``; ``api_key`` — an API key for the
project with the scope ``functions:invoke``; ``signed`` — the signed-ingest signature over the raw body), then its
body is read (``CORTEX_MAX_BODY_BYTES``, 413 beyond), turned into the function's ``event`` and handed to the project's
runtime through the provider (``invoke``: a warm worker thread of the function). The outcome becomes the answer: the
function's ``{statusCode, headers, body}``, or a problem — 504 past its timeout, 502 for a throw or its memory
limit, 503 when it is not deployed or the runtime is not running. Every answer carries ``X-Request-Id`` (the
request's id, ``cortex.http.observability``: the client's when it sent a sane one), which the function gets as
``ctx.requestId``; the invocation's ``console.*`` lines are kept with it (``getFunctionLogs``). Each invocation
counts in ``cortex_function_invocations_total{outcome}``: the runtime's outcome, or ``rejected`` / ``not_found`` /
``unavailable`` when it never reached the function.
"""

from __future__ import annotations

import json

import flask
import orjson

from cortex.engines.functions import handle_from
from cortex.events import ingest
from cortex.http import security
from cortex.http.gate import read_body
from cortex.http.problems import ApiProblem, domain_problem, render_problem
from cortex.lib import logs, metrics
from models import function_code as code
from models.access import project_for
from models.base import DomainError

REQUEST_ID = logs.REQUEST_ID
HIDDEN_HEADERS = {"x-api-key", "x-signature", "authorization", "cookie"}  # credentials stay with Cortex
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer",
              "proxy-authenticate", "proxy-authorization",
              "x-request-id"}  # not the function's: the request's own (cortex.http.observability)
GRACE = 5.0  # seconds the provider waits beyond the function's own timeout (the runtime enforces that one)


def request_id(request) -> str:
    """The request's id (one source: ``cortex.http.observability.RequestObserver``)."""
    rid = logs.current_request_id()
    if rid is None:  # not served through the observer (a bare WSGI stack): the same rule
        given = request.headers.get("X-Request-Id")
        rid = given if logs.sane_request_id(given) else logs.new_request_id()
    return rid


def _authorize(target: code.Invocation, request, raw_body_reader):
    """Check the credentials the function's authMode asks for; the raw body (read after an API key was checked,
    before a signature is)."""
    if target.auth_mode == "api_key":
        principal = security.authenticate(request, ["api-key"], "functions:invoke")
        try:
            project_for(principal, target.project_id)
        except DomainError:
            raise ApiProblem(403, "This API key is not for the function's project") from None
        return raw_body_reader()
    raw = raw_body_reader()
    if target.auth_mode == "signed":
        timestamp, signature = request.headers.get("X-Timestamp"), request.headers.get("X-Signature")
        if not timestamp or not signature:
            raise ApiProblem(401, "Authentication failed")
        if ingest.authenticate(target.project_id, timestamp, signature, raw).project.id != target.project_id:
            raise ApiProblem(401, "Authentication failed")
    return raw


def _event(request, raw: bytes) -> dict:
    mimetype = request.mimetype or ""
    if raw and (mimetype == "application/json" or mimetype.endswith("+json")):
        try:
            body = orjson.loads(raw)
        except ValueError as exc:
            raise ApiProblem(400, f"Request body is not valid JSON: {exc}") from None
    else:
        body = raw.decode("utf-8", "replace") if raw else None
    return {"method": request.method, "path": request.path,
            "query": {key: values[0] if len(values) == 1 else values for key, values in request.args.lists()},
            "headers": {name.lower(): value for name, value in request.headers.items()
                        if name.lower() not in HIDDEN_HEADERS},
            "body": body}


def _answer(result: dict) -> flask.Response:
    status = result.get("statusCode", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ApiProblem(502, f"The function answered an invalid statusCode {status!r}")
    headers = result.get("headers") or {}
    if not isinstance(headers, dict):
        raise ApiProblem(502, "The function answered headers that are not an object")
    body, mimetype = result.get("body"), None
    if body is None:
        data = b""
    elif isinstance(body, str):
        data, mimetype = body.encode(), "text/plain; charset=utf-8"
    else:
        data, mimetype = json.dumps(body, separators=(",", ":")).encode(), "application/json"
    response = flask.Response(data, status=status)
    if mimetype:
        response.headers["Content-Type"] = mimetype
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() not in HOP_BY_HOP and value is not None:
            response.headers[name] = str(value)
    return response


def invoke(provider, project_ref: str, slug: str) -> flask.Response:
    """Serve one invocation (see the module doc)."""
    request = flask.request
    rid = request_id(request)  # X-Request-Id: the observer puts it on every response
    invoked = False
    try:
        target = code.invocation(project_ref, slug)
        raw = _authorize(target, request, lambda: read_body(request))
        if target.deployment_status != "running":
            raise ApiProblem(503, f"Function {slug} is not deployed; publish or deploy it")
        handle = handle_from(target.runtime_encrypted) if target.runtime_status == "running" else None
        if handle is None:
            raise ApiProblem(503, "The project's functions runtime is not running")
        ctx = {"projectId": target.project_id, "functionId": target.function_id, "slug": target.slug,
               "version": target.version, "requestId": rid}
        outcome = provider.invoke(handle, target.slug, _event(request, raw), ctx,
                                  timeout=target.timeout / 1000 + GRACE)
        invoked = True
        metrics.count(metrics.FUNCTION_INVOCATIONS, outcome.outcome)
        code.record_invocation(target.deployment_id, target.function_id, [dict(line) for line in outcome.logs])
        if outcome.outcome == "ok":
            return _answer(outcome.result or {})
        raise _problem(outcome, target)
    except ApiProblem as exc:
        response = render_problem(exc)
    except DomainError as exc:
        response = domain_problem(exc)
    if not invoked:  # never reached the function (an invocation is counted above)
        metrics.count(metrics.FUNCTION_INVOCATIONS, _refused(response.status_code))
    return response


def _refused(status: int) -> str:
    """The outcome of an invocation that never reached the function."""
    return "not_found" if status == 404 else "unavailable" if status >= 500 else "rejected"


def _problem(outcome, target: code.Invocation) -> ApiProblem:
    if outcome.outcome == "timeout":
        return ApiProblem(504, f"Function {target.slug} did not answer within its timeout of {target.timeout} ms")
    if outcome.outcome == "memory":
        return ApiProblem(502, outcome.error or f"Function {target.slug} exceeded its memory limit")
    if outcome.outcome == "error":
        return ApiProblem(502, f"Function {target.slug} failed: {outcome.error or 'error'}")
    return ApiProblem(503, f"Function {target.slug} is not available on the runtime right now")
