"""Room-token providers: access key (signed locally), webservice and Rooms API (against local HTTP servers)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from cortex.integrations.tokens import HttpTokenFetcher
from cortex.lib import odin
from models.access import Principal
from models.base import DomainError
from models.identity import Project
from models.settings import replace_app_settings
from models.tokens import ROOMS_NOT_CONFIGURED, legacy_room_token, project_room_token, rooms_request

ACCESS_KEY = odin.generate_access_key()
HEADER_SECRET = "Bearer webservice-header-secret-5d1e"
TIMEOUT = 5.0


class Recorder(BaseHTTPRequestHandler):
    """Records each request and answers with the server's canned reply."""

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        self.server.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": body}
        )
        status, payload, headers = self.server.reply
        if self.server.stall:
            self.server.release.wait(5)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class LocalServer(ThreadingHTTPServer):
    """A local HTTP server whose request threads are joined on close."""

    daemon_threads = False
    block_on_close = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Recorder)
        self.requests: list[dict] = []
        self.reply = (200, {"data": {"token": "remote-token"}}, {})
        self.stall = False
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address):
        pass  # the client went away (timeout tests)


@pytest.fixture
def server():
    local = LocalServer()
    thread = threading.Thread(target=local.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield local
    finally:
        local.release.set()
        local.shutdown()
        local.server_close()
        thread.join()


def configure_webservice(owner, server, **config):
    settings = {
        "url": server.url + "/token?tenant=t1",
        "method": "POST",
        "headers": {"Authorization": HEADER_SECRET, "X-Extra": "1"},
        "bodyTemplate": '{"room":"{{roomId}}","user":"{{userId}}","fixed":true}',
        "responseTokenPath": "data.token",
        **config,
    }
    replace_app_settings(owner.project, {"tokenProviderType": "webservice", "webserviceConfig": settings})


def fetcher(timeout: float = TIMEOUT, allow_private: bool = True) -> HttpTokenFetcher:
    """The token providers' HTTP side; these tests' servers are on loopback (CORTEX_OUTBOUND_ALLOW_PRIVATE)."""
    return HttpTokenFetcher(timeout=timeout, allow_private=allow_private)


def token(owner, room="room-1", user="user-1", *, rooms_api_url=None, timeout=TIMEOUT) -> dict:
    return project_room_token(owner.project, room, user, fetcher=fetcher(timeout), rooms_api_url=rooms_api_url)


def token_problem(owner, *, room="room-1", user="user-1", rooms_api_url=None, timeout=TIMEOUT,
                  allow_private=True) -> DomainError:
    with pytest.raises(DomainError) as caught:
        project_room_token(owner.project, room, user, fetcher=fetcher(timeout, allow_private),
                           rooms_api_url=rooms_api_url)
    return caught.value


# ------------------------------------------------------------------------------------------- no settings


def test_without_settings_is_400(owner):
    error = token_problem(owner)
    assert error.kind == "invalid" and error.detail.startswith("App settings are not configured")


# ------------------------------------------------------------------------------------------- access key


def test_access_key_token_verifies_with_the_keys_public_key(owner):
    replace_app_settings(owner.project, {
        "tokenProviderType": "access_key", "accessKeyConfig": {"accessKey": ACCESS_KEY, "botUserId": "bot"},
    })
    result = token(owner, "lobby", "player-7")
    assert set(result) == {"token"}
    public = odin.public_key(ACCESS_KEY)
    claims = odin.verify_room_token(result["token"], {odin.key_id(public): public})
    assert claims["rid"] == "lobby" and claims["uid"] == "player-7"
    other = odin.public_key(odin.generate_access_key())
    with pytest.raises(odin.InvalidRoomToken):
        odin.verify_room_token(result["token"], {odin.key_id(public): other})


# ------------------------------------------------------------------------------------------- webservice


def test_webservice_post_sends_headers_and_the_substituted_body(owner, server):
    configure_webservice(owner, server, responseTokenPath="data.tokens.1.value")
    server.reply = (200, {"data": {"tokens": [{"value": "first"}, {"value": "second"}]}}, {})
    room, user = 'room "A"\\1', "ünï\ncode"
    assert token(owner, room, user) == {"token": "second"}
    [request] = server.requests
    assert request["method"] == "POST" and request["path"] == "/token?tenant=t1"
    assert request["headers"]["Authorization"] == HEADER_SECRET and request["headers"]["X-Extra"] == "1"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {"room": room, "user": user, "fixed": True}


def test_webservice_post_without_template_sends_room_and_user(owner, server):
    configure_webservice(owner, server, bodyTemplate="", headers={"Content-Type": "application/json; x=1"})
    token(owner, "r", "u")
    [request] = server.requests
    assert json.loads(request["body"]) == {"roomId": "r", "userId": "u"}
    assert request["headers"]["Content-Type"] == "application/json; x=1"


def test_webservice_get_sends_no_body_and_query_parameters(owner, server):
    configure_webservice(owner, server, method="GET", responseTokenPath="$.token")
    server.reply = (200, {"token": "get-token"}, {})
    result = token(owner, "room one", "user&1")
    assert result == {"token": "get-token"}
    [request] = server.requests
    assert request["method"] == "GET" and request["body"] is None
    assert "Content-Type" not in request["headers"]
    assert request["headers"]["Authorization"] == HEADER_SECRET
    parts = urlsplit(request["path"])
    assert parts.path == "/token"
    assert parse_qs(parts.query) == {"tenant": ["t1"], "roomId": ["room one"], "userId": ["user&1"]}


@pytest.mark.parametrize(
    "reply,detail",
    [
        ((500, {"error": "boom"}, {}), "it answered HTTP 500"),
        ((404, {}, {}), "it answered HTTP 404"),
        ((302, {}, {"Location": "http://127.0.0.1:9/elsewhere"}), "it answered HTTP 302"),
        ((200, b"<html>not json", {}), "its reply is not valid JSON"),
        ((200, {"data": {}}, {}), "its reply has no value at 'data.token'"),
        ((200, {"data": "flat"}, {}), "its reply has no value at 'data.token'"),
        ((200, {"data": {"token": 42}}, {}), "the value at 'data.token' is not a non-empty string"),
        ((200, {"data": {"token": ""}}, {}), "the value at 'data.token' is not a non-empty string"),
    ],
)
def test_webservice_failures_are_502(owner, server, reply, detail):
    configure_webservice(owner, server)
    server.reply = reply
    error = token_problem(owner)
    assert error.kind == "upstream_failed"
    assert error.detail == f"Token webservice request failed: {detail}"
    assert len(server.requests) == 1  # redirects are not followed
    assert "secret" not in error.detail


def test_webservice_timeout_is_502(owner, server):
    configure_webservice(owner, server)
    server.stall = True
    error = token_problem(owner, timeout=0.3)
    assert error.kind == "upstream_failed"
    assert error.detail == "Token webservice request failed: no answer within 0.3 s"


def test_webservice_unreachable_is_502(owner):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    replace_app_settings(owner.project, {"tokenProviderType": "webservice", "webserviceConfig": {
        "url": f"http://127.0.0.1:{port}/token", "method": "POST", "responseTokenPath": "token",
    }})
    error = token_problem(owner)
    assert error.kind == "upstream_failed"
    assert error.detail == "Token webservice request failed: could not connect"  # not whether the port is open


def test_webservice_on_a_private_address_is_refused_by_the_outbound_policy(owner, server):
    """The webservice URL is the tenant's choice: the same address policy as webhook delivery applies."""
    configure_webservice(owner, server)
    error = token_problem(owner, allow_private=False)
    assert error.kind == "upstream_failed"
    assert error.detail == "Token webservice request failed: address not allowed"
    assert "127.0.0.1" not in error.detail and server.requests == []  # nothing was sent
    configure_webservice(owner, server, url=server.url.replace("127.0.0.1", "localhost") + "/token")
    error = token_problem(owner, allow_private=False)  # a host name: checked on what it resolves to, when called
    assert error.detail == "Token webservice request failed: address not allowed" and server.requests == []


# ------------------------------------------------------------------------------------------- Rooms API


def test_rooms_provider_posts_app_id_and_project_secret(owner, server):
    replace_app_settings(owner.project, {"tokenProviderType": "rooms"})
    server.reply = (200, {"data": {"token": "rooms-token", "domain": "gateway.example.com"}}, {})
    result = token(owner, "lobby", "u1", rooms_api_url=server.url + "/v1/")
    assert result == {"token": "rooms-token", "domain": "gateway.example.com"}
    [request] = server.requests
    assert request["method"] == "POST"
    assert request["path"] == f"/v1/projects/{owner.project.app_id}/create-token"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {"roomId": "lobby", "userId": "u1", "secret": owner.secret}


def test_rooms_provider_needs_the_server_url_and_the_project_secret(owner):
    replace_app_settings(owner.project, {"tokenProviderType": "rooms"})
    error = token_problem(owner, rooms_api_url=None)  # the server lacks what the provider needs: 4xx, not 5xx
    assert error.kind == "invalid" and error.detail == ROOMS_NOT_CONFIGURED
    Project.update(secret_encrypted=None).where(Project.id == owner.project.id).execute()
    owner.project = Project.get_by_id(owner.project.id)
    assert token_problem(owner, rooms_api_url="http://127.0.0.1:9").kind == "invalid"


def test_rooms_request_quotes_the_api_key_and_omits_a_missing_user(server):
    server.reply = (200, {"data": {"token": "t"}}, {})
    assert rooms_request(server.url, "app/1 x", "s3cret", "r", fetcher=fetcher()) == {"token": "t"}
    [request] = server.requests
    assert request["path"] == "/projects/app%2F1%20x/create-token"
    assert json.loads(request["body"]) == {"roomId": "r", "secret": "s3cret"}


def test_legacy_room_token_uses_the_given_project_and_secret(owner, server):
    server.reply = (200, {"data": {"token": "legacy", "domain": "d.example"}}, {})
    caller = Principal(kind="user", tenant_id=owner.user.tenant_id, user_id=owner.user.id)
    result = legacy_room_token(caller, "proj-9", "given-secret", "room-x", fetcher=fetcher(), rooms_api_url=server.url)
    assert result == {"token": "legacy", "domain": "d.example"}
    [request] = server.requests
    assert request["path"] == "/projects/proj-9/create-token"
    assert json.loads(request["body"]) == {"roomId": "room-x", "secret": "given-secret"}


def test_legacy_room_token_without_a_rooms_api_is_issued_here(owner, stranger):
    """No CORTEX_ROOMS_API_URL: the token is the project's own (its provider), for a project and secret that match."""
    replace_app_settings(owner.project, {
        "tokenProviderType": "access_key", "accessKeyConfig": {"accessKey": ACCESS_KEY, "botUserId": "bot"},
    })
    caller = Principal(kind="user", tenant_id=owner.user.tenant_id, user_id=owner.user.id)
    for ref in (owner.project.id, owner.project.app_id):
        result = legacy_room_token(caller, ref, owner.secret, "lobby", fetcher=fetcher(), rooms_api_url=None)
        public = odin.public_key(ACCESS_KEY)
        claims = odin.verify_room_token(result["token"], {odin.key_id(public): public})
        assert claims["rid"] == "lobby" and claims["uid"] == owner.user.id
    with pytest.raises(DomainError) as caught:
        legacy_room_token(caller, owner.project.id, "not-the-secret", "lobby", fetcher=fetcher(), rooms_api_url=None)
    assert caught.value.kind == "forbidden"
    with pytest.raises(DomainError) as caught:  # another tenant's project, even with its secret: not visible
        legacy_room_token(caller, stranger.project.id, stranger.secret, "lobby", fetcher=fetcher(), rooms_api_url=None)
    assert caught.value.kind == "not_found"


@pytest.mark.parametrize(
    "reply,detail",
    [
        ((401, {"error": "bad secret"}, {}), "it answered HTTP 401"),
        ((200, {"token": "not-under-data"}, {}), "its reply has no token at data.token"),
        ((200, [1, 2], {}), "its reply has no token at data.token"),
        ((200, b"{", {}), "its reply is not valid JSON"),
    ],
)
def test_rooms_failures_are_502_without_the_secret(server, reply, detail):
    server.reply = reply
    with pytest.raises(DomainError) as caught:
        rooms_request(server.url, "app", "top-secret-value", "r", "u", fetcher=fetcher())
    assert caught.value.kind == "upstream_failed"
    assert caught.value.detail == f"Rooms token API request failed: {detail}"


def test_rooms_timeout_is_502(server):
    server.stall = True
    with pytest.raises(DomainError) as caught:
        rooms_request(server.url, "app", "s", "r", fetcher=fetcher(0.3))
    assert caught.value.detail == "Rooms token API request failed: no answer within 0.3 s"
