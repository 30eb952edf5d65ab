"""ODIN room tokens for a project, from its configured token provider (see models.settings.AppSettings).

- ``access_key``: signed locally with the stored access key (``cortex.lib.odin.room_token``);
- ``webservice``: fetched from the project's own HTTP endpoint (a tenant-chosen URL: the outbound address
  policy applies);
- ``rooms``: fetched from the Rooms token API (``CORTEX_ROOMS_API_URL``, operator-configured and trusted) with
  the project secret.

The HTTP exchange itself is the caller's :class:`TokenFetcher` (``cortex.integrations.tokens``, over the one
outbound client): this module builds the requests and reads the replies. A remote provider that fails answers
502 naming the provider and what failed; details never contain secrets (headers, secrets, request bodies).

Sanctions: while a ``temp_ban`` or ``perm_ban`` is in force for the user a token would be issued for
(``models.sanctions.in_force``), the token is refused — 403 naming the ban and its end — before any provider
is asked.
"""

from __future__ import annotations

import hmac
import json
from typing import Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from cortex.lib import crypto, odin
from models.access import Principal, project_for
from models.base import DomainError, forbidden, invalid
from models.identity import Project, project_secret
from models.sanctions import BAN_TYPES, describe, in_force
from models.settings import AppSettings, token_path_segments
from models.voice import peer_limit_reached

ROOMS_NOT_CONFIGURED = "The Rooms token API is not configured on this server (CORTEX_ROOMS_API_URL)"
WEBSERVICE = "Token webservice request"
ROOMS = "Rooms token API request"


class TokenFetcher(Protocol):
    """One HTTP exchange with a token provider (``cortex.integrations.tokens.HttpTokenFetcher``)."""

    def fetch_json(self, what: str, url: str, method: str, headers: dict[str, str], body: bytes | None, *,
                   trusted: bool = False):
        """The parsed JSON reply; ``upstream_failed(what, …)`` on any failure. ``trusted``: an
        operator-configured URL, exempt from the outbound address policy."""


def upstream_failed(what: str, failure: str) -> DomainError:
    """502: a configured outside service failed (``what`` names it, ``failure`` says how)."""
    return DomainError("upstream_failed", f"{what} failed: {failure}")


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


def webservice_token(settings: AppSettings, room_id: str, user_id: str, fetcher: TokenFetcher) -> str:
    """Fetch a room token from the project's webservice (GET: roomId/userId as query; POST: the body template)."""
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
    reply = fetcher.fetch_json(WEBSERVICE, url, method, headers, body)
    path = settings.webservice_response_token_path
    try:
        token = extract_token_path(reply, path)
    except (KeyError, ValueError):
        raise upstream_failed(WEBSERVICE, f"its reply has no value at {path!r}") from None
    if not isinstance(token, str) or not token:
        raise upstream_failed(WEBSERVICE, f"the value at {path!r} is not a non-empty string")
    return token


def rooms_request(rooms_api_url: str | None, api_key: str, secret: str, room_id: str, user_id: str | None = None,
                  *, fetcher: TokenFetcher) -> dict:
    """Ask the Rooms token API for a room token: ``{"token": …, "domain": …}`` (domain when it sends one)."""
    if not rooms_api_url:
        raise invalid(ROOMS_NOT_CONFIGURED)
    url = f"{rooms_api_url.rstrip('/')}/projects/{quote(api_key, safe='')}/create-token"
    payload = {"roomId": room_id}
    if user_id is not None:
        payload["userId"] = user_id
    payload["secret"] = secret
    reply = fetcher.fetch_json(ROOMS, url, "POST", {}, json.dumps(payload).encode("utf-8"), trusted=True)
    data = reply.get("data") if isinstance(reply, dict) else None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise upstream_failed(ROOMS, "its reply has no token at data.token")
    result = {"token": token}
    if isinstance(data.get("domain"), str) and data["domain"]:
        result["domain"] = data["domain"]
    return result


def refuse_banned(project: Project, user_id: str) -> None:
    """403 while a ban (``temp_ban`` / ``perm_ban``) is in force for ``user_id`` (the player's external user id)
    in the project, naming the ban that ends last and its end."""
    bans = in_force(project.id, user_id, BAN_TYPES) if user_id else []
    if bans:
        ban = bans[0]
        raise forbidden(f"User {user_id!r} is banned from this project's voice rooms: {describe(ban)} "
                        f"(sanction {ban.id})")


def project_room_token(project: Project, room_id: str, user_id: str, *, fetcher: TokenFetcher,
                       rooms_api_url: str | None) -> dict:
    """A room token for ``user_id`` in ``room_id`` from the project's configured provider: ``{"token": …}``.

    403 while a ban is in force for ``user_id`` (:func:`refuse_banned`); 429 while the project's voice peer
    limit is reached; 400 when the project has no (complete) settings or its provider needs what this server
    lacks; 502 when a remote provider fails.
    """
    refuse_banned(project, user_id)
    full = peer_limit_reached(project)
    if full is not None:
        limit, present = full
        raise DomainError("rate_limited", f"The voice peer limit of this project is reached: {present} peers are "
                                          f"present and the limit is {limit} (PUT …/voice/peer-limit)")
    settings = AppSettings.get_or_none(AppSettings.project == project.id)
    if settings is None:
        raise invalid("App settings are not configured for this project: choose a token provider with "
                      f"PUT /api/projects/{project.id}/settings")
    provider = settings.token_provider_type
    if provider == "access_key" and settings.access_key_encrypted:
        return {"token": odin.room_token(crypto.decrypt(settings.access_key_encrypted), room_id, user_id)}
    if provider == "webservice" and settings.webservice_url and settings.webservice_response_token_path:
        return {"token": webservice_token(settings, room_id, user_id, fetcher)}
    if provider == "rooms":
        if not rooms_api_url:
            raise invalid(ROOMS_NOT_CONFIGURED)
        secret = project_secret(project)
        if secret is None:
            raise invalid("The token provider rooms needs the project secret, and this project has none")
        return rooms_request(rooms_api_url, project.app_id, secret, room_id, user_id, fetcher=fetcher)
    raise invalid(f"App settings are not configured completely for the token provider {provider}")


def legacy_room_token(principal: Principal, project_ref: str, secret: str, room_id: str, *, fetcher: TokenFetcher,
                      rooms_api_url: str | None) -> dict:
    """``POST /api/projects/token`` (legacy): a room token for a project named by id or appId and its secret.

    With a Rooms API configured, the request goes there as given (the Rooms API checks the secret). Without
    one, the token is issued here exactly as ``POST …/{projectId}/token`` issues it for that project (its
    configured provider, its peer limit; the user id is the caller's): the project must be one the caller may
    use as a developer (404 / 403), and ``secret`` must be its project secret (403). The token is issued for
    the caller's user id, so a ban in force for that id in the project refuses it (403) like
    ``POST …/{projectId}/token``; a request forwarded to the Rooms API names no user, and is forwarded as is.
    """
    if rooms_api_url:
        return rooms_request(rooms_api_url, project_ref, secret, room_id, fetcher=fetcher)
    project = project_for(principal, project_ref, "developer")
    stored = project_secret(project)
    if stored is None or not hmac.compare_digest(stored.encode(), secret.encode()):
        raise forbidden("secret is not the project secret of this project")
    return project_room_token(project, room_id, principal.user_id or "", fetcher=fetcher, rooms_api_url=None)
