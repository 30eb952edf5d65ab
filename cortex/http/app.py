"""Application factory: settings → database → Connexion-built routes → one Flask WSGI app."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import flask
import swagger_ui_bundle
from connexion.exceptions import ProblemException
from connexion.spec import Specification
from playhouse.pool import MaxConnectionsExceeded
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.middleware.proxy_fix import ProxyFix

from cortex.engines.plugins import PluginEngine
from cortex.events.sse import StreamSlots
from cortex.http import observability, security
from cortex.http.logins import LoginThrottle
from cortex.http.problems import domain_problem, problem_response, render_problem
from cortex.http.routing import CortexApi, DocumentedPaths, HandlerResolver, event_types
from cortex.integrations.bots import bot_driver
from cortex.integrations.debug_audio import DebugAudioStore
from cortex.integrations.functions.local import LocalProvider
from cortex.integrations.functions.provider import RuntimeProvider
from cortex.integrations.identity import IdentityProvider, make_identity_provider
from cortex.integrations.mail import Mailer
from cortex.integrations.npm import NpmRegistryClient
from cortex.integrations.tokens import HttpTokenFetcher
from cortex.lib.logs import configure_logging, set_operation
from cortex.settings import Settings, apply_to_process
from models.access import forget_resolved_projects
from models.base import DomainError, db
from models.database import init_database
from models.sessions import BotDriver

log = logging.getLogger("cortex")

SWAGGER_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Cortex API</title>
<link rel="stylesheet" href="swagger-ui.css"></head><body><div id="swagger-ui"></div>
<script src="swagger-ui-bundle.js"></script><script>
window.ui = SwaggerUIBundle({url: "../openapi.json", dom_id: "#swagger-ui", deepLinking: true});
</script></body></html>"""


@dataclass
class Runtime:
    """Per-app services handlers reach through ``flask.current_app``."""

    settings: Settings
    spec: dict
    spec_bytes: bytes
    identity: IdentityProvider
    paths: DocumentedPaths
    mailer: Mailer
    tokens: HttpTokenFetcher
    debug_audio: DebugAudioStore
    logins: LoginThrottle
    streams: StreamSlots  # open event streams per principal (CORTEX_SSE_MAX_STREAMS_PER_PRINCIPAL)
    #: cortex.events.fanout.LiveFanout, set by `cortex serve`: the event streams subscribe to it. Without one (an
    #: app built by create_app and served otherwise, the test client) each stream polls the log (cortex/events/sse.py).
    fanout: object | None = None
    event_types: list[str] | None = None  # the document's event types (document_event_types)
    plugins: PluginEngine | None = None  # runs plugins for requests (regenerateSummary, actions): plugin_engine()
    functions: RuntimeProvider | None = None  # the functions runtime provider (its catalogue): functions_provider()
    npm: NpmRegistryClient | None = None  # CORTEX_NPM_REGISTRY, cached answers: npm_client()


def runtime() -> Runtime:
    """The running app's services."""
    return flask.current_app.extensions["cortex"]


def current_spec() -> dict:
    """The served OpenAPI document (parsed)."""
    return runtime().spec


def document_event_types() -> list[str]:
    """Every event type the served document defines (``cortex.http.routing.event_types``), read once per app."""
    services = runtime()
    if services.event_types is None:
        services.event_types = event_types(services.spec)
    return services.event_types


def current_settings() -> Settings:
    """The running app's settings."""
    return runtime().settings


def mailer() -> Mailer:
    """The one mailer every feature sends through."""
    return runtime().mailer


def identity_provider() -> IdentityProvider:
    """The configured identity provider."""
    return runtime().identity


def login_throttle() -> LoginThrottle:
    """The failed-login counters (per account, per client address)."""
    return runtime().logins


def client_address() -> str:
    """The client's address (``X-Forwarded-For`` of ``CORTEX_TRUSTED_PROXIES`` trusted proxies, else the peer's)."""
    return flask.request.remote_addr or "unknown"


def token_fetcher() -> HttpTokenFetcher:
    """The HTTP side of the token providers (webservice, Rooms API)."""
    return runtime().tokens


def debug_audio_store() -> DebugAudioStore:
    """Where debug-audio files live (``<data dir>/debug-audio``)."""
    return runtime().debug_audio


def plugin_engine() -> PluginEngine:
    """The plugin engine requests run plugins with (not started: the background one is ``cortex serve``'s)."""
    services = runtime()
    if services.plugins is None:
        services.plugins = PluginEngine.from_settings(services.settings)
    return services.plugins


def functions_provider() -> RuntimeProvider:
    """The functions runtime provider (packages, locations, versions); the supervisor drives its processes."""
    services = runtime()
    if services.functions is None:
        services.functions = LocalProvider.from_settings(services.settings)
    return services.functions


def npm_client() -> NpmRegistryClient:
    """The npm registry client of this process (its cache is shared by the process's requests)."""
    services = runtime()
    if services.npm is None:
        services.npm = NpmRegistryClient(services.settings.npm_registry)
    return services.npm


def current_bot_driver() -> BotDriver:
    """The configured bot driver (``CORTEX_BOT_DRIVER``)."""
    return bot_driver(runtime().settings)


_specifications: dict[bytes, Specification] = {}


def load_specification(spec_bytes: bytes) -> Specification:
    """Connexion's parsed, validated document; validation (~0.7 s) runs once per process and content."""
    if spec_bytes not in _specifications:
        _specifications[spec_bytes] = Specification.from_dict(json.loads(spec_bytes))
    return _specifications[spec_bytes]


_documents: dict[bytes, tuple[dict, DocumentedPaths]] = {}


def _document(spec_bytes: bytes) -> tuple[dict, DocumentedPaths]:
    """The parsed document (shared: never changed) and its path templates, once per process and content."""
    if spec_bytes not in _documents:
        raw = json.loads(spec_bytes)
        _documents[spec_bytes] = (raw, DocumentedPaths(raw))
    return _documents[spec_bytes]


class CortexFlask(flask.Flask):
    """Flask, with the coroutine check of each view, hook and error handler made once per function instead of
    on every call: ``inspect.iscoroutinefunction`` three times per request cost ~4 µs (more than the request id,
    metrics and access log of cortex/http/observability.py together). Cortex has no async view or hook; one would
    still be wrapped."""

    _sync_functions: dict = {}

    def ensure_sync(self, func):
        try:
            return self._sync_functions[func]
        except KeyError:
            synced = self._sync_functions[func] = super().ensure_sync(func)
            return synced
        except TypeError:  # unhashable
            return super().ensure_sync(func)


def create_app(settings: Settings | None = None) -> flask.Flask:
    """Build the WSGI application and bind it to ``settings`` (no migrations, no server, no engines: see
    ``cortex.cli``)."""
    settings = (settings or Settings.from_env()).with_secret_key()
    configure_logging(settings.log_level, settings.log_format)  # before Connexion logs anything about the document
    spec_bytes = settings.spec_path.read_bytes()
    app = CortexFlask("cortex")
    # Body size is enforced by the gate (cortex.http.gate.read_body), which also catches chunked bodies:
    # werkzeug's MAX_CONTENT_LENGTH silently truncates those.
    app.config.update(JSON_SORT_KEYS=False)
    api = CortexApi(load_specification(spec_bytes), base_path="", resolver=HandlerResolver())
    app.register_blueprint(api.blueprint)
    app.extensions["cortex_document"] = spec_bytes
    # Request ids, the access log and the per-request metrics (cortex/http/observability.py); configure_app puts
    # ProxyFix in front when proxies are trusted.
    app.extensions["cortex_wsgi"] = observability.RequestObserver(app.wsgi_app)
    _add_documentation_routes(app)
    observability.install(app)  # GET /metrics
    _add_error_handlers(app)

    @app.teardown_request
    def _release_connection(_exc):
        if not db.is_closed():
            db.close()

    @app.teardown_request
    def _nudge_live_events(_exc):
        # A write may have committed events: the live dispatcher publishes them now, not at its next poll
        # (event streams see changes made through this process within milliseconds). A flag, no I/O.
        fanout = app.extensions["cortex"].fanout
        if fanout is not None and flask.request.method not in _READ_METHODS:
            fanout.nudge()

    configure_app(app, settings)
    return app


def configure_app(app: flask.Flask, settings: Settings) -> Runtime:
    """Bind an app built by :func:`create_app` to ``settings``: data directory, database, encryption key,
    token signing and the per-app services (mailer, token fetcher, debug-audio store, identity provider).

    ``create_app`` calls it once. The test suite calls it once per test on one app: building the routes of the
    document (~70 ms: werkzeug compiles a URL builder per rule) is the same for every test, the settings are
    not. The document must be the one the app was built from.
    """
    settings = settings.with_secret_key()
    spec_bytes = app.extensions["cortex_document"]
    if settings.spec_path.read_bytes() != spec_bytes:
        raise ValueError(f"{settings.spec_path} is not the document this app was built from")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(settings.log_level, settings.log_format)  # CORTEX_LOG_LEVEL, CORTEX_LOG_FORMAT
    init_database(settings.database_url, settings.db_pool_size, settings.db_pool_timeout)
    forget_resolved_projects()  # what was resolved belongs to the database bound before
    apply_to_process(settings)
    security.configure(settings.secret_key, settings.access_token_ttl, settings.api_key_touch_interval)
    raw_spec, paths = _document(spec_bytes)
    services = Runtime(
        settings=settings,
        spec=raw_spec,
        spec_bytes=spec_bytes,
        identity=make_identity_provider(settings.identity_provider, settings.fusion_session_ttl),
        paths=paths,
        mailer=Mailer.from_settings(settings.smtp_url, settings.mail_from, settings.data_dir),
        tokens=HttpTokenFetcher.from_settings(settings),
        debug_audio=DebugAudioStore(settings.data_dir),
        logins=LoginThrottle.from_settings(settings),
        streams=StreamSlots(settings.redis_url),
    )
    app.extensions["cortex"] = services
    plain = app.extensions["cortex_wsgi"]
    app.wsgi_app = ProxyFix(plain, x_for=settings.trusted_proxies) if settings.trusted_proxies else plain
    return services


_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _add_documentation_routes(app: flask.Flask) -> None:
    """Serve the document at /api/openapi.json and Swagger UI at /api/docs/."""

    @app.get("/api/openapi.json")
    def openapi_document():
        set_operation("getOpenApiDocument")  # the metrics label of these routes, which have no operationId
        return flask.Response(runtime().spec_bytes, mimetype="application/json")

    @app.get("/api/docs")
    def swagger_ui_redirect():
        set_operation("getApiDocs")
        return flask.redirect("/api/docs/", code=308)

    @app.get("/api/docs/")
    def swagger_ui():
        set_operation("getApiDocs")
        return flask.Response(SWAGGER_PAGE, mimetype="text/html")

    @app.get("/api/docs/<path:filename>")
    def swagger_ui_asset(filename):
        set_operation("getApiDocs")
        return flask.send_from_directory(swagger_ui_bundle.swagger_ui_path, filename, max_age=3600)


POOL_RETRY_SECONDS = 1  # Retry-After of a request that found no free pooled database connection


def _add_error_handlers(app: flask.Flask) -> None:
    """Every error leaves as problem+json: 404 and 405 (with Allow) too, and never a stack trace."""

    @app.errorhandler(ProblemException)
    def _problem(exc):
        return render_problem(exc)

    @app.errorhandler(DomainError)
    def _domain_rule(exc):
        return domain_problem(exc)

    @app.errorhandler(HTTPException)
    def _http(exc):
        headers = {}
        if isinstance(exc, MethodNotAllowed):
            allow = runtime().paths.allow(flask.request.path) or sorted(exc.valid_methods or [])
            headers["Allow"] = ", ".join(allow)
            if flask.request.method == "OPTIONS":
                return flask.Response(status=204, headers=headers)
        detail = {
            404: f"No route matches {flask.request.path}",
            405: f"{flask.request.method} is not allowed on {flask.request.path}",
            413: "Request body is too large",
        }.get(exc.code, exc.description)
        return problem_response(exc.code or 500, detail, headers=headers)

    @app.errorhandler(MaxConnectionsExceeded)
    def _pool_exhausted(_exc):  # every pooled connection stayed busy for CORTEX_DB_POOL_TIMEOUT seconds
        log.warning("%s %s: no free database connection; answered 503", flask.request.method, flask.request.path)
        return problem_response(503, "The server is busy: no database connection came free in time; retry after "
                                     f"{POOL_RETRY_SECONDS} s", headers={"Retry-After": str(POOL_RETRY_SECONDS)})

    @app.errorhandler(Exception)
    def _unexpected(exc):
        log.exception("unhandled error on %s %s", flask.request.method, flask.request.path)
        return problem_response(500, "Internal server error; the incident was logged")
