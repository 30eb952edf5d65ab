"""One error shape everywhere: RFC 9457 ``application/problem+json``; the one place domain errors become HTTP."""

from __future__ import annotations

import json

from connexion.exceptions import ProblemException
from flask import Response

from cortex.lib.logs import current_request_id
from models.base import DomainError

PROBLEM_MIMETYPE = "application/problem+json"
REQUEST_URN = "urn:request:"  # a problem's ``instance``: this prefix + the request's X-Request-Id

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class ApiProblem(ProblemException):
    """An error answered to the client as problem+json (Connexion's exception, raised anywhere)."""

    def __init__(self, status: int, detail: str, *, title: str | None = None, headers=None, **ext):
        super().__init__(
            status=status,
            title=title or TITLES.get(status, "Error"),
            detail=detail,
            type="about:blank",
            headers=headers,
            ext=ext or None,
        )


def problem_response(status: int, detail: str, *, title: str | None = None, headers=None, ext=None) -> Response:
    """Render a problem document as a Flask response; ``instance`` names the request (``urn:request:<id>``, its
    ``X-Request-Id``) unless the problem names one itself."""
    body = {"type": "about:blank", "title": title or TITLES.get(status, "Error"), "status": status}
    if detail:
        body["detail"] = detail
    request_id = current_request_id()
    if request_id is not None:
        body["instance"] = f"{REQUEST_URN}{request_id}"
    if ext:
        body.update(ext)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def render_problem(exc: ProblemException) -> Response:
    """Render any Connexion ProblemException (ours included)."""
    return problem_response(exc.status, exc.detail, title=exc.title, headers=exc.headers, ext=exc.ext)


#: How each kind of broken domain rule (``models.base.DomainError.kind``) is answered.
DOMAIN_STATUS = {
    "invalid": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "rate_limited": 429,
    "upstream_failed": 502,
    "unavailable": 503,
}


def domain_problem(exc: DomainError) -> Response:
    """The answer to a broken domain rule (a 429 with the ``Retry-After`` it asks for)."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return problem_response(DOMAIN_STATUS[exc.kind], exc.detail, headers=headers)


def unauthorized(detail: str, schemes: list[str]) -> ApiProblem:
    """401 with a WWW-Authenticate challenge per accepted scheme."""
    challenges = []
    if "bearer" in schemes:
        challenges.append('Bearer realm="cortex"')
    if "api-key" in schemes:
        challenges.append('ApiKey realm="cortex", header="X-API-Key"')
    return ApiProblem(401, detail, headers={"WWW-Authenticate": ", ".join(challenges) or 'Bearer realm="cortex"'})
