"""The gate: routing from the document, 501 list, problem+json errors, validation, tenancy and roles."""

import json

import pytest

from cortex import ROOT
from cortex.http.routing import handler_location, iter_operations, operation_statuses, snake_case

SPEC = json.loads((ROOT / "openapi" / "cortex.json").read_text())
#: Tags whose every operation is implemented, and the exceptions still answering 501.
IMPLEMENTED_TAGS = {
    "Health", "Auth", "API Keys", "Projects", "App Settings", "Voice", "Sessions", "Participants", "Messages",
    "Events", "Webhooks", "Sanctions", "Gatherings", "Plugins", "Plugin Instances", "Functions",
}
#: Operations of built tags that still answer 501.
NOT_YET: set[str] = set()
#: Operations of partly built tags that are done.
ALSO_DONE: set[str] = set()


def test_every_operation_is_routed_and_the_501_list_is_what_is_not_built_yet():
    statuses = operation_statuses(SPEC)
    assert len(statuses) >= 117
    tags = {op["operationId"]: op["tags"][0] for _m, _p, op in iter_operations(SPEC)}
    expected = ({op_id for op_id, tag in tags.items() if tag in IMPLEMENTED_TAGS} - NOT_YET) | ALSO_DONE
    assert {s.operation_id for s in statuses if s.implemented} == expected


@pytest.mark.parametrize(
    "name,expected", [("listSessions", "list_sessions"), ("API Keys", "api_keys"), ("getE2EKey", "get_e2e_key")]
)
def test_snake_case(name, expected):
    assert snake_case(name) == expected


def test_handler_location_uses_first_tag():
    assert handler_location({"operationId": "listInstances", "tags": ["Plugin Instances", "X"]}) == (
        "handlers.plugin_instances",
        "list_instances",
    )


def test_unimplemented_operation_answers_501_problem(settings, owner, tmp_path):
    """Every operation is built now; a spec author's new operation without a handler still answers 501 (after
    authentication and tenancy), on an app built from a document that has one."""
    from dataclasses import replace

    from cortex.http.app import create_app

    document = json.loads(json.dumps(SPEC))
    document["paths"]["/api/projects/{projectId}/widgets"] = {"get": {
        "operationId": "listWidgets", "tags": ["Widgets"], "summary": "List widgets",
        "parameters": [{"name": "projectId", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "Widgets"}}, "security": [{"bearer": []}],
        "x-cortex-role": "developer"}}
    path = tmp_path / "with-widgets.json"
    path.write_text(json.dumps(document))
    app = create_app(replace(settings, spec_path=path))  # the suite's app is bound again by the next test
    with app.test_client() as client:
        response = client.get(f"/api/projects/{owner.project.id}/widgets", headers=owner.headers)
        assert response.status_code == 501
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["detail"] == "Operation listWidgets is not implemented yet"
        assert client.get(f"/api/projects/{owner.project.id}/widgets").status_code == 401


def test_unknown_route_is_404_problem(client):
    response = client.get("/api/nothing-here")
    assert response.status_code == 404 and response.mimetype == "application/problem+json"


def test_wrong_method_is_405_with_allow(client):
    response = client.put("/api/api-keys")
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_allow_lists_every_method_of_every_template_matching_the_url(client, owner):
    """``…/members/{memberId}`` (PATCH) and ``…/members/{participantId}`` (DELETE) are one resource: OPTIONS and
    405 name both methods."""
    url = f"/api/projects/{owner.project.id}/gatherings/g-1/members/m-1"
    options = client.options(url, headers=owner.headers)
    assert options.status_code == 204
    assert options.headers["Allow"] == "DELETE, OPTIONS, PATCH"
    wrong = client.get(url, headers=owner.headers)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "DELETE, OPTIONS, PATCH"
    assert client.options("/api/api-keys/scopes").headers["Allow"] == "GET, HEAD, OPTIONS"  # concrete wins


def test_invalid_json_is_400_and_wrong_content_type_415(client, owner):
    bad = client.post("/api/api-keys", data="{not json", content_type="application/json", headers=owner.headers)
    assert bad.status_code == 400 and "not valid JSON" in bad.get_json()["detail"]
    text = client.post("/api/api-keys", data="name=x", content_type="text/plain", headers=owner.headers)
    assert text.status_code == 415
    empty = client.post("/api/api-keys", headers=owner.headers)
    assert empty.status_code == 400 and empty.get_json()["detail"] == "Request body is required"


def test_query_parameters_are_coerced_and_validated(client, owner):
    url = f"/api/projects/{owner.project.id}/participants"
    response = client.get(url + "?limit=abc", headers=owner.headers)
    assert response.status_code == 400 and "limit" in response.get_json()["detail"]
    assert client.get(url + "?limit=5", headers=owner.headers).status_code == 200


def test_oversized_body_is_413(client, owner):
    response = client.post("/api/api-keys", data="x" * (1024 * 1024 + 1), content_type="application/json",
                           headers=owner.headers)
    assert response.status_code == 413 and response.mimetype == "application/problem+json"


def test_other_tenants_project_is_indistinguishable_from_missing(client, owner, stranger):
    theirs = client.get(f"/api/projects/{stranger.project.id}/sessions", headers=owner.headers)
    missing = client.get("/api/projects/does-not-exist/sessions", headers=owner.headers)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.get_json()["title"] == missing.get_json()["title"]


def test_project_is_found_by_app_id_too(client, owner):
    response = client.get(f"/api/projects/{owner.project.app_id}/sessions", headers=owner.headers)
    assert response.status_code == 200


def test_non_member_of_same_tenant_gets_404(client, owner, make_user):
    from cortex.http.security import issue_access_token

    outsider = make_user("outsider@example.com", tenant_id=owner.user.tenant_id)
    headers = {"Authorization": f"Bearer {issue_access_token(outsider.id, outsider.tenant_id)}"}
    assert client.get(f"/api/projects/{owner.project.id}/sessions", headers=headers).status_code == 404


@pytest.mark.parametrize(
    "role,method,path,expected",
    [
        ("developer", "post", "/sessions", 400),  # runtime data: developers may write (settings not configured)
        ("developer", "put", "/voice/peer-limit", 403),  # configuration: maintainer+
        ("maintainer", "put", "/voice/peer-limit", 409),  # passes the role gate; voice not activated yet
        ("maintainer", "post", "/users/invite", 403),  # members: admin only
        ("admin", "post", "/users/invite", 201),
        ("developer", "get", "/settings/secret", 403),
    ],
)
def test_roles_are_enforced_from_the_document(client, add_member, owner, role, method, path, expected):
    member = owner if role == "admin" else add_member(role)
    bodies = {"/sessions": {"title": "t", "externalRoomId": "r"}, "/voice/peer-limit": {"peerLimit": 5},
              "/users/invite": {"email": "x@example.com", "role": "developer"}}
    kwargs = {"json": bodies[path]} if path in bodies else {}
    response = getattr(client, method)(f"/api/projects/{owner.project.id}{path}", headers=member.headers, **kwargs)
    assert response.status_code == expected, response.get_json()
    if expected == 403:
        assert "role" in response.get_json()["detail"]


def test_nul_characters_are_rejected_not_stored(client, owner):
    body = client.post("/api/auth/login-credentials", json={"email": "a\x00@b.c", "password": "longenough"})
    assert body.status_code == 400 and "NUL" in body.get_json()["detail"]
    path = client.delete("/api/api-keys/abc%00def", headers=owner.headers)
    assert path.status_code == 400 and "NUL" in path.get_json()["detail"]
    escaped = client.post("/api/api-keys", json={"name": "back\\u0000slash", "scopes": ["sessions:read"]},
                          headers=owner.headers)
    assert escaped.status_code == 201  # a literal backslash-u sequence is fine


def test_render_writes_integers_beyond_64_bits(app):
    from cortex.http.gate import render

    with app.test_request_context():
        response = render(({"n": 2**70}, 201))
    assert response.status_code == 201 and response.get_data() == b'{"n":1180591620717411303424}'
