#!/usr/bin/env python3
"""Normalise the served document: add what the server really does, compatibly and idempotently.

For every operation it adds (never overwriting what a spec author wrote):
- ``x-cortex-scope`` (API-key scope) on operations that accept an API key,
- ``x-cortex-role`` (minimum project role) on operations under ``/api/projects/{projectId}``,
- the error responses the gate returns (400, 401, 403, 404, 415) with the shared ``Problem`` schema.
Run it after editing ``openapi/cortex.json`` (``tools/scaffold.py`` runs it for you), then commit the result.
Usage: ``python tools/extend_spec.py [--check]`` (``--check`` exits 1 if the file would change).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVED = ROOT / "openapi" / "cortex.json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
METHODS = ("get", "put", "post", "delete", "patch")

#: tag → scope family; scopes are "<family>:read" (GET) and "<family>:write" (everything else).
SCOPE_FAMILIES = {
    "Sessions": "sessions",
    "Messages": "transcripts",
    "Participants": "participants",
    "Events": "events",
    "Sanctions": "sanctions",
    "Gatherings": "gatherings",
    "Webhooks": "webhooks",
    "Plugins": "plugins",
    "Plugin Instances": "plugins",
    "Functions": "functions",
    "Projects": "projects",
    "App Settings": "settings",
    "Voice": "voice",
}
FAMILY_DESCRIPTIONS = {
    "sessions": "transcription-bot sessions",
    "transcripts": "session transcripts and debug audio",
    "participants": "participants",
    "events": "event streams and the event schema",
    "sanctions": "sanctions (moderation)",
    "gatherings": "gatherings, join codes and invitations",
    "webhooks": "webhook subscriptions and deliveries",
    "plugins": "plugins and plugin instances",
    "functions": "serverless functions and their deployments",
    "projects": "projects, members and room tokens",
    "settings": "app settings and project secrets",
    "voice": "voice settings, access keys and analytics",
}
#: operations whose scope is not their tag's read/write pair.
SCOPE_OVERRIDES = {
    "getSessionAnnotations": "plugin-endpoints",
    "getMessageAnnotationsBatch": "plugin-endpoints",
    "runPluginAction": "transcripts:read",  # the minutes carry the transcript
}
EXTRA_SCOPES = {"plugin-endpoints": "Endpoints analysis plugins call back (session and message annotations)",
                "functions:invoke": "Invoke the project's functions whose authMode is api_key (ANY /invoke/{projectId}/{slug})"}

#: tag → minimum role for changes; reads need only membership (developer).
WRITE_ROLES = {
    "Sessions": "developer",
    "Messages": "developer",
    "Participants": "developer",
    "Events": "developer",
    "Sanctions": "developer",
    "Gatherings": "developer",
    "Webhooks": "maintainer",
    "Plugins": "maintainer",
    "Plugin Instances": "maintainer",
    "Functions": "maintainer",
    "Voice": "maintainer",
    "App Settings": "maintainer",
    "Projects": "developer",
}
#: operations that need more than their tag's rule.
ROLE_OVERRIDES = {
    "inviteProjectUser": "admin",
    "removeProjectUser": "admin",
    "changeProjectUserRole": "admin",
    "getSecret": "admin",
    "syncSecret": "admin",
    "revokeSecret": "admin",
    "deleteAppSettings": "admin",
}
ROLES_DOC = {
    "developer": "Reads everything in the project; creates and changes runtime data (sessions, participants, "
    "messages, sanctions, gatherings); generates room tokens.",
    "maintainer": "Everything a developer may, plus configuration: app settings, voice, webhooks, plugins, functions.",
    "admin": "Everything, plus members (invite, remove, change role) and the project secret.",
}
PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details; every error of the API has this shape.",
    "properties": {
        "type": {"type": "string", "example": "about:blank"},
        "title": {"type": "string", "example": "Bad Request"},
        "status": {"type": "integer", "example": 400},
        "detail": {"type": "string", "example": "Request body: 'title' is a required property"},
        "instance": {"type": "string"},
    },
    "required": ["title", "status"],
}
ERROR_DESCRIPTIONS = {
    "400": "Invalid request (parameter or body does not match the document)",
    "401": "Missing, invalid or expired credentials",
    "403": "Authenticated, but the role or API-key scope is insufficient",
    "404": "Resource not found (or belongs to another tenant)",
    "409": "Conflict with stored state",
    "413": "Request body larger than the configured limit (CORTEX_MAX_BODY_BYTES)",
    "415": "Request body is not application/json",
    "429": "Rate limit exceeded",
    "501": "Operation not implemented",
    "502": "Upstream service failed",
    "503": "A required service is unavailable",
}


def scope_for(method: str, operation: dict) -> str | None:
    """The API-key scope an operation requires (None when API keys are not accepted)."""
    accepts_key = any("api-key" in requirement for requirement in operation.get("security") or [])
    family = SCOPE_FAMILIES.get((operation.get("tags") or [""])[0])
    if not accepts_key or family is None:
        return None
    if operation.get("operationId") in SCOPE_OVERRIDES:
        return SCOPE_OVERRIDES[operation["operationId"]]
    return f"{family}:{'read' if method == 'get' else 'write'}"


def role_for(method: str, path: str, operation: dict) -> str | None:
    """Minimum project role, for operations addressed by a project id."""
    if "{projectId}" not in path or not operation.get("security"):
        return None
    if operation["operationId"] in ROLE_OVERRIDES:
        return ROLE_OVERRIDES[operation["operationId"]]
    if method == "get":
        return "developer"
    return WRITE_ROLES.get((operation.get("tags") or [""])[0], "maintainer")


def _problem_response(responses: dict, code: str) -> None:
    """Add (or complete) one documented error response with the Problem schema."""
    response = responses.setdefault(code, {"description": ERROR_DESCRIPTIONS.get(code, "Error")})
    content = response.setdefault("content", {})
    content.setdefault("application/problem+json", {"schema": dict(PROBLEM_REF)})


def extend(spec: dict) -> dict:
    """Apply every compatible addition to a document (in place) and return it."""
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {}).setdefault("Problem", PROBLEM_SCHEMA)
    scopes = {}
    for family in sorted(set(SCOPE_FAMILIES.values())):
        scopes[f"{family}:read"] = f"Read {FAMILY_DESCRIPTIONS[family]}"
        scopes[f"{family}:write"] = f"Create, change and delete {FAMILY_DESCRIPTIONS[family]}"
    scopes.update(EXTRA_SCOPES)
    catalogue = spec.setdefault("x-cortex-scopes", {})
    for name, text in scopes.items():
        catalogue.setdefault(name, text)
    spec.setdefault("x-cortex-roles", ROLES_DOC)
    for path, item in spec["paths"].items():
        path_params = [p for p in item.get("parameters", [])]
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            scope = scope_for(method, operation)
            if scope and "x-cortex-scope" not in operation:
                operation["x-cortex-scope"] = scope
            role = role_for(method, path, operation)
            if role and "x-cortex-role" not in operation:
                operation["x-cortex-role"] = role
            responses = operation.setdefault("responses", {})
            for code in list(responses):
                if code.startswith(("4", "5")):
                    _problem_response(responses, code)
            if operation.get("parameters") or path_params or operation.get("requestBody"):
                _problem_response(responses, "400")
            if operation.get("security"):
                _problem_response(responses, "401")
                if operation.get("x-cortex-scope") or operation.get("x-cortex-role"):
                    _problem_response(responses, "403")
            if "{" in path:
                _problem_response(responses, "404")
            if operation.get("requestBody"):
                _problem_response(responses, "413")
                _problem_response(responses, "415")
    return spec


def main(argv=None) -> int:
    """Rewrite openapi/cortex.json in place (or check it is already normalised)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the document is not normalised")
    parser.add_argument("--path", type=Path, default=SERVED)
    args = parser.parse_args(argv)
    original = args.path.read_text()
    spec = extend(json.loads(original))
    unscoped = [
        op["operationId"]
        for item in spec["paths"].values()
        for method, op in item.items()
        if method in METHODS
        and any("api-key" in r for r in op.get("security") or [])
        and not op.get("x-cortex-scope")
    ]
    if unscoped:
        print(f"operations accept API keys but name no x-cortex-scope (add the tag to SCOPE_FAMILIES): {unscoped}",
              file=sys.stderr)
        return 1
    text = json.dumps(spec, indent=2, ensure_ascii=False) + "\n"
    if args.check:
        if text != original:
            print(f"{args.path} is not normalised: run tools/extend_spec.py", file=sys.stderr)
            return 1
        print(f"{args.path}: normalised")
        return 0
    if text != original:
        args.path.write_text(text)
        print(f"updated {args.path}")
    else:
        print(f"{args.path} already normalised")
    return 0


if __name__ == "__main__":
    sys.exit(main())
