"""From the OpenAPI document to handler calls.

Connexion reads the document, resolves ``$ref``s, builds one :class:`OpenAPIOperation` per operation and
registers a Flask URL rule for it (``FlaskApi``); our resolver picks the handler by operationId. Instead of
Connexion's per-request ASGI middleware stack (measured too slow, see ARCHITECTURE.md), every operation gets
one precompiled :class:`OperationGate` that authenticates, validates and calls the handler synchronously.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from dataclasses import dataclass

import fastjsonschema
import flask
import orjson
from connexion.apps.flask import FlaskApi
from connexion.decorators.parameter import pythonic
from connexion.exceptions import ProblemException, TypeValidationError
from connexion.json_schema import Draft4RequestValidator, format_error_with_path
from connexion.resolver import Resolution, Resolver
from jsonschema import Draft4Validator, ValidationError

from cortex import security
from cortex.problems import ApiProblem

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
UNIMPLEMENTED_MARK = "__cortex_unimplemented__"
JSON_MIMETYPE = "application/json"


# ----------------------------------------------------------------- naming: operationId → handler


def snake_case(name: str) -> str:
    """``listSessions`` → ``list_sessions``; ``API Keys`` → ``api_keys``."""
    name = re.sub(r"[^0-9A-Za-z]+", "_", name.strip())
    name = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    name = re.sub(r"([A-Z0-9]+)([A-Z][a-z])", r"\1_\2", name)
    return name.strip("_").lower()


def handler_location(operation: dict) -> tuple[str, str]:
    """(module, function) that serves an operation: ``handlers/<first tag>.py::<snake operationId>``."""
    tags = operation.get("tags") or ["default"]
    return f"handlers.{snake_case(tags[0])}", snake_case(operation["operationId"])


def unimplemented(function):
    """Mark a scaffolded handler: it answers 501 and is listed by ``tools/check_handlers.py``."""
    setattr(function, UNIMPLEMENTED_MARK, True)
    return function


def find_handler(operation: dict):
    """The implemented handler function of an operation, or None (→ 501)."""
    module_name, function_name = handler_location(operation)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None
    function = getattr(module, function_name, None)
    if function is None or getattr(function, UNIMPLEMENTED_MARK, False):
        return None
    return function


def iter_operations(spec: dict):
    """Yield (method, path, operation) for every operation of a document."""
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


@dataclass(frozen=True)
class OperationStatus:
    """Where an operation is served and whether it is implemented yet."""

    method: str
    path: str
    operation_id: str
    module: str
    function: str
    implemented: bool


def operation_statuses(spec: dict) -> list[OperationStatus]:
    """The one place that decides which operations are implemented and which answer 501."""
    statuses = []
    for method, path, operation in iter_operations(spec):
        module, function = handler_location(operation)
        statuses.append(
            OperationStatus(method, path, operation["operationId"], module, function, find_handler(operation) is not None)
        )
    return statuses


def orphan_handlers(spec: dict) -> list[str]:
    """Public functions in handler modules that no operation of the document routes to."""
    import pkgutil

    import handlers

    wanted = {(s.module, s.function) for s in operation_statuses(spec)}
    orphans = []
    for info in pkgutil.iter_modules(handlers.__path__):
        module_name = f"handlers.{info.name}"
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if name.startswith("_") or not inspect.isfunction(value) or value.__module__ != module_name:
                continue
            if (module_name, name) not in wanted:
                orphans.append(f"{module_name}.{name}")
    return sorted(orphans)


def _not_implemented(operation_id: str):
    """A stand-in handler for an operation not built yet."""

    def handler(**_):
        raise ApiProblem(501, f"Operation {operation_id} is not implemented yet", title="Not Implemented")

    handler.__name__ = snake_case(operation_id)
    setattr(handler, UNIMPLEMENTED_MARK, True)
    return handler


class HandlerResolver(Resolver):
    """operationId → ``handlers.<module of first tag>.<snake_case operationId>``; missing → 501."""

    def resolve(self, operation):
        """Resolve one Connexion operation to its handler (or the 501 stand-in)."""
        raw = operation._operation
        function = find_handler(raw) or _not_implemented(raw["operationId"])
        return Resolution(function, raw["operationId"])


# ----------------------------------------------------------------- documented resources (Allow, 405)


class DocumentedPaths:
    """The document's path templates, matched as OpenAPI says: concrete paths before templated ones.

    Flask would route ``DELETE /api/api-keys/scopes`` to ``/api/api-keys/{id}``; the document says that URL is
    the ``/api/api-keys/scopes`` resource, which has no DELETE, so the answer is 405 with its ``Allow``.
    """

    def __init__(self, spec: dict):
        self.templates = []
        for path, item in spec.get("paths", {}).items():
            methods = {m.upper() for m in item if m in HTTP_METHODS}
            pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")
            self.templates.append((path.count("{"), path, pattern, methods))
        self.templates.sort(key=lambda t: (t[0], t[1]))

    def resource(self, url_path: str) -> tuple[str, set[str]] | None:
        """(template, methods) of the most concrete documented path matching a URL path."""
        for _params, path, pattern, methods in self.templates:
            if pattern.match(url_path):
                return path, methods
        return None

    def allow(self, url_path: str) -> list[str] | None:
        """The Allow header value for a URL path, from the document (None when undocumented)."""
        found = self.resource(url_path)
        if found is None:
            return None
        methods = set(found[1]) | {"OPTIONS"}
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    def shadows(self, template: str) -> list[re.Pattern]:
        """Patterns of more concrete documented paths that also match URLs of ``template``."""
        own = template.count("{")
        segments = template.split("/")
        found = []
        for params, path, pattern, _methods in self.templates:
            other = path.split("/")
            if params >= own or len(other) != len(segments):
                continue
            if all(a == b or a.startswith("{") for a, b in zip(segments, other, strict=True)):
                found.append(pattern)
        return found


# ----------------------------------------------------------------- the per-operation gate


# ----------------------------------------------------------------- schema validation


#: Keywords fastjsonschema checks exactly as jsonschema does, or more strictly (``nullable`` — it rejects null —
#: and ``$`` in patterns, which it reads as end of string). A schema using anything else (``readOnly``, which
#: Connexion's request validator enforces; ``$ref``; a cycle) is checked by jsonschema alone.
FAST_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "enum", "pattern", "format",
    "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems",
    "maxItems", "minProperties", "maxProperties", "multipleOf", "allOf", "anyOf", "oneOf", "not", "nullable",
})
ANNOTATIONS = frozenset({"description", "example", "examples", "title", "default", "deprecated", "discriminator",
                         "externalDocs", "xml"})


def _fast_formats(schema, formats: set, open_schemas: set) -> bool:
    """Is every keyword of ``schema`` (recursively) one fastjsonschema checks at least as strictly? Collects
    the ``format`` names used."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or id(schema) in open_schemas:
        return False
    open_schemas.add(id(schema))
    try:
        for key, value in schema.items():
            if key.startswith("x-") or key in ANNOTATIONS:
                continue
            if key not in FAST_KEYWORDS:
                return False
            if key == "properties":
                children = list(value.values())
            elif key in ("allOf", "anyOf", "oneOf") or (key == "items" and isinstance(value, list)):
                children = list(value)
            elif key in ("items", "not", "additionalProperties"):
                children = [value]
            else:
                children = []
                if key == "format":
                    formats.add(value)
                elif key == "enum" and any(isinstance(item, (bool, int, float)) for item in value):
                    return False  # Python's `in` has True == 1 == 1.0; jsonschema tells them apart
            if not all(_fast_formats(child, formats, open_schemas) for child in children):
                return False
        return True
    finally:
        open_schemas.discard(id(schema))


_NOT_COMPILED = object()
_fast_checks: dict[str, object] = {}  # canonical JSON of a schema → its fastjsonschema check (or None)


def _compile_fast(plain: dict):
    """fastjsonschema's check of a schema it can vouch for (see :class:`SchemaValidator`), else None."""
    key = json.dumps(plain, sort_keys=True, default=str)
    if key in _fast_checks:
        return _fast_checks[key]
    formats: set = set()
    check = None
    if _fast_formats(plain, formats, set()):
        checker = Draft4Validator.FORMAT_CHECKER
        try:
            check = fastjsonschema.compile(
                {**plain, "$schema": "http://json-schema.org/draft-04/schema#"},
                formats={name: (lambda value, name=name: checker.conforms(value, name)) for name in formats},
                use_default=False,  # never fill defaults into the caller's data
            )
        except Exception:  # a schema it cannot compile: jsonschema alone
            check = None
    _fast_checks[key] = check
    return check


class SchemaValidator:
    """A request schema check: Connexion's Draft 4 request validator (jsonschema) decides and words every
    error; a fastjsonschema compilation of the same schema answers first when it can vouch for the input.

    fastjsonschema is only used for schemas whose keywords it checks exactly as jsonschema does or more
    strictly (:data:`FAST_KEYWORDS`), with every ``format`` delegated to jsonschema's own format checker; so
    what it accepts jsonschema accepts too, and anything it rejects goes to jsonschema (for the verdict and the
    message). Measured (Python 3.11): the signed-ingest body 35 µs → 1.5 µs, a string header 1.6 µs → 0.1 µs;
    every request body and parameter schema of the served document qualifies.
    """

    def __init__(self, schema: dict):
        self.slow = Draft4RequestValidator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)
        # Connexion attaches the document's components for $ref resolution; schemas with a $ref are not fast.
        self._plain = {key: value for key, value in schema.items() if key != "components"}
        self._fast = _NOT_COMPILED

    @property
    def fast(self):
        """The fastjsonschema check, or None — compiled on first use (compiling all ~230 schemas of the
        document up front doubled ``create_app``'s time), once per process for equal schemas."""
        if self._fast is _NOT_COMPILED:
            self._fast = _compile_fast(self._plain)
        return self._fast

    def validate(self, instance) -> None:
        """Raise jsonschema's ValidationError when ``instance`` does not match."""
        if self.fast is not None:
            try:
                self.fast(instance)
                return
            except fastjsonschema.JsonSchemaValueException:
                pass
        self.slow.validate(instance)


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
        body = raw.get("requestBody")
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
        for pattern in self.shadows:  # the URL is a more concrete resource without this method
            if pattern.match(request.path):
                flask.abort(405)
        # The body is read before any database work: a slow client must not hold a pooled connection.
        raw = read_body(request) if self.body_validator is not None else None
        principal = security.authenticate(request, self.schemes, self.scope) if self.schemes else None
        kwargs = self._parameters(request, view_args)
        if self.body_validator is not None:
            body = self._body(request, raw)
            if self.wants("body"):
                kwargs["body"] = body
            if self.wants("raw_body"):  # the exact bytes, for signatures computed over them
                kwargs["raw_body"] = raw
        if principal is not None and self.wants("principal"):
            kwargs["principal"] = principal
        if self.project_param is not None and principal is not None:
            project = security.resolve_project(principal, kwargs[self.project_param.argument], self.role)
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


class CortexApi(FlaskApi):
    """Connexion's Flask API (document → URL rules) with one precompiled gate per operation."""

    def __init__(self, *args, **kwargs):
        self.paths = None
        super().__init__(*args, **kwargs)

    def make_operation(self, operation):
        """Build the view for one operation."""
        if self.paths is None:
            self.paths = DocumentedPaths(self.specification.raw)
        gate = OperationGate(operation, self.paths.shadows(operation.path))
        gate.provide_automatic_options = False  # OPTIONS is answered from the document (see cortex.app)
        return gate


__all__ = [
    "CortexApi",
    "HandlerResolver",
    "OperationGate",
    "ProblemException",
    "handler_location",
    "operation_statuses",
    "orphan_handlers",
    "snake_case",
    "unimplemented",
]


def event_types(spec: dict) -> list[str]:
    """Every event type the document defines: the ``type`` enums of its ``*Event`` schemas, sorted."""
    return sorted({
        value
        for name, schema in spec["components"]["schemas"].items() if name.endswith("Event")
        for value in schema.get("properties", {}).get("type", {}).get("enum", [])
    })
