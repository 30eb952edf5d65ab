"""The per-operation gate: authenticate → validate → resolve project and role → call the handler → render.

Instead of Connexion's per-request ASGI middleware stack (measured too slow, see ARCHITECTURE.md), every
operation gets one precompiled :class:`OperationGate` that Flask calls directly.
"""

from __future__ import annotations

import inspect
import json
import re

import flask
import orjson
from connexion.decorators.parameter import pythonic
from connexion.exceptions import TypeValidationError
from connexion.json_schema import format_error_with_path
from jsonschema import ValidationError

from cortex.http import security
from cortex.http.problems import ApiProblem
from cortex.http.validation import SchemaValidator
from cortex.lib import logs
from models.access import project_for
from models.base import release_connection

JSON_MIMETYPE = "application/json"


class ParameterSpec:
    """One path/query/header parameter: name, pythonic argument name, precompiled validator."""

    def __init__(self, definition: dict):
        self.name = definition["name"]
        self.location = definition["in"]
        self.required = bool(definition.get("required")) or self.location == "path"
        self.argument = pythonic(self.name)
        # A credential (x-cortex-credential, e.g. the signature headers of ingest): missing → 401, not 400.
        self.credential = bool(definition.get("x-cortex-credential"))
        schema = definition.get("schema", {})
        self.validator = SchemaValidator(schema)


class OperationGate:
    """Authenticate → validate → resolve project and role → call handler → serialise, for one operation.

    Operations not implemented yet go through the same gate, so their 501 comes only after the caller was
    authenticated, the input validated and the project resolved (tenancy and roles hold from day one).
    """

    def __init__(self, operation, shadows: list[re.Pattern] | None = None):
        raw = operation._operation
        self.shadows = shadows or []
        self.operation_id = operation.operation_id
        self.function = operation.function
        self.schemes = [name for requirement in (operation.security or []) for name in requirement]
        self.scope = raw.get("x-cortex-scope")
        self.role = raw.get("x-cortex-role")
        self.uri_parser = operation.uri_parser_class(operation.parameters, operation.body_definition())
        self.parameters = [ParameterSpec(p) for p in operation.parameters]
        seen: set[str] = set()
        for parameter in self.parameters:  # `Last-Event-ID` header and `lastEventId` query: last_event_id_query
            if parameter.argument in seen:
                parameter.argument = f"{parameter.argument}_{parameter.location}"
            seen.add(parameter.argument)
        # x-cortex-raw-body: the handler reads the body itself, after its own authentication (function invocation:
        # any content type, credentials that depend on the function) — the gate neither reads nor parses it.
        body = None if raw.get("x-cortex-raw-body") else raw.get("requestBody")
        self.body_required = bool(body and body.get("required"))
        self.body_validator = None
        if body:
            schema = operation.body_schema(JSON_MIMETYPE)
            self.body_validator = SchemaValidator(schema)
        signature = inspect.signature(self.function)
        self.accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        self.accepts = set(signature.parameters)
        self.project_param = next((p for p in self.parameters if p.name == "projectId" and p.location == "path"), None)
        self.__name__ = getattr(self.function, "__name__", self.operation_id)

    def wants(self, argument: str) -> bool:
        """Does the handler take this argument?"""
        return self.accepts_any or argument in self.accepts

    def __call__(self, **view_args):
        """Serve one request (Flask view function)."""
        request = flask.request
        context = logs.current()  # the request's log context and metrics label (cortex.http.observability)
        if context is not None:
            context.operation = self.operation_id
        for pattern in self.shadows:  # the URL is a more concrete resource without this method
            if pattern.match(request.path):
                flask.abort(405)
        # Credentials first (and the parameters, signature headers included): an unauthenticated request is answered
        # 401 without its body being waited for or buffered. Then the body, before any other database work — and
        # without a pooled connection (an API-key lookup may have taken one): a slow client must not hold it.
        principal = security.authenticate(request, self.schemes, self.scope) if self.schemes else None
        kwargs = self._parameters(request, view_args)  # signature headers (x-cortex-credential) included
        if self.body_validator is not None:
            release_connection()
            raw = read_body(request)
            body = self._body(request, raw)
            if self.wants("body"):
                kwargs["body"] = body
            if self.wants("raw_body"):  # the exact bytes, for signatures computed over them
                kwargs["raw_body"] = raw
        if principal is not None and self.wants("principal"):
            kwargs["principal"] = principal
        if self.project_param is not None and principal is not None:
            project = project_for(principal, kwargs[self.project_param.argument], self.role)
            if context is not None:
                context.project = project.id
            if self.wants("project"):
                kwargs["project"] = project
        if not self.accepts_any:
            kwargs = {name: value for name, value in kwargs.items() if name in self.accepts}
        return render(self.function(**kwargs))

    def _parameters(self, request, view_args: dict) -> dict:
        """Coerce and validate path, query and header parameters into handler arguments."""
        if not self.parameters:
            return {}
        try:
            path = self.uri_parser.resolve_path(view_args)
            query = self.uri_parser.resolve_query(request.args.to_dict(flat=False)) if request.args else {}
        except TypeValidationError as exc:
            raise ApiProblem(400, str(exc)) from None
        kwargs = {}
        for parameter in self.parameters:
            if parameter.location == "path":
                value = path.get(parameter.name)
            elif parameter.location == "query":
                value = query.get(parameter.name)
            elif parameter.location == "header":
                value = request.headers.get(parameter.name)
            else:
                value = request.cookies.get(parameter.name)
            if isinstance(value, str) and "\x00" in value:
                raise ApiProblem(400, f"{parameter.location} parameter '{parameter.name}' contains a NUL character")
            if value is None:
                if parameter.credential:
                    raise ApiProblem(401, "Authentication failed")
                if parameter.required:
                    raise ApiProblem(400, f"Missing {parameter.location} parameter '{parameter.name}'")
                continue
            try:
                parameter.validator.validate(value)
            except ValidationError as exc:
                raise ApiProblem(
                    400, f"{parameter.location} parameter '{parameter.name}': {exc.message}"
                ) from None
            kwargs[parameter.argument] = value
        return kwargs

    def _body(self, request, raw: bytes):
        """Parse and validate the JSON request body."""
        if not raw:
            if self.body_required:
                raise ApiProblem(400, "Request body is required")
            return None
        mimetype = request.mimetype or ""
        if mimetype != JSON_MIMETYPE and not mimetype.endswith("+json"):
            raise ApiProblem(415, f"Request body must be {JSON_MIMETYPE}, not {mimetype or 'untyped'}")
        try:
            body = orjson.loads(raw)  # strict: no lone surrogates, NaN or nesting deeper than 1024
        except ValueError as exc:
            raise ApiProblem(400, f"Request body is not valid JSON: {exc}") from None
        if (b"\\u0000" in raw or b"\x00" in raw) and _contains_nul(body):
            raise ApiProblem(400, "Request body: strings must not contain NUL characters (\\u0000)")
        try:
            self.body_validator.validate(body)
        except ValidationError as exc:
            raise ApiProblem(400, f"Request body: {exc.message}{format_error_with_path(exc)}") from None
        return body


def _contains_nul(value) -> bool:
    """Does any string (or key) in a JSON document contain U+0000? PostgreSQL cannot store it."""
    pending = [value]
    while pending:  # iterative: documents may nest up to orjson's limit
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def read_body(request) -> bytes:
    """The raw request body, at most ``max_body_bytes`` (413 beyond, chunked bodies included)."""
    limit = flask.current_app.extensions["cortex"].settings.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise ApiProblem(413, f"Request body is larger than {limit} bytes")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise ApiProblem(413, f"Request body is larger than {limit} bytes")
    return data


def render(result) -> flask.Response:
    """Turn a handler's return value (body, (body, status) or (body, status, headers)) into a response."""
    if isinstance(result, flask.Response):
        return result
    status, headers = 200, None
    if isinstance(result, tuple):
        if len(result) == 3:
            result, status, headers = result
        else:
            result, status = result
    if result is None:
        response = flask.Response(status=status)
    else:
        try:
            body = orjson.dumps(result)
        except TypeError:  # e.g. an integer beyond 64 bits: the standard library can still write it
            body = json.dumps(result, separators=(",", ":"))
        response = flask.Response(body, status=status, mimetype=JSON_MIMETYPE)
    if headers:
        response.headers.update(headers)
    return response
