"""ODIN room tokens for a project, from its configured token provider (see models.settings.AppSettings).

- ``access_key``: signed locally with the stored access key (cortex.odin.room_token);
- ``webservice``: fetched from the project's own HTTP endpoint;
- ``rooms``: fetched from the Rooms token API (``CORTEX_ROOMS_API_URL``) with the project secret.

Failures of a remote provider answer 502 with a detail saying what failed; details never contain secrets
(headers, secrets, request bodies) — only the provider, the HTTP status or the kind of failure.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from cortex import crypto, odin
from cortex.problems import ApiProblem
from models.base import release_connection
from models.identity import Project
from models.settings import AppSettings, token_path_segments

MAX_REPLY_BYTES = 1024 * 1024
ROOMS_NOT_CONFIGURED = "The Rooms token API is not configured on this server (CORTEX_ROOMS_API_URL)"
_MISSING = object()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Do not follow redirects: they would carry the configured headers (credentials) to another URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def _bad_gateway(what: str, failure: str) -> ApiProblem:
    return ApiProblem(502, f"{what} failed: {failure}")


def _request_json(what: str, url: str, method: str, headers: dict[str, str], body: bytes | None, timeout: float):
    """Send one HTTP request and return its parsed JSON reply; any failure → 502 naming ``what``."""
    release_connection()  # a slow provider must not hold a pooled database connection for its timeout
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Accept", "application/json")
    for name, value in headers.items():
        request.add_header(name, value)
    if body is not None and not request.has_header("Content-type"):
        request.add_header("Content-Type", "application/json")
    try:
        with _opener.open(request, timeout=timeout) as reply:
            raw = reply.read(MAX_REPLY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _bad_gateway(what, f"it answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _bad_gateway(what, f"no answer within {timeout:g} s") from None
        raise _bad_gateway(what, f"could not connect ({_reason(exc.reason)})") from None
    except TimeoutError:
        raise _bad_gateway(what, f"no answer within {timeout:g} s") from None
    except (http.client.HTTPException, OSError, ValueError) as exc:
        raise _bad_gateway(what, f"the connection failed ({type(exc).__name__})") from None
    if len(raw) > MAX_REPLY_BYTES:
        raise _bad_gateway(what, f"its reply is larger than {MAX_REPLY_BYTES} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _bad_gateway(what, "its reply is not valid JSON") from None


def _reason(reason) -> str:
    """A connection failure's reason without any URL in it."""
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return type(reason).__name__ if isinstance(reason, BaseException) else str(reason)


def extract_token_path(document, path: str):
    """The value at a dotted path (numeric segments index lists), or raise KeyError."""
    value = document
    for segment in token_path_segments(path):
        if isinstance(value, dict) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            raise KeyError(segment)
    return value


def _json_string_escape(value: str) -> str:
    """A value escaped for use inside a JSON string literal."""
    return json.dumps(value)[1:-1]


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *params.items()])
    return urlunsplit(parts._replace(query=query))


def webservice_token(settings: AppSettings, room_id: str, user_id: str, *, timeout: float) -> str:
    """Fetch a room token from the project's webservice (GET: roomId/userId as query; POST: the body template)."""
    what = "Token webservice request"
    headers = json.loads(crypto.decrypt(settings.webservice_headers_encrypted)) if (
        settings.webservice_headers_encrypted
    ) else {}
    method = settings.webservice_method or "POST"
    url, body = settings.webservice_url, None
    if method == "GET":
        url = _with_query(url, {"roomId": room_id, "userId": user_id})
    else:
        template = settings.webservice_body_template or '{"roomId":"{{roomId}}","userId":"{{userId}}"}'
        text = template.replace("{{roomId}}", _json_string_escape(room_id))
        body = text.replace("{{userId}}", _json_string_escape(user_id)).encode("utf-8")
    reply = _request_json(what, url, method, headers, body, timeout)
    path = settings.webservice_response_token_path
    try:
        token = extract_token_path(reply, path)
    except (KeyError, ValueError):
        raise _bad_gateway(what, f"its reply has no value at {path!r}") from None
    if not isinstance(token, str) or not token:
        raise _bad_gateway(what, f"the value at {path!r} is not a non-empty string")
    return token


def rooms_request(
    rooms_api_url: str | None, api_key: str, secret: str, room_id: str, user_id: str | None = None, *, timeout: float
) -> dict:
    """Ask the Rooms token API for a room token: ``{"token": …, "domain": …}`` (domain when it sends one)."""
    if not rooms_api_url:
        raise ApiProblem(502, ROOMS_NOT_CONFIGURED)
    what = "Rooms token API request"
    url = f"{rooms_api_url.rstrip('/')}/projects/{quote(api_key, safe='')}/create-token"
    payload = {"roomId": room_id}
    if user_id is not None:
        payload["userId"] = user_id
    payload["secret"] = secret
    reply = _request_json(what, url, "POST", {}, json.dumps(payload).encode("utf-8"), timeout)
    data = reply.get("data") if isinstance(reply, dict) else None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise _bad_gateway(what, "its reply has no token at data.token")
    result = {"token": token}
    if isinstance(data.get("domain"), str) and data["domain"]:
        result["domain"] = data["domain"]
    return result


def project_room_token(
    project: Project, room_id: str, user_id: str, *, rooms_api_url: str | None, timeout: float
) -> dict:
    """A room token for ``user_id`` in ``room_id`` from the project's configured provider: ``{"token": …}``.

    400 when the project has no (complete) settings; 502 when a remote provider fails.
    """
    settings = AppSettings.get_or_none(AppSettings.project == project.id)
    if settings is None:
        raise ApiProblem(
            400, "App settings are not configured for this project: choose a token provider with "
                 f"PUT /api/projects/{project.id}/settings"
        )
    provider = settings.token_provider_type
    if provider == "access_key" and settings.access_key_encrypted:
        return {"token": odin.room_token(crypto.decrypt(settings.access_key_encrypted), room_id, user_id)}
    if provider == "webservice" and settings.webservice_url and settings.webservice_response_token_path:
        return {"token": webservice_token(settings, room_id, user_id, timeout=timeout)}
    if provider == "rooms":
        if not rooms_api_url:
            raise ApiProblem(502, ROOMS_NOT_CONFIGURED)
        if project.secret_encrypted is None:
            raise ApiProblem(400, "The token provider rooms needs the project secret, and this project has none")
        secret = crypto.decrypt(project.secret_encrypted)
        return rooms_request(rooms_api_url, project.app_id, secret, room_id, user_id, timeout=timeout)
    raise ApiProblem(400, f"App settings are not configured completely for the token provider {provider}")


def legacy_room_token(project_id: str, secret: str, room_id: str, *, rooms_api_url: str | None, timeout: float) -> dict:
    """The legacy token endpoint: the Rooms token API with a caller-supplied project id and secret."""
    return rooms_request(rooms_api_url, project_id, secret, room_id, timeout=timeout)
