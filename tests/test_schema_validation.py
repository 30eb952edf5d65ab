"""SchemaValidator: fastjsonschema answers first, jsonschema (Connexion's Draft 4 request rules) decides.

The property that makes the fast path safe: whatever the fast check accepts, jsonschema accepts too; what it
rejects is judged (and worded) by jsonschema. Checked here on the known traps and, with Hypothesis, on every
request body and parameter schema of the served document.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import ValidationError

from cortex.http.gate import OperationGate
from cortex.http.validation import SchemaValidator

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | st.sampled_from(["2026-03-20T12:00:00Z", "2026-13-45T99:99:99Z", "a@b.c", "abc\n",
                                              "session:1", "user", "created", "message.created", "voice:server"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=12,
)


def verdicts(validator: SchemaValidator, value) -> tuple[bool | None, bool]:
    """(fast verdict or None when there is no fast check, jsonschema's verdict)."""
    fast = None
    if validator.fast is not None:
        try:
            validator.fast(value)
            fast = True
        except Exception:
            fast = False
    try:
        validator.slow.validate(value)
        slow = True
    except ValidationError:
        slow = False
    return fast, slow


def gates(app) -> list[OperationGate]:
    return [view for view in app.view_functions.values() if isinstance(view, OperationGate)]


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "integer", "enum": [1, 2]}, True),  # Python: True == 1; JSON Schema: not an integer
        ({"enum": [1, "a"]}, True),
        ({"type": "string", "nullable": True}, None),  # OpenAPI nullable: jsonschema (Connexion) allows null
        ({"type": "string", "format": "date-time"}, "2026-13-45T99:99:99Z"),
        ({"type": "string", "pattern": "^a+$"}, "aaa\n"),
        ({"type": "object", "properties": {"id": {"type": "string", "readOnly": True}}}, {"id": "x"}),
        ({"type": "object", "required": ["id"], "properties": {"id": {"type": "string", "readOnly": True}}}, {}),
        ({"type": "number"}, True),
    ],
)
def test_the_fast_check_never_accepts_what_jsonschema_rejects(schema, value):
    validator = SchemaValidator(schema)
    fast, slow = verdicts(validator, value)
    assert not (fast and not slow)
    try:
        validator.validate(value)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == slow  # the answer is always jsonschema's


def test_readonly_and_integer_enums_are_left_to_jsonschema():
    assert SchemaValidator({"type": "object", "properties": {"a": {"type": "string", "readOnly": True}}}).fast is None
    assert SchemaValidator({"enum": [1, 2]}).fast is None
    assert SchemaValidator({"type": "string", "enum": ["a", "b"]}).fast is not None


def test_the_ingest_body_and_headers_get_the_fast_check(app):
    [gate] = [gate for gate in gates(app) if gate.operation_id == "ingest"]
    assert gate.body_validator.fast is not None
    assert all(parameter.validator.fast is not None for parameter in gate.parameters)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_request_schema_of_the_document(app, data):
    validators = [gate.body_validator for gate in gates(app) if gate.body_validator is not None]
    validators += [parameter.validator for gate in gates(app) for parameter in gate.parameters]
    validator = data.draw(st.sampled_from(validators))
    names = sorted(validator.slow.schema.get("properties", {}))
    shaped = st.dictionaries(st.sampled_from(names) | st.text(max_size=5), json_values, max_size=len(names) + 1)
    value = data.draw(shaped if names else json_values)
    fast, slow = verdicts(validator, value)
    assert not (fast and not slow), (validator.slow.schema, value)
