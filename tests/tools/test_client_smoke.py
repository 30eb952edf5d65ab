"""Tests for tools/client_smoke.py: how it reads the generator's warnings, finds undeclared properties and checks
webhook signatures, and that a document the generator cannot fully read fails it. The smoke itself (a live
server) runs in CI's stage 3b, not here."""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from standardwebhooks import Webhook

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL_PATH = REPO_ROOT / "tools" / "client_smoke.py"

_spec = importlib.util.spec_from_file_location("client_smoke_under_test", TOOL_PATH)
assert _spec is not None and _spec.loader is not None
client_smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(client_smoke)

INVOKE_WARNING = """\
WARNING parsing POST /invoke/{projectId}/{slug} within functions.

Unsupported content type text/plain

{
  "description": "Any body",
  "content": {
    "text/plain": {"schema": {"type": "string"}}
  }
}
"""

XML_WARNING = """\
WARNING parsing GET /api/projects/{projectId}/sessions within sessions.

Cannot parse response for status code 200 (Unsupported content_type application/xml), response will be omitted

{
  "description": "Sessions"
}
"""


def generator_output(*warnings: str) -> str:
    return (
        "Generating /tmp/x/client\n"
        "Warning(s) encountered while generating. Client was generated, but some pieces may be missing\n\n"
        + "\n".join(warnings)
        + "\nIf you believe this was a mistake or this tool is missing a feature you need, please open an issue\n"
    )


def test_known_warnings_are_accepted_and_counted():
    assert client_smoke.unexpected_generator_output(generator_output(INVOKE_WARNING, INVOKE_WARNING)) == ([], 2)


def test_a_clean_generation_has_nothing_unexpected():
    assert client_smoke.unexpected_generator_output("Generating /tmp/x/client\n") == ([], 0)


def test_an_unknown_warning_is_reported_with_its_detail():
    unexpected, known = client_smoke.unexpected_generator_output(generator_output(INVOKE_WARNING, XML_WARNING))
    assert known == 1
    assert unexpected[0] == "WARNING parsing GET /api/projects/{projectId}/sessions within sessions."
    assert "application/xml" in unexpected[1]


def test_a_known_operation_with_another_problem_is_reported():
    other = INVOKE_WARNING.replace("Unsupported content type text/plain", "Could not find reference Nope")
    unexpected, _ = client_smoke.unexpected_generator_output(generator_output(other))
    assert unexpected == ["Could not find reference Nope"]


@attrs.define
class Inner:
    name: str
    additional_properties: dict = attrs.field(init=False, factory=dict)


@attrs.define
class FreeForm:  # a free-form object: no declared property
    additional_properties: dict = attrs.field(init=False, factory=dict)


@attrs.define
class Outer:
    id: str
    items: list
    extra: FreeForm
    additional_properties: dict = attrs.field(init=False, factory=dict)


def test_undeclared_properties_are_found_anywhere_but_in_free_form_objects():
    inner = Inner(name="a")
    inner.additional_properties["surprise"] = 1
    free = FreeForm()
    free.additional_properties["anything"] = "goes"
    outer = Outer(id="x", items=[Inner(name="b"), inner], extra=free)
    outer.additional_properties["email"] = "a@b.c"
    assert client_smoke.undeclared_properties(outer) == [("Outer.email", ".email"),
                                                         ("Inner.surprise", ".items[1].surprise")]


def test_check_declared_accepts_only_the_listed_properties(monkeypatch):
    inner = Inner(name="a")
    inner.additional_properties["surprise"] = 1
    with pytest.raises(client_smoke.SmokeError, match=r"listSessions: .*Inner\.surprise"):
        client_smoke.check_declared(inner, "listSessions")
    monkeypatch.setitem(client_smoke.KNOWN_UNDECLARED, "Inner.surprise", "declare it")
    client_smoke.check_declared(inner, "listSessions")


@pytest.mark.parametrize("secret", ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_dGVzdC1zZWNyZXQtYnl0ZXMh"])
def test_signature_check_agrees_with_the_standard_webhooks_library(secret):
    body = b'{"type":"gathering.created"}'
    now = datetime.now(UTC)
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(secret).sign("evt_1", now, body.decode())}
    client_smoke.verify_signature(secret, headers, body)
    with pytest.raises(client_smoke.SmokeError, match="no valid v1 signature"):
        client_smoke.verify_signature(secret, headers, body + b" ")


def test_event_models_are_named_after_the_event_type():
    class Models:
        GatheringMemberJoinedEvent = object
    assert client_smoke.event_model(Models, "gathering.member.joined") is object
    with pytest.raises(client_smoke.SmokeError, match="no model SessionCreatedEvent"):
        client_smoke.event_model(Models, "session.created")


def tiny_document(content_type: str) -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": "Tiny", "version": "1.0"},
        "paths": {"/api/things": {"get": {
            "operationId": "listThings",
            "responses": {"200": {"description": "Things", "content": {content_type: {"schema": {
                "type": "array", "items": {"$ref": "#/components/schemas/Thing"}}}}}},
        }}},
        "components": {"schemas": {"Thing": {
            "type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}},
    }


@pytest.mark.parametrize("content_type, fails", [("application/json", False), ("application/xml", True)])
def test_a_document_the_generator_cannot_fully_read_fails_generation(tmp_path, content_type, fails):
    pytest.importorskip("openapi_python_client")
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(tiny_document(content_type)), encoding="utf-8")
    if fails:
        with pytest.raises(client_smoke.SmokeError, match=r"(?s)left out of the client:.*GET /api/things"):
            client_smoke.generate(spec, tmp_path)
    else:
        client_dir, known = client_smoke.generate(spec, tmp_path)
        assert known == 0
        assert (client_dir / client_smoke.PACKAGE / "api" / "default" / "list_things.py").exists()
