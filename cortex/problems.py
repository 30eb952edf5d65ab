"""One error shape everywhere: RFC 9457 ``application/problem+json``."""

from __future__ import annotations

import json

from connexion.exceptions import ProblemException
from flask import Response

PROBLEM_MIMETYPE = "application/problem+json"

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
    """Render a problem document as a Flask response."""
    body = {"type": "about:blank", "title": title or TITLES.get(status, "Error"), "status": status}
    if detail:
        body["detail"] = detail
    if ext:
        body.update(ext)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def render_problem(exc: ProblemException) -> Response:
    """Render any Connexion ProblemException (ours included)."""
    return problem_response(exc.status, exc.detail, title=exc.title, headers=exc.headers, ext=exc.ext)


def bad_request(detail: str) -> ApiProblem:
    """400 with a detail naming the field and the rule."""
    return ApiProblem(400, detail)


def not_found(what: str) -> ApiProblem:
    """404 for a resource the caller cannot see."""
    return ApiProblem(404, f"{what} not found")


def conflict(detail: str) -> ApiProblem:
    """409 for a request that clashes with stored state."""
    return ApiProblem(409, detail)


def forbidden(detail: str) -> ApiProblem:
    """403 for an authenticated caller lacking a role or scope."""
    return ApiProblem(403, detail)


def unauthorized(detail: str, schemes: list[str]) -> ApiProblem:
    """401 with a WWW-Authenticate challenge per accepted scheme."""
    challenges = []
    if "bearer" in schemes:
        challenges.append('Bearer realm="cortex"')
    if "api-key" in schemes:
        challenges.append('ApiKey realm="cortex", header="X-API-Key"')
    return ApiProblem(401, detail, headers={"WWW-Authenticate": ", ".join(challenges) or 'Bearer realm="cortex"'})
