"""Contract tests: Schemathesis drives the in-process app from the served document.

Every implemented operation is exercised with real credentials of each kind (a bearer token, an API key
holding every scope) through the examples, coverage and fuzzing phases; the stateful phase then chains
operations through the links Schemathesis infers. Every Schemathesis check runs (ignored_auth,
use_after_free, ensure_resource_availability, allow_header_conformance, …); the target is zero failures.
Operations still answering 501 are excluded until they are implemented.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import hypothesis
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from cortex import ROOT
from cortex.http.routing import operation_statuses
from cortex.lib import odin
from cortex.lib.crypto import encrypt
from models.base import rfc3339, utcnow
from tests.npm_registry import NpmRegistry

SPEC = json.loads((ROOT / "openapi" / "cortex.json").read_text())
IMPLEMENTED = sorted(s.operation_id for s in operation_statuses(SPEC) if s.implemented)
MAX_EXAMPLES = int(os.environ.get("CORTEX_CONTRACT_EXAMPLES", "30"))
_state = {}


def contract_config(auth: dict) -> SchemathesisConfig:
    """All phases and checks, deterministic seed, the given real credentials."""
    return SchemathesisConfig.from_dict(
        {
            "seed": int(os.environ.get("CORTEX_CONTRACT_SEED", "20261128")),
            # Strings with U+0000 are answered 400 by design (PostgreSQL cannot store them; documented in
            # info.description), so schema-valid generation leaves them out.
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none", "allow-x00": False},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True},
            },
            "checks": {"enabled": True},
            "auth": {"openapi": auth},
            "parameters": {"path.projectId": _state["owner"].project.id},
            "operations": [
                {
                    # Provider rules (webservice needs webserviceConfig, an access key needs a valid checksum, manual
                    # e2e needs a password) are conditional on other fields: the document cannot state them
                    # without narrowing upstream types, and the examples and coverage phases combine fields
                    # freely (they bypass map_case). For exactly these two operations a 400 naming the rule is
                    # an expected answer to a schema-valid body; every other check stays on.
                    # Webhook subscriptions likewise: the url must be http(s) (the issue requires a 400; the
                    # document types it as a bare string), patterns must match an event type the document defines,
                    # and each authType needs its own fields.
                    # Sanctions too: a sanction names a participant or an external user (upstream documents the
                    # 400), its dates are ISO 8601 with an offset and endAt comes after startAt (the document types
                    # them as bare strings; the issue requires a 400). Gatherings too: dates with an offset, an
                    # IANA timezone, a whole maxMembers, invitee email addresses, at least one invitee, a room id
                    # that is not empty. Plugin instances too: settings are validated against the plugin's own
                    # settingsSchema (the document types them as a free object), one instance per plugin (409);
                    # annotation batches hold at most 500 ids; a plugin action needs the plugin enabled in the
                    # session's project (409). Functions settings too: limits within the server's ceilings, a
                    # resource package and location this server offers, npm package names and version specs,
                    # env-var keys, a known runtime version; lifecycle calls need an activated project. Functions:
                    # timeout/memory ranges, slugs, entrypoints, maxFunctions; publish needs an activated project,
                    # deploy a ready version, stop a running deployment; log `since` is ISO 8601 with an offset.
                    "include-operation-id": ["upsertAppSettings", "patchAppSettings", "createSubscription",
                                             "updateSubscription", "createSanction", "updateSanction",
                                             "createGathering", "updateGathering", "sendInvitations",
                                             "startGathering", "createInstance", "updateInstance",
                                             "getMessageAnnotationsBatch", "runPluginAction",
                                             "updateSettings", "activateFunctions", "updateDependencies",
                                             "updateEnvVars", "upgradeRuntime", "startRuntime", "stopRuntime",
                                             "restartRuntime", "getNpmPackageInfo", "createFunction",
                                             "updateFunction", "publishVersion", "deployFunction",
                                             "stopDeployment", "getFunctionLogs"],
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "400", "401", "403", "404", "409"],
                        }
                    },
                },
                {
                    # The document names one URL shape twice: PATCH …/members/{memberId} and DELETE
                    # …/members/{participantId}. A 405 on it rightly advertises both methods (Allow: DELETE,
                    # OPTIONS, PATCH); the check compares with one template's methods only.
                    "include-operation-id": ["updateMember", "removeMember"],
                    "checks": {"allow_header_conformance": {"enabled": False}},
                },
            ],
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        }
    )


class _TokenServices(BaseHTTPRequestHandler):
    """Local stand-ins for the external token services (Rooms API, a studio's token webservice): the contract
    tests only ever talk to loopback."""

    def do_POST(self):  # noqa: N802 (http.server naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply()

    def do_GET(self):  # noqa: N802
        self._reply()

    def _reply(self):
        body = json.dumps({"data": {"token": "stub-token", "domain": "rooms.localhost"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def token_services(app):
    """Serve the stand-ins on 127.0.0.1 and point the app's Rooms API URL at them."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenServices)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    runtime = app.extensions["cortex"]
    original = runtime.settings
    npm = NpmRegistry()  # getNpmPackageInfo reads a loopback registry, never the internet
    npm.start()
    npm.publish("left-pad", "1.3.0")
    # Event streams end after 0.01 s here, so every fuzzed stream request returns (clients reconnect in life).
    runtime.settings = replace(original, rooms_api_url=url, sse_max_seconds=0.01, npm_registry=npm.url)
    runtime.npm = None
    _state["token_url"] = f"{url}/token"
    yield url
    runtime.settings = original
    npm.stop()
    server.shutdown()
    server.server_close()
    thread.join(5)


def _schema(app, auth: dict, exclude=(), include=None):
    """The served document restricted to implemented operations, bound to the in-process app.

    The document itself is filtered (not only ``include``d): the stateful phase follows links to any
    operation of the schema, and operations still answering 501 are not part of the contract yet.
    """
    wanted = set(include or [op for op in IMPLEMENTED if op not in exclude])
    document = json.loads(app.extensions["cortex"].spec_bytes)
    for path in list(document["paths"]):
        item = document["paths"][path]
        for method in [m for m, op in item.items() if isinstance(op, dict) and "operationId" in op]:
            if item[method]["operationId"] not in wanted:
                del item[method]
        if not any(isinstance(op, dict) and "operationId" in op for op in item.values()):
            del document["paths"][path]
    schema = schemathesis.openapi.from_dict(document, config=contract_config(auth))
    schema.app = app
    schema.location = "/api/openapi.json"
    return schema


#: These need configured app settings (400 otherwise, as documented); they run in their own test with the
#: settings arranged, so operations that delete settings cannot interfere.
SEPARATE = ("generateProjectToken", "createSession", "listSessions", "startSession")  # both methods of /sessions


@pytest.fixture
def bearer_schema(app, owner, token_services):
    """Requests carry the owner's bearer token."""
    _state["owner"] = owner
    token = owner.headers["Authorization"].split(" ", 1)[1]
    return _schema(app, {"bearer": {"bearer": token}}, exclude=SEPARATE)


@pytest.fixture
def api_key_schema(app, owner, api_key_headers, token_services):
    """Requests carry an API key (created by the owner) holding every scope."""
    _state["owner"] = owner
    key = api_key_headers(list(app.extensions["cortex"].spec["x-cortex-scopes"]))["X-API-Key"]
    return _schema(app, {"api-key": {"api_key": key}}, exclude=SEPARATE)


@pytest.fixture
def token_schema(app, owner, token_services):
    """The operations that need configured settings, on a project whose access-key settings are configured."""
    _state["owner"] = owner
    configure_access_key_settings(owner.project)
    token = owner.headers["Authorization"].split(" ", 1)[1]
    return _schema(app, {"bearer": {"bearer": token}}, include=[op for op in SEPARATE if op in IMPLEMENTED])


with_bearer = schemathesis.pytest.from_fixture("bearer_schema")
with_api_key = schemathesis.pytest.from_fixture("api_key_schema")
with_configured_tokens = schemathesis.pytest.from_fixture("token_schema")


# ---------------------------------------------------------------------------------------------- fix-ups
# The document types some fields as plain strings or numbers although the server needs more (a scope name
# from the catalogue, an email, a well-formed ODIN access key, a whole peer count); narrowing the upstream
# types is not allowed, and the rules are in the descriptions and docs/api-usage.md. Positive cases are mapped to
# values of that kind so that positive_data_acceptance stays strict; negative cases stay as generated.


def _fix_create_key(body):
    known = list(SPEC["x-cortex-scopes"])
    body["scopes"] = [known[len(s) % len(known)] for s in body.get("scopes") or []] or [known[0]]
    body["name"] = (body.get("name") or "").strip() or "generated key"
    if "expiresAt" in body:
        body["expiresAt"] = rfc3339(utcnow() + timedelta(days=1))
    if "projectId" in body and _state.get("owner") is not None:
        body["projectId"] = _state["owner"].project.id


def _fix_invite(body):
    local = "".join(c for c in str(body.get("email", "")) if c.isalnum())[:20] or "invitee"
    body["email"] = f"{local}@example.com"


def _fix_settings(body):
    provider = body.get("tokenProviderType")
    if provider == "access_key" or "accessKeyConfig" in body:
        body["accessKeyConfig"] = {"accessKey": odin.generate_access_key(), "botUserId": "bot"}
        body.setdefault("tokenProviderType", "access_key")
        body.pop("webserviceConfig", None)
    elif provider == "webservice" or "webserviceConfig" in body:
        body["webserviceConfig"] = {"url": _state["token_url"], "method": "POST", "responseTokenPath": "data.token"}
        body.setdefault("tokenProviderType", "webservice")
    if body.get("e2eEncryptionMode") == "manual" and not body.get("e2eEncryptionPassword"):
        body["e2eEncryptionPassword"] = "generated-password"


def _fix_e2e(body):
    if body.get("mode") == "manual" and not body.get("password"):
        body["password"] = "generated-password"


def _fix_session(body):
    body["externalRoomId"] = (body.get("externalRoomId") or "").strip() or "room-1"
    if "idleTimeout" in body:
        body["idleTimeout"] = abs(body["idleTimeout"]) if abs(body["idleTimeout"]) < 1e9 else 0


def _fix_access_key_name(body):
    body["name"] = (body.get("name") or "").strip()[:255] or "generated key"


def _fix_peer_limit(body):
    body["peerLimit"] = abs(int(body["peerLimit"])) if abs(body["peerLimit"]) < 1e9 else 0


def _configure_token_provider(_body):
    """Room tokens and sessions need configured settings (400 otherwise, as the issues ask)."""
    owner = _state.get("owner")
    if owner is not None:
        configure_access_key_settings(owner.project)


_INGEST_SESSION_TYPES = {"participant.joined", "participant.left", "message.created", "bot.status.changed"}


def _sign_ingest(case) -> None:
    """Positive ingest cases become correctly signed requests for the owner's project (synced secret, a real
    session for the types that describe one, a ``{action, data}`` payload). Schemathesis sends the body
    through werkzeug's test client, which encodes it with ``json.dumps``: those are the bytes signed."""
    from cortex.events.ingest import sign
    from models.sessions import Session
    from models.settings import cached_project_secret, sync_project_secret

    project = _state["owner"].project
    sync_project_secret(project)
    body = dict(case.body) if isinstance(case.body, dict) else {}
    data = dict(body["payload"].get("data") or {}) if isinstance(body.get("payload", {}).get("data"), dict) else {}
    if body.get("type") in _INGEST_SESSION_TYPES:
        session = Session.select().where(Session.project == project.id).first() or Session.create(
            project=project.id, tenant_id=project.tenant_id, external_room_id="room-ingest", title="ingest",
            created_by_user_id=_state["owner"].user.id,
        )
        data = {"sessionId": session.id, "userId": "user-1", "senderName": "Alice", "content": "hello"}
        if body["type"] == "bot.status.changed":
            data = {"sessionId": session.id, "status": "active"}
        body["resourceId"] = f"session:{session.id}"
    body["payload"] = {"action": "occurred", "data": data}
    if "timestamp" in body:
        body["timestamp"] = rfc3339(utcnow())
    stamp = rfc3339(utcnow())
    case.body = body
    case.headers = {**(case.headers or {}), "X-Project-Id": project.id, "X-Timestamp": stamp,
                    "X-Signature": sign(cached_project_secret(project), stamp, json.dumps(body).encode())}


#: Fix-ups that need the whole case (headers too), not only the body.
CASE_FIXUPS = {"ingest": _sign_ingest}


FIXUPS = {
    "createKey": _fix_create_key,
    "inviteProjectUser": _fix_invite,
    "upsertAppSettings": _fix_settings,
    "patchAppSettings": _fix_settings,
    "updateE2EEncryption": _fix_e2e,
    "updatePeerLimit": _fix_peer_limit,
    "createAccessKey": _fix_access_key_name,
    "createSession": _fix_session,
    "editAccessKey": _fix_access_key_name,
}


#: Arrange steps run before positive cases of these operations (they have no body to fix).
ARRANGE = {
    "generateProjectToken": _configure_token_provider,
    "createSession": _configure_token_provider,
    "startSession": _configure_token_provider,
}


def configure_access_key_settings(project) -> None:
    """Store access_key settings for a project unless it has settings (arrange step for token tests)."""
    from models.settings import AppSettings

    if not AppSettings.select().where(AppSettings.project == project.id).exists():
        AppSettings.create(project=project.id, token_provider_type="access_key", bot_user_id="bot",
                           access_key_encrypted=encrypt(odin.generate_access_key()))


@schemathesis.hook
def map_case(context, case):
    """Apply the positive-case arrange step and body fix-up of the operation, if any."""
    operation_id = case.operation.definition.raw.get("operationId")
    if case.meta.generation.mode.is_negative:
        return case
    if operation_id in ARRANGE:
        ARRANGE[operation_id](case.body)
    if operation_id in CASE_FIXUPS:
        CASE_FIXUPS[operation_id](case)
        return case
    fixup = FIXUPS.get(operation_id)
    if fixup is not None and isinstance(case.body, dict):
        body = dict(case.body)
        fixup(body)
        case.body = body
    return case


@with_bearer.parametrize()
@hypothesis.settings(deadline=None, max_examples=MAX_EXAMPLES)
def test_operation_conforms_with_bearer(case):
    """Each implemented operation with a bearer token: all checks, zero failures."""
    case.call_and_validate()


@with_api_key.parametrize()
@hypothesis.settings(deadline=None, max_examples=MAX_EXAMPLES)
def test_operation_conforms_with_api_key(case):
    """Each implemented operation with an API key: all checks, zero failures."""
    case.call_and_validate()


@with_configured_tokens.parametrize()
@hypothesis.settings(deadline=None, max_examples=MAX_EXAMPLES)
def test_settings_dependent_operations_conform_when_configured(case):
    """Room tokens and sessions with access-key settings in place: all checks, zero failures."""
    case.call_and_validate()


def test_stateful_workflows(app, owner, token_services):
    """Linked sequences (create → list → revoke → revoke again …): zero failures."""
    _state["owner"] = owner
    token = owner.headers["Authorization"].split(" ", 1)[1]
    _schema(app, {"bearer": {"bearer": token}}).as_state_machine().run(
        settings=hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=8,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
