"""From the OpenAPI document to handler calls.

Connexion reads the document, resolves ``$ref``s, builds one :class:`OpenAPIOperation` per operation and
registers a Flask URL rule for it (``FlaskApi``); our resolver picks the handler by operationId, and every
operation's view is a precompiled ``cortex.http.gate.OperationGate``. :class:`DocumentedPaths` answers what
the document says a URL is (``Allow``, 405).
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass

from connexion.apps.flask import FlaskApi
from connexion.resolver import Resolution, Resolver

from cortex.http.gate import OperationGate
from cortex.http.problems import ApiProblem

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
#: Where handlers live. The resolver finds them by name, as Connexion's resolvers do: the HTTP layer never
#: imports a handler module by an import statement (imports point down: handlers → cortex → models).
HANDLERS_PACKAGE = "handlers"
UNIMPLEMENTED_MARK = "__cortex_unimplemented__"


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
    return f"{HANDLERS_PACKAGE}.{snake_case(tags[0])}", snake_case(operation["operationId"])


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

    package = importlib.import_module(HANDLERS_PACKAGE)
    wanted = {(s.module, s.function) for s in operation_statuses(spec)}
    orphans = []
    for info in pkgutil.iter_modules(package.__path__):
        module_name = f"{HANDLERS_PACKAGE}.{info.name}"
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

    def resource(self, url_path: str) -> tuple[list[str], set[str]] | None:
        """(templates, methods) of the most concrete documented paths matching a URL path: every template with
        the fewest parameters that matches (``…/members/{memberId}`` and ``…/members/{participantId}`` are one
        resource), and the methods of all of them."""
        found, fewest, methods = [], None, set()
        for params, path, pattern, path_methods in self.templates:  # sorted by number of parameters
            if fewest is not None and params > fewest:
                break
            if pattern.match(url_path):
                fewest = params
                found.append(path)
                methods |= path_methods
        return (found, methods) if found else None

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
        gate.provide_automatic_options = False  # OPTIONS is answered from the document (see cortex.http.app)
        return gate


def event_types(spec: dict) -> list[str]:
    """Every event type the document defines: the ``type`` enums of its ``*Event`` schemas, sorted."""
    return sorted({
        value
        for name, schema in spec["components"]["schemas"].items() if name.endswith("Event")
        for value in schema.get("properties", {}).get("type", {}).get("enum", [])
    })
