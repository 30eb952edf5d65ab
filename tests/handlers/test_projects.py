"""Projects tag: listing, members and invitations (with real mail), room tokens."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cortex.integrations.mail import read_outbox
from cortex.lib import odin
from models.identity import ProjectMember, create_project

PASSWORD = "correct horse battery"


def login(client, email):
    return client.post("/api/auth/login-credentials", json={"email": email, "password": PASSWORD})


def users_url(member, suffix=""):
    return f"/api/projects/{member.project.id}/users{suffix}"


def send_queued_mail(mailer) -> int:
    """What the mail engine of `cortex serve` does in the background: send every queued message now."""
    from cortex.engines.mail import MailEngine

    return MailEngine(mailer).drain()


# ------------------------------------------------------------------------------------------ listing


def test_owner_sees_every_app_field(client, owner):
    response = client.get("/api/projects", headers=owner.headers)
    assert response.status_code == 200
    [app] = response.get_json()
    assert app["id"] == owner.project.id and app["appId"] == owner.project.app_id
    assert app["name"] == "Game One" and app["type"] == "sdk"
    assert app["secret"] == owner.secret  # admins see the project secret
    assert app["role"] == app["currentUserRole"] == "admin"
    assert all(app["permissions"].values())
    assert app["userCount"] == 1 and app["billingState"] == "free" and app["isConfigured"] is False
    assert [p["product"]["slug"] for p in app["activatedProducts"]] == ["cortex"]


def test_roles_shape_permissions_and_hide_the_secret(client, owner, add_member):
    developer, maintainer = add_member("developer"), add_member("maintainer")
    [dev_view] = client.get("/api/projects", headers=developer.headers).get_json()
    assert dev_view["secret"] == "" and dev_view["role"] == "developer"
    assert [k for k, v in dev_view["permissions"].items() if v] == ["downloadLicense"]
    assert dev_view["userCount"] == 3
    [maint_view] = client.get("/api/projects", headers=maintainer.headers).get_json()
    flags = maint_view["permissions"]
    assert flags["addAccessKey"] and flags["setPeerLimit"] and not flags["addUser"] and not flags["deleteUser"]


def test_configuration_and_voice_show_in_the_listing(client, owner):
    key = odin.generate_access_key()
    settings = {"tokenProviderType": "access_key", "accessKeyConfig": {"accessKey": key, "botUserId": "bot"}}
    assert client.put(f"/api/projects/{owner.project.id}/settings", json=settings,
                      headers=owner.headers).status_code == 200
    assert client.post(f"/api/projects/{owner.project.id}/voice/activate", headers=owner.headers).status_code == 201
    [app] = client.get("/api/projects", headers=owner.headers).get_json()
    assert app["isConfigured"] is True
    assert [p["product"]["slug"] for p in app["activatedProducts"]] == ["cortex", "voice"]


def test_api_keys_see_their_tenants_projects_or_their_one_project(client, owner, api_key_headers, stranger):
    second, _ = create_project(owner.user, "Game Two")
    everything = client.get("/api/projects", headers=api_key_headers(["projects:read"])).get_json()
    assert {p["id"] for p in everything} == {owner.project.id, second.id}
    bound = client.get("/api/projects", headers=api_key_headers(["projects:read"], project_id=second.id))
    assert [p["id"] for p in bound.get_json()] == [second.id]
    key_view = everything[0]["permissions"]
    assert not key_view["addAccessKey"]  # the key lacks voice:write even though its creator is admin
    assert client.get("/api/projects", headers=api_key_headers(["voice:read"])).status_code == 403


def test_other_tenants_projects_are_invisible(client, owner, stranger):
    assert [p["id"] for p in client.get("/api/projects", headers=stranger.headers).get_json()] == [
        stranger.project.id
    ]


# ------------------------------------------------------------------------------------------ members


def test_invite_creates_a_pending_member_and_mails_the_invitation(client, owner, settings, app):
    response = client.post(users_url(owner, "/invite"), json={"email": " New@Example.com ", "role": "maintainer"},
                           headers=owner.headers)
    assert response.status_code == 201
    invited = response.get_json()
    assert invited["email"] == "new@example.com" and invited["status"] == "pending" and invited["role"] == "maintainer"
    assert read_outbox(settings.data_dir) == []  # queued with the membership; the mail engine sends it
    assert send_queued_mail(app.extensions["cortex"].mailer) == 1
    [message] = read_outbox(settings.data_dir)
    assert message["To"] == "new@example.com" and "Game One" in message["Subject"]
    listed = client.get(users_url(owner), headers=owner.headers).get_json()
    assert {(u["email"], u["status"]) for u in listed} == {("owner@example.com", "active"),
                                                           ("new@example.com", "pending")}


def test_pending_invite_becomes_active_when_that_user_logs_in(client, owner, make_user):
    client.post(users_url(owner, "/invite"), json={"email": "guest@elsewhere.org", "role": "developer"},
                headers=owner.headers)
    make_user("guest@elsewhere.org")  # another tenant
    token = login(client, "guest@elsewhere.org").get_json()["accessToken"]
    projects = client.get("/api/projects", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert [(p["id"], p["role"]) for p in projects] == [(owner.project.id, "developer")]
    statuses = {u["email"]: u["status"] for u in client.get(users_url(owner), headers=owner.headers).get_json()}
    assert statuses["guest@elsewhere.org"] == "active"


@pytest.mark.parametrize(
    "body,status",
    [({"email": "owner@example.com", "role": "developer"}, 409), ({"email": "not-an-email", "role": "developer"}, 400)],
)
def test_invite_rejections(client, owner, body, status):
    assert client.post(users_url(owner, "/invite"), json=body, headers=owner.headers).status_code == status


def test_a_project_holds_at_most_the_configured_number_of_memberships(client, owner, app):
    from dataclasses import replace

    runtime = app.extensions["cortex"]
    runtime.settings = replace(runtime.settings, max_members_per_project=3)  # the owner and two more
    invite = lambda email: client.post(users_url(owner, "/invite"), json={"email": email, "role": "developer"},  # noqa: E731
                                       headers=owner.headers)
    assert invite("a@example.com").status_code == 201
    assert invite("b@example.com").status_code == 201
    refused = invite("c@example.com")
    assert refused.status_code == 409
    assert "CORTEX_MAX_MEMBERS_PER_PROJECT" in refused.get_json()["detail"]
    assert len(client.get(users_url(owner), headers=owner.headers).get_json()) == 3  # nothing stored
    assert invite("a@example.com").status_code == 201  # inviting a held email again reuses its row


def test_removal_ends_access_on_the_next_request(client, owner, add_member):
    developer = add_member("developer")
    headers = developer.headers  # issued before the removal
    assert client.get(users_url(owner), headers=headers).status_code == 200
    permission = ProjectMember.get(ProjectMember.user == developer.user.id).id
    removed = client.post(users_url(owner, "/remove"), json={"permissionId": permission}, headers=owner.headers)
    assert removed.status_code == 201 and removed.get_json()["status"] == "revoked"
    assert client.get(users_url(owner), headers=headers).status_code == 404
    again = client.post(users_url(owner, "/remove"), json={"permissionId": permission}, headers=owner.headers)
    assert again.status_code == 404


def test_last_admin_can_be_neither_removed_nor_demoted(client, owner, add_member):
    own = ProjectMember.get(ProjectMember.user == owner.user.id).id
    remove = client.post(users_url(owner, "/remove"), json={"permissionId": own}, headers=owner.headers)
    assert remove.status_code == 409
    demote = client.post(users_url(owner, "/change-role"), json={"permissionId": own, "role": "developer"},
                         headers=owner.headers)
    assert demote.status_code == 409
    second_admin = add_member("admin")
    demote = client.post(users_url(owner, "/change-role"), json={"permissionId": own, "role": "developer"},
                         headers=owner.headers)
    assert demote.status_code == 201 and demote.get_json()["role"] == "developer"
    assert ProjectMember.get_by_id(own).role == "developer"
    assert client.post(users_url(owner, "/invite"), json={"email": "x@example.com", "role": "admin"},
                       headers=owner.headers).status_code == 403  # no longer admin
    assert client.get(users_url(owner), headers=second_admin.headers).status_code == 200


def test_only_admins_manage_members(client, owner, add_member):
    maintainer = add_member("maintainer")
    for suffix, body in (("/invite", {"email": "a@example.com", "role": "developer"}),
                         ("/remove", {"permissionId": "x"}), ("/change-role", {"permissionId": "x", "role": "admin"})):
        response = client.post(users_url(owner, suffix), json=body, headers=maintainer.headers)
        assert response.status_code == 403, suffix
    assert client.post(users_url(owner, "/change-role"), json={"permissionId": "nope", "role": "admin"},
                       headers=owner.headers).status_code == 404


# ------------------------------------------------------------------------------------------ room tokens


def test_token_needs_configured_settings(client, owner):
    response = client.post(f"/api/projects/{owner.project.id}/token", json={"roomId": "r", "userId": "u"},
                           headers=owner.headers)
    assert response.status_code == 400


def test_access_key_token_verifies_against_the_jwks(client, owner):
    base = f"/api/projects/{owner.project.id}"
    client.post(f"{base}/voice/activate", headers=owner.headers)
    created = client.post(f"{base}/voice/access-keys", json={"name": "bot"}, headers=owner.headers).get_json()
    settings = {"tokenProviderType": "access_key",
                "accessKeyConfig": {"accessKey": created["accessKey"], "botUserId": "bot"}}
    client.put(f"{base}/settings", json=settings, headers=owner.headers)
    response = client.post(f"{base}/token", json={"roomId": "lobby", "userId": "player-1"}, headers=owner.headers)
    assert response.status_code == 201
    jwks = client.get(f"{base}/voice/jwks.json").get_json()
    keys = {jwk["kid"]: odin.public_key_from_jwk(jwk) for jwk in jwks["keys"]}
    claims = odin.verify_room_token(response.get_json()["token"], keys)
    assert claims["rid"] == "lobby" and claims["uid"] == "player-1"


class _RoomsApi(BaseHTTPRequestHandler):
    seen = []

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _RoomsApi.seen.append((self.path, body))
        reply = json.dumps({"data": {"token": "rooms-token", "domain": "rooms.example"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def rooms_api(app):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RoomsApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings = app.extensions["cortex"].settings
    from dataclasses import replace

    app.extensions["cortex"].settings = replace(settings, rooms_api_url=f"http://127.0.0.1:{server.server_port}")
    _RoomsApi.seen.clear()
    yield _RoomsApi.seen
    app.extensions["cortex"].settings = settings
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_legacy_token_calls_the_rooms_api(client, owner, rooms_api):
    response = client.post("/api/projects/token", json={"roomId": "r1", "projectId": "app_x", "secret": "s3"},
                           headers=owner.headers)
    assert response.status_code == 201 and response.get_json()["token"] == "rooms-token"
    assert rooms_api == [("/projects/app_x/create-token", {"roomId": "r1", "secret": "s3"})]


def test_legacy_token_without_rooms_api_is_issued_for_the_project_locally(client, owner, stranger):
    """No CORTEX_ROOMS_API_URL (the embedded defaults): the token is issued exactly as POST …/{projectId}/token
    issues it, for the project the id names, when the secret is that project's; 4xx otherwise, never 5xx."""
    def legacy(project_ref, secret, member=owner):
        return client.post("/api/projects/token", json={"roomId": "r1", "projectId": project_ref, "secret": secret},
                           headers=member.headers)

    response = legacy(owner.project.app_id, owner.secret)
    assert response.status_code == 400 and "App settings are not configured" in response.get_json()["detail"]
    access_key = odin.generate_access_key()
    assert client.put(f"/api/projects/{owner.project.id}/settings", headers=owner.headers, json={
        "tokenProviderType": "access_key", "accessKeyConfig": {"accessKey": access_key, "botUserId": "bot"},
    }).status_code == 200
    public = odin.public_key(access_key)
    for ref in (owner.project.app_id, owner.project.id):
        response = legacy(ref, owner.secret)
        assert response.status_code == 201
        claims = odin.verify_room_token(response.get_json()["token"], {odin.key_id(public): public})
        assert claims["rid"] == "r1" and claims["uid"] == owner.user.id
    assert legacy(owner.project.app_id, "wrong").status_code == 403
    assert legacy("app_unknown", owner.secret).status_code == 404
    assert legacy(stranger.project.app_id, stranger.secret).status_code == 404  # not the caller's project
    assert legacy(owner.project.app_id, owner.secret, member=stranger).status_code == 404


def test_invitations_are_delivered_over_smtp(client, owner, app):
    """With CORTEX_SMTP_URL set, the invitation reaches a real (local) SMTP server."""
    from aiosmtpd.controller import Controller

    from cortex.integrations.mail import Mailer

    received = []

    class Collect:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd naming)
            received.append((envelope.rcpt_tos, envelope.content.decode()))
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Collect(), hostname="127.0.0.1", port=port, server_hostname="localhost",
                            ready_timeout=5)
    controller.start()
    try:
        response = client.post(users_url(owner, "/invite"), json={"email": "smtp@example.com", "role": "developer"},
                               headers=owner.headers)
        assert response.status_code == 201
        mailer = Mailer.from_settings(f"smtp://127.0.0.1:{port}", "cortex@studio.example",
                                      app.extensions["cortex"].settings.data_dir)
        assert send_queued_mail(mailer) == 1
    finally:
        controller.stop()
    [(recipients, content)] = received
    assert recipients == ["smtp@example.com"]
    assert "From: cortex@studio.example" in content and "Game One" in content
