#!/usr/bin/env python3
"""Generate a Python client from the served document with openapi-python-client and drive a live server with it.

Usage::

    python tools/client_smoke.py [--spec PATH] [--keep]

1. **Generate**: ``openapi-python-client generate --path openapi/cortex.json --output-path <tmp>/client
   --config <tmp>/config.json`` into a temporary directory (never the repository). The config only fixes the
   package name (``cortex_client``: the smoke does not depend on the document's title), turns the ruff post-hooks
   off and maps the two response media types the generator cannot read (``audio/wav``, ``*/*``) to
   ``application/octet-stream``. A generator error fails the smoke, and so does any warning that is not in
   ``KNOWN_WARNINGS`` (a warning means an operation, a body or a response was left out of the client). Every
   generated module is then imported from ``<tmp>/client`` on ``sys.path`` (nothing is installed anywhere).
2. **Serve**: ``cortex serve`` as a subprocess on a free loopback port, with a temporary data directory
   (SQLite), its own ``CORTEX_SECRET_KEY``, ``CORTEX_FUNCTIONS_RUNTIME=false`` and
   ``CORTEX_OUTBOUND_ALLOW_PRIVATE=true`` (the webhook receiver below is on 127.0.0.1); a user and a project
   come from ``cortex admin create-user`` / ``create-project``.
3. **Drive it with the generated client only**: log in, read the profile, configure app settings (activate
   voice, create an ODIN access key, save ``access_key`` settings), create a session, list sessions, create
   a participant, create a webhook subscription to a receiver this script serves, create a gathering, join it
   by its join code, then wait for the two signed deliveries (``gathering.created``, ``gathering.member.joined``),
   verify their signatures and parse them into the generated ``*Event`` models. Every answer must have the
   documented status and parse into the generated model; a model that received a property the document does not
   declare fails the smoke too (the document must describe what is served), unless ``KNOWN_UNDECLARED`` lists it
   with the document change that would make the entry unneeded.

Prints one line per step with its time; exit status 0 when everything passed, 1 on any failure (the server
log's tail is printed then), 2 when openapi-python-client is not installed. The server is stopped and the
temporary directory removed in every case (``--keep`` keeps the directory and prints its path).
Only 127.0.0.1 is contacted. CI runs it (``.ci/run``, stage 3b).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import importlib
import json
import os
import pkgutil
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "openapi" / "cortex.json"
HOST = "127.0.0.1"
PACKAGE = "cortex_client"
GENERATE_TIMEOUT = 120.0
SERVER_START_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 15.0
REQUEST_TIMEOUT = 15.0

#: openapi-python-client's config (JSON is YAML): written to the temporary directory, never to the repository.
GENERATOR_CONFIG = {
    "package_name_override": PACKAGE,
    "post_hooks": [],  # the generated code is not formatted: nobody reads it, and ruff need not be on PATH
    "content_type_overrides": {
        # getDebugAudio answers a WAV file; the generator reads only JSON, text/* and octet-stream responses.
        "audio/wav": "application/octet-stream",
        # invokeFunction* answer whatever the function answered.
        "*/*": "application/octet-stream",
    },
}

#: Warnings the generator prints for this document that are accepted: (method, path pattern, detail pattern,
#: why). Anything else it warns about fails the smoke.
KNOWN_WARNINGS = [
    (
        "GET|PUT|POST|DELETE|PATCH",
        r"/invoke/\{projectId\}/\{slug\}",
        r"Unsupported content type text/plain",
        "invokeFunction* also take a text/plain body; the generator reads no text/plain request body, so the "
        "client sends JSON only (mapping text/plain to octet-stream generates `isinstance(body, Any)`, which "
        "raises TypeError at run time)",
    ),
]


#: Properties the server answers that the document does not declare, accepted for now: "Model.property" → the
#: compatible document change that makes the entry unneeded (the smoke prints a note once it is).
KNOWN_UNDECLARED: dict[str, str] = {}


class SmokeError(Exception):
    """The smoke failed: the message says which step and why."""


class GeneratorMissing(Exception):
    """openapi-python-client is not installed (exit status 2)."""


_start = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _start:6.2f} s] {message}", flush=True)


# ----------------------------------------------------------------- 1. generate


def unexpected_generator_output(output: str) -> tuple[list[str], int]:
    """(the lines of the generator's warning list that ``KNOWN_WARNINGS`` does not account for, the number of
    known warnings it printed).

    openapi-python-client prints a title line, then per warning a header (``WARNING parsing GET /path within
    tag.``), a detail line and the offending part of the document as indented JSON, then a closing line that
    starts with "If you believe". Every header and detail line must match a known warning; the JSON is skipped.
    """
    lines = output.splitlines()
    try:
        first = next(i for i, line in enumerate(lines) if line.startswith(("Warning(s) encountered", "Error(s)")))
    except StopIteration:
        return [], 0
    unexpected, known_count = [], 0
    index, depth, pending_detail = first + 1, 0, None
    while index < len(lines):
        line = lines[index].rstrip()
        index += 1
        if line.startswith("If you believe this was a mistake"):
            break
        if depth or line.startswith(("{", "[")):  # the document excerpt: skip to its closing bracket
            depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
            continue
        if not line.strip():
            continue
        if pending_detail is not None:
            if not re.fullmatch(pending_detail, line):
                unexpected.append(line)
            pending_detail = None
            continue
        header = re.fullmatch(r"WARNING parsing (\S+) (\S+) within \S+\.", line)
        known = header and next(
            (detail for methods, path, detail, _ in KNOWN_WARNINGS
             if re.fullmatch(methods, header[1]) and re.fullmatch(path, header[2])),
            None,
        )
        if known:
            pending_detail, known_count = known, known_count + 1
        else:
            unexpected.append(line)
    return unexpected, known_count


def generator_command() -> list[str]:
    """openapi-python-client of this interpreter's environment (the test extras), else the one on PATH."""
    beside = Path(sys.executable).parent / "openapi-python-client"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("openapi-python-client")
    if found is None:
        raise GeneratorMissing("openapi-python-client is not installed (pip install -e '.[test]')")
    return [found]


def generate(spec: Path, workdir: Path) -> tuple[Path, int]:
    """Generate the client into ``workdir/client``: (the directory to put on ``sys.path``, how many known
    warnings the generator printed)."""
    config = workdir / "config.json"
    config.write_text(json.dumps(GENERATOR_CONFIG, indent=2), encoding="utf-8")
    output = workdir / "client"
    command = generator_command() + [
        "generate", "--path", str(spec), "--output-path", str(output), "--config", str(config),
    ]
    done = subprocess.run(
        command, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=GENERATE_TIMEOUT,
        env={**os.environ, "NO_COLOR": "1", "TERM": "dumb"},
    )
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise SmokeError(f"openapi-python-client generate exited with {done.returncode}:\n{text.strip()}")
    unexpected, known_count = unexpected_generator_output(text)
    if unexpected:
        raise SmokeError(
            "openapi-python-client warned about parts of the document it left out of the client:\n  "
            + "\n  ".join(unexpected)
            + f"\n--- generator output ---\n{text.strip()}"
        )
    if not (output / PACKAGE / "__init__.py").exists():
        raise SmokeError(f"openapi-python-client made no package {PACKAGE} in {output}:\n{text.strip()}")
    return output, known_count


def import_client(client_dir: Path) -> tuple[ModuleType, int]:
    """Put the generated package on ``sys.path`` and import every module of it: (package, module count)."""
    sys.path.insert(0, str(client_dir))
    package = importlib.import_module(PACKAGE)
    count = 0
    for info in pkgutil.walk_packages(package.__path__, f"{PACKAGE}."):
        importlib.import_module(info.name)
        count += 1
    return package, count


# ----------------------------------------------------------------- 2. serve


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint on 127.0.0.1: records every POST (headers, raw body) and answers 204."""

    daemon_threads = True

    def __init__(self):
        super().__init__((HOST, 0), _ReceiverHandler)
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/cortex-hook"

    def wait_for(self, count: int, timeout: float) -> list[tuple[dict[str, str], bytes]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)


class _ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()
        with self.server.arrived:
            self.server.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.server.arrived.notify_all()

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def cortex_command() -> list[str]:
    beside = Path(sys.executable).parent / "cortex"
    return [str(beside)] if beside.exists() else [sys.executable, "-c", "import sys; from cortex.cli import main; "
                                                   "sys.exit(main())"]


class Server:
    """``cortex serve`` on a free loopback port with its own data directory, secret key and log file."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        # Not the caller's database, Redis or Cortex settings: only what this server is told here.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CORTEX_") and k not in ("DATABASE_URL", "REDIS_URL")}
        self.env = {
            **env,
            "CORTEX_DATA_DIR": str(workdir / "data"),
            "CORTEX_SECRET_KEY": secrets.token_urlsafe(48),
            "CORTEX_FUNCTIONS_RUNTIME": "false",
            "CORTEX_OUTBOUND_ALLOW_PRIVATE": "true",
            "CORTEX_BOT_DRIVER": "local",
            "CORTEX_LOG_LEVEL": "WARNING",
        }

    def admin(self, *args: str) -> dict:
        """``cortex admin …``: its JSON answer."""
        done = subprocess.run(
            cortex_command() + ["admin", *args], cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
        )
        if done.returncode != 0:
            raise SmokeError(f"cortex admin {args[0]} exited with {done.returncode}: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cortex_command() + ["serve", "--host", HOST, "--port", str(self.port)],
                cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the server in order
            )

    def wait_ready(self, package: ModuleType) -> Any:
        """Poll ``GET /api`` (getData) with the generated client until the server answers: the parsed
        HealthResponse."""
        import httpx

        models = importlib.import_module(f"{PACKAGE}.models")
        get_data = importlib.import_module(f"{PACKAGE}.api.health.get_data")
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise SmokeError(f"cortex serve exited with {self.proc.returncode}")
            try:
                with package.Client(base_url=self.base_url, timeout=httpx.Timeout(2.0)) as client:
                    return call("getData", 200, models.HealthResponse, get_data, client=client)
            except SmokeError as exc:
                if not isinstance(exc.__cause__, httpx.TransportError):
                    raise
                if time.monotonic() > deadline:
                    raise SmokeError(f"cortex serve did not answer within {SERVER_START_TIMEOUT:.0f} s") from None
                time.sleep(0.1)

    def log_tail(self, size: int = 4000) -> str:
        try:
            text = self.log_path.read_bytes()[-size:].decode("utf-8", "replace").strip()
        except OSError:
            return ""
        return f"\n--- cortex serve log (tail) ---\n{text}" if text else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ----------------------------------------------------------------- 3. drive it with the generated client


def undeclared_properties(value: Any, where: str = "") -> list[tuple[str, str]]:
    """(``Model.property``, location) of each property the server sent that the document does not declare.

    A generated model keeps undeclared properties in ``additional_properties``; a model with no declared
    property at all is a free-form object (``properties``, ``userData``, …) and is skipped.
    """
    import attrs

    found: list[tuple[str, str]] = []
    if isinstance(value, list):
        for index, item in enumerate(value):
            found += undeclared_properties(item, f"{where}[{index}]")
    elif attrs.has(type(value)):
        declared = [field.name for field in attrs.fields(type(value)) if field.name != "additional_properties"]
        extra = getattr(value, "additional_properties", {})
        if declared and extra:
            found += [(f"{type(value).__name__}.{name}", f"{where}.{name}" or name) for name in sorted(extra)]
        for name in declared:
            found += undeclared_properties(getattr(value, name), f"{where}.{name}")
    return found


_known_undeclared_seen: set[str] = set()


def check_declared(parsed: Any, what: str) -> None:
    """Fail unless every property of ``parsed`` is declared by the document (or in ``KNOWN_UNDECLARED``)."""
    found = undeclared_properties(parsed)
    _known_undeclared_seen.update(name for name, _ in found if name in KNOWN_UNDECLARED)
    unknown = [f"{name} (at {where.lstrip('.')})" for name, where in found if name not in KNOWN_UNDECLARED]
    if unknown:
        raise SmokeError(f"{what}: the answer has properties the document does not declare: {', '.join(unknown)}")


def expect(response: Any, status: int, model: type, what: str) -> Any:
    """The parsed answer of ``what`` when it has ``status`` and parsed into ``model`` (or a list of it)."""
    parsed = response.parsed
    if int(response.status_code) != status:
        detail = getattr(parsed, "detail", None) or response.content[:500].decode("utf-8", "replace")
        raise SmokeError(f"{what}: expected {status}, got {int(response.status_code)}: {detail}")
    items = parsed if isinstance(parsed, list) else [parsed]
    if parsed is None or not all(isinstance(item, model) for item in items):
        raise SmokeError(f"{what}: the {status} answer did not parse into {model.__name__}: {parsed!r}")
    check_declared(parsed, what)
    return parsed


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> None:
    """The Standard Webhooks check of docs/realtime-and-webhooks.md ("Verifying a delivery")."""
    key = base64.b64decode(secret.removeprefix("whsec_") + "=" * (-len(secret.removeprefix("whsec_")) % 4))
    message = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + body
    expected = base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()
    if not any(entry == f"v1,{expected}" for entry in headers.get("webhook-signature", "").split()):
        raise SmokeError(f"webhook {headers.get('webhook-id')}: no valid v1 signature")


def event_model(models: ModuleType, event_type: str) -> type:
    """``gathering.member.joined`` → the generated ``GatheringMemberJoinedEvent``."""
    name = "".join(part.capitalize() for part in re.split(r"[._]", event_type)) + "Event"
    model = getattr(models, name, None)
    if model is None:
        raise SmokeError(f"the generated client has no model {name} for the event type {event_type}")
    return model


def call(what: str, status: int, model: type, operation: Any, *args: Any, **kwargs: Any) -> Any:
    """``operation.sync_detailed(*args, **kwargs)`` (a generated module): its parsed answer when it has ``status``
    and parsed into ``model`` (or a list of it) with every property declared by the document."""
    try:
        response = operation.sync_detailed(*args, **kwargs)
    except SmokeError:
        raise
    except Exception as exc:  # the generated parser refused the answer (a missing property, an unknown enum value)
        raise SmokeError(f"{what}: the answer did not parse into the generated models: "
                         f"{type(exc).__name__}: {exc}") from exc
    return expect(response, status, model, what)


def drive(package: ModuleType, base_url: str, email: str, password: str, project_id: str,
          receiver: Receiver) -> None:
    """Every step of the smoke with the generated client; one line per step."""
    import httpx

    def op(tag: str, name: str) -> ModuleType:
        return importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")

    models = importlib.import_module(f"{PACKAGE}.models")
    timeout = httpx.Timeout(REQUEST_TIMEOUT)

    with package.Client(base_url=base_url, timeout=timeout, raise_on_unexpected_status=True) as anonymous:
        login = call("loginWithCredentials", 201, models.LoginResponse, op("auth", "login_with_credentials"),
                     client=anonymous, body=models.LoginCredentials(email=email, password=password))
    say(f"loginWithCredentials → LoginResponse (access token of {len(login.access_token)} characters)")

    with package.AuthenticatedClient(base_url=base_url, token=login.access_token, timeout=timeout,
                                     raise_on_unexpected_status=True) as client:
        profile = call("getProfile", 200, models.UserProfile, op("auth", "get_profile"), client=client)
        say(f"getProfile → UserProfile {profile.user_id}")

        # App settings: createSession needs a configured token provider; an ODIN access key the server makes.
        call("activateVoice", 201, models.VoiceSettings, op("voice", "activate_voice"), project_id, client=client)
        key = call("createAccessKey", 201, models.CreateAccessKeyResponse, op("voice", "create_access_key"),
                   project_id, client=client, body=models.CreateAccessKeyRequest(name="client smoke"))
        settings = call(
            "upsertAppSettings", 200, models.AppSettingsResponse, op("app_settings", "upsert_app_settings"),
            project_id, client=client, body=models.UpsertAppSettingsRequest(
                token_provider_type=models.UpsertAppSettingsRequestTokenProviderType.ACCESS_KEY,
                access_key_config=models.AccessKeyConfig(access_key=key.access_key, bot_user_id="smoke-bot")))
        say(f"activateVoice → VoiceSettings; createAccessKey → CreateAccessKeyResponse {key.key_id}; "
            f"upsertAppSettings → AppSettingsResponse (tokenProviderType {settings.token_provider_type})")

        session = call("createSession", 201, models.SessionResponse, op("sessions", "create_session"),
                       project_id, client=client,
                       body=models.CreateSessionRequest(title="Client smoke", external_room_id="room_client_smoke"))
        say(f"createSession → SessionResponse {session.id} (status {session.status})")

        sessions = call("listSessions", 200, models.SessionResponse, op("sessions", "list_sessions"),
                        project_id, client=client)
        if session.id not in [item.id for item in sessions]:
            raise SmokeError(f"listSessions: the new session {session.id} is not listed")
        say(f"listSessions → list[SessionResponse] of {len(sessions)}, the new session among them")

        participant = call(
            "createParticipant", 201, models.ParticipantResponse, op("participants", "create_participant"),
            project_id, client=client,
            body=models.CreateParticipantRequest(external_user_id="player-1", display_name="Player One"))
        say(f"createParticipant → ParticipantResponse {participant.id}")

        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        events = ["gathering.created", "gathering.member.joined"]
        subscription = call(
            "createSubscription", 201, models.WebhookSubscription, op("webhooks", "create_subscription"),
            project_id, client=client, body=models.CreateWebhookSubscriptionRequest(
                url=receiver.url, secret=secret, events=events, description="client smoke"))
        say(f"createSubscription → WebhookSubscription {subscription.id} → {receiver.url} {events}")

        gathering = call(
            "createGathering", 201, models.GatheringResponse, op("gatherings", "create_gathering"),
            project_id, client=client, body=models.CreateGatheringRequest(
                name="Client smoke lobby", type_=models.CreateGatheringRequestType.OPEN, max_members=4))
        say(f"createGathering → GatheringResponse {gathering.id} (joinCode {gathering.join_code})")

        joined = call(
            "joinByCode", 200, models.JoinGatheringResponse, op("gatherings", "join_by_code"),
            project_id, client=client,
            body=models.JoinGatheringRequest(join_code=gathering.join_code, participant_id=participant.id))
        member = joined.member
        if not joined.success or not isinstance(member, models.GatheringMember) \
                or member.participant_id != participant.id:
            raise SmokeError(f"joinByCode: the participant did not join: {joined!r}")
        member_count = int(joined.gathering.member_count) if joined.gathering else "?"
        say(f"joinByCode → JoinGatheringResponse (success, member {member.participant_id} "
            f"as {member.role}, memberCount {member_count})")

    deliveries = receiver.wait_for(len(events), DELIVERY_TIMEOUT)
    if len(deliveries) < len(events):
        raise SmokeError(f"webhooks: {len(deliveries)} of {len(events)} deliveries within {DELIVERY_TIMEOUT:.0f} s")
    received = {}
    for headers, body in deliveries:
        verify_signature(secret, headers, body)
        envelope = json.loads(body)
        what = f"webhook {envelope.get('type')}"
        model = event_model(models, str(envelope.get("type")))
        try:
            event = model.from_dict(envelope)
        except Exception as exc:
            raise SmokeError(f"{what}: did not parse into {model.__name__}: {type(exc).__name__}: {exc}") from exc
        check_declared(event, what)
        if event.resource_id != f"gathering:{gathering.id}":
            raise SmokeError(f"{what}: resourceId {event.resource_id}, not gathering:{gathering.id}")
        received[str(event.type_)] = model.__name__
    if sorted(received) != sorted(events):
        raise SmokeError(f"webhooks: received {sorted(received)}, expected {events}")
    say(f"webhooks: {len(received)} signed deliveries parsed into {', '.join(received[name] for name in events)}")


# ----------------------------------------------------------------- main


def smoke(spec: Path, workdir: Path) -> None:
    client_dir, known_warnings = generate(spec, workdir)
    accepted = "; ".join(why.split(";")[0] for *_, why in KNOWN_WARNINGS)
    say(f"generated {PACKAGE} with openapi-python-client into {client_dir} "
        f"({known_warnings} known warnings: {accepted})")
    package, count = import_client(client_dir)
    say(f"imported {count} generated modules from sys.path")

    server = Server(workdir)
    email, password = "smoke@cortex.local", secrets.token_urlsafe(16)
    user = server.admin("create-user", "--email", email, "--password", password, "--name", "Client Smoke")
    project = server.admin("create-project", "--owner", email, "--name", "Client Smoke")
    say(f"cortex admin create-user {user['userId']}, create-project {project['id']}")

    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, name="webhook-receiver", daemon=True).start()
    try:
        server.start()
        health = server.wait_ready(package)
        say(f"cortex serve answers on {server.base_url} (getData → HealthResponse, status {health.status})")
        drive(package, server.base_url, email, password, project["id"], receiver)
        for name, proposal in KNOWN_UNDECLARED.items():
            if name in _known_undeclared_seen:
                say(f"note: accepted an undeclared property {name}: {proposal}")
            else:
                say(f"note: {name} was not seen any more: remove it from KNOWN_UNDECLARED")
    except BaseException as exc:
        if isinstance(exc, SmokeError):
            exc.args = (f"{exc}{server.log_tail()}",)
        raise
    finally:
        server.stop()
        receiver.shutdown()
        receiver.server_close()
        say("server stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=SPEC, help="the document to generate from (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (client, data, log)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="cortex-client-smoke-"))
    try:
        smoke(args.spec.resolve(), workdir)
    except GeneratorMissing as exc:
        print(f"client smoke: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # any failure: one message, exit 1
        print(f"client smoke FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    say("client smoke passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
