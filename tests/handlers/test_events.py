"""Events tag: the documentation-only event schema (GET /api/events/schema)."""

import uuid

from models.base import parse_timestamp


def test_schema_example_is_a_valid_session_created_envelope(client, owner):
    response = client.get("/api/events/schema", headers=owner.headers)  # the client validates the oneOf
    assert response.status_code == 200
    body = response.get_json()
    assert body["type"] == "session.created" and body["source"] == "cortex:api"
    assert uuid.UUID(body["id"]).version == 4
    assert body["timestamp"].endswith("Z") and parse_timestamp(body["timestamp"])
    session = body["payload"]["data"]
    assert body["payload"]["action"] == "created"
    assert body["resourceId"] == f"session:{session['id']}"
    assert session["tenantId"] == body["tenantId"] and session["projectId"] == body["projectId"]


def test_schema_accepts_api_keys_with_events_read(client, api_key_headers):
    assert client.get("/api/events/schema", headers=api_key_headers(["events:read"])).status_code == 200
    assert client.get("/api/events/schema", headers=api_key_headers(["sessions:read"])).status_code == 403


def test_schema_needs_credentials(client):
    assert client.get("/api/events/schema").status_code == 401
