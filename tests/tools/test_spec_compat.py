"""Tests for tools/spec_compat.py (OpenAPI backwards-compatibility checker)."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL_PATH = REPO_ROOT / "tools" / "spec_compat.py"
UPSTREAM_PATH = REPO_ROOT / "openapi" / "upstream" / "odin-cortex-1.0.json"

_spec = importlib.util.spec_from_file_location("spec_compat_under_test", TOOL_PATH)
assert _spec is not None and _spec.loader is not None
spec_compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(spec_compat)

LOGIN = "/api/auth/login"
GATHERINGS = "/api/projects/{projectId}/gatherings"
SCHEMA = "components.schemas"


@pytest.fixture(scope="module")
def upstream() -> dict:
    return json.loads(UPSTREAM_PATH.read_text(encoding="utf-8"))


def _param(doc: dict, path: str, method: str, name: str) -> dict:
    return next(p for p in doc["paths"][path][method]["parameters"] if p["name"] == name)


def _props(doc: dict, schema: str) -> dict:
    return doc["components"]["schemas"][schema]["properties"]


def _assert_reported(problems: list[str], location: str, *words: str) -> None:
    hits = [p for p in problems if p.startswith(location) and all(w in p for w in words)]
    assert hits, f"expected a problem at {location!r} mentioning {words}, got: {problems}"


# ---------------------------------------------------------------------------
# baseline


def test_upstream_is_compatible_with_itself(upstream: dict) -> None:
    assert spec_compat.check(upstream, copy.deepcopy(upstream)) == []


def test_summary_counts(upstream: dict) -> None:
    served = copy.deepcopy(upstream)
    served["paths"]["/api/extra"] = {
        "get": {"operationId": "extra", "responses": {"200": {"description": "ok"}}}
    }
    served["components"]["schemas"]["Problem"] = {"type": "object", "properties": {}}
    line = spec_compat.summarize(upstream, served)
    assert line.startswith("spec_compat: OK")
    assert "117 operations, 171 schemas checked" in line
    assert "served adds 1 operations, 1 schemas" in line


# ---------------------------------------------------------------------------
# breaking changes: (mutation of the served copy, expected location, words)


def _del_path(d: dict) -> None:
    del d["paths"]["/api"]


def _del_method(d: dict) -> None:
    del d["paths"][LOGIN]["post"]


def _rename_operation_id(d: dict) -> None:
    d["paths"]["/api"]["get"]["operationId"] = "healthCheck"


def _drop_operation_id(d: dict) -> None:
    del d["paths"]["/api"]["get"]["operationId"]


def _del_param(d: dict) -> None:
    op = d["paths"][GATHERINGS]["get"]
    op["parameters"] = [p for p in op["parameters"] if p["name"] != "status"]


def _param_required(d: dict) -> None:
    _param(d, GATHERINGS, "get", "limit")["required"] = True


def _param_moved(d: dict) -> None:
    _param(d, GATHERINGS, "get", "limit")["in"] = "header"


def _new_required_param(d: dict) -> None:
    d["paths"][GATHERINGS]["get"]["parameters"].append(
        {"name": "region", "in": "query", "required": True, "schema": {"type": "string"}}
    )


def _param_enum_narrowed(d: dict) -> None:
    _param(d, GATHERINGS, "get", "status")["schema"]["enum"].remove("expired")


def _del_request_body(d: dict) -> None:
    del d["paths"][LOGIN]["post"]["requestBody"]


def _del_request_media(d: dict) -> None:
    content = d["paths"][LOGIN]["post"]["requestBody"]["content"]
    content["application/x-www-form-urlencoded"] = content.pop("application/json")


def _del_response_media(d: dict) -> None:
    content = d["paths"][LOGIN]["post"]["responses"]["201"]["content"]
    content["text/plain"] = content.pop("application/json")


def _del_response_code(d: dict) -> None:
    del d["paths"][LOGIN]["post"]["responses"]["401"]


def _del_schema(d: dict) -> None:
    del d["components"]["schemas"]["SessionResponse"]


def _del_property(d: dict) -> None:
    schema = d["components"]["schemas"]["SessionResponse"]
    del schema["properties"]["idleTimeout"]


def _unrequire_property(d: dict) -> None:
    d["components"]["schemas"]["SessionResponse"]["required"].remove("createdAt")


def _narrow_number(d: dict) -> None:
    _props(d, "CreateGatheringRequest")["maxMembers"]["type"] = "integer"


def _narrow_string(d: dict) -> None:
    _props(d, "SessionResponse")["title"]["type"] = "object"


def _enum_value_removed(d: dict) -> None:
    _props(d, "CreateGatheringRequest")["accessPolicy"]["enum"].remove("invite-only")


def _enum_added(d: dict) -> None:
    _props(d, "SessionResponse")["status"]["enum"] = ["active", "ended"]


def _new_required_request_property(d: dict) -> None:
    schema = d["components"]["schemas"]["CreateGatheringRequest"]
    schema["properties"]["region"] = {"type": "string"}
    schema["required"] = [*schema.get("required", []), "region"]


def _format_added(d: dict) -> None:
    _props(d, "CreateGatheringRequest")["startsAt"]["format"] = "date-time"


def _format_changed(d: dict) -> None:
    _props(d, "SessionResponse")["createdAt"]["format"] = "date"


def _max_length_added(d: dict) -> None:
    _props(d, "LoginRequest")["fusionSessionId"]["maxLength"] = 64


def _min_length_tightened(d: dict) -> None:
    _props(d, "LoginCredentials")["password"]["minLength"] = 12


def _maximum_tightened(d: dict) -> None:
    _props(d, "CreateGatheringRequest")["maxMembers"]["maximum"] = 50


def _pattern_added(d: dict) -> None:
    _props(d, "LoginRequest")["fusionSessionId"]["pattern"] = "^fsid_"


def _nullable_removed(d: dict) -> None:
    for schema in d["components"]["schemas"].values():
        for prop in schema["properties"].values():
            prop.pop("nullable", None)


BREAKING = [
    pytest.param(_del_path, "paths./api:", ("path removed",), id="removed-path"),
    pytest.param(_del_method, f"paths.{LOGIN}.post", ("operation removed",), id="removed-method"),
    pytest.param(
        _rename_operation_id, "paths./api.get", ("operationId", "healthCheck"), id="renamed-operationId"
    ),
    pytest.param(_drop_operation_id, "paths./api.get", ("operationId",), id="removed-operationId"),
    pytest.param(
        _del_param, f"paths.{GATHERINGS}.get.parameters[query:status]", ("removed",), id="removed-param"
    ),
    pytest.param(
        _param_required,
        f"paths.{GATHERINGS}.get.parameters[query:limit]",
        ("required",),
        id="param-made-required",
    ),
    pytest.param(
        _param_moved, f"paths.{GATHERINGS}.get.parameters[query:limit]", ("header",), id="param-in-changed"
    ),
    pytest.param(
        _new_required_param,
        f"paths.{GATHERINGS}.get.parameters[query:region]",
        ("new required",),
        id="new-required-param",
    ),
    pytest.param(
        _param_enum_narrowed,
        f"paths.{GATHERINGS}.get.parameters[query:status].schema",
        ("expired",),
        id="param-enum-narrowed",
    ),
    pytest.param(
        _del_request_body,
        f"paths.{LOGIN}.post.requestBody",
        ("requestBody removed",),
        id="removed-requestBody",
    ),
    pytest.param(
        _del_request_media,
        f"paths.{LOGIN}.post.requestBody.content.application/json",
        ("media type removed",),
        id="removed-request-media-type",
    ),
    pytest.param(
        _del_response_media,
        f"paths.{LOGIN}.post.responses.201.content.application/json",
        ("media type removed",),
        id="removed-response-media-type",
    ),
    pytest.param(
        _del_response_code,
        f"paths.{LOGIN}.post.responses.401",
        ("response removed",),
        id="removed-response-code",
    ),
    pytest.param(
        _del_schema, f"{SCHEMA}.SessionResponse:", ("schema removed",), id="removed-component-schema"
    ),
    pytest.param(
        _del_property,
        f"{SCHEMA}.SessionResponse.properties.idleTimeout",
        ("property removed",),
        id="removed-property",
    ),
    pytest.param(
        _unrequire_property,
        f"{SCHEMA}.SessionResponse",
        ("createdAt", "no longer required"),
        id="removed-required",
    ),
    pytest.param(
        _narrow_number,
        f"{SCHEMA}.CreateGatheringRequest.properties.maxMembers",
        ("number -> integer",),
        id="narrowed-number-to-integer",
    ),
    pytest.param(
        _narrow_string,
        f"{SCHEMA}.SessionResponse.properties.title",
        ("string -> object",),
        id="narrowed-string-type",
    ),
    pytest.param(
        _enum_value_removed,
        f"{SCHEMA}.CreateGatheringRequest.properties.accessPolicy",
        ("invite-only",),
        id="enum-value-removed",
    ),
    pytest.param(
        _enum_added, f"{SCHEMA}.SessionResponse.properties.status", ("enum added",), id="enum-added"
    ),
    pytest.param(
        _new_required_request_property,
        f"{SCHEMA}.CreateGatheringRequest",
        ("new required property", "region"),
        id="new-required-request-property",
    ),
    pytest.param(
        _format_added,
        f"{SCHEMA}.CreateGatheringRequest.properties.startsAt",
        ("format added",),
        id="format-added",
    ),
    pytest.param(
        _format_changed,
        f"{SCHEMA}.SessionResponse.properties.createdAt",
        ("format changed",),
        id="format-changed",
    ),
    pytest.param(
        _max_length_added,
        f"{SCHEMA}.LoginRequest.properties.fusionSessionId",
        ("maxLength",),
        id="maxLength-added",
    ),
    pytest.param(
        _min_length_tightened,
        f"{SCHEMA}.LoginCredentials.properties.password",
        ("minLength",),
        id="minLength-tightened",
    ),
    pytest.param(
        _maximum_tightened,
        f"{SCHEMA}.CreateGatheringRequest.properties.maxMembers",
        ("maximum",),
        id="maximum-tightened",
    ),
    pytest.param(
        _pattern_added, f"{SCHEMA}.LoginRequest.properties.fusionSessionId", ("pattern",), id="pattern-added"
    ),
    pytest.param(_nullable_removed, f"{SCHEMA}.", ("nullable removed",), id="nullable-removed"),
]


@pytest.mark.parametrize(("mutate", "location", "words"), BREAKING)
def test_breaking_change_is_reported(upstream: dict, mutate, location: str, words: tuple[str, ...]) -> None:
    served = copy.deepcopy(upstream)
    mutate(served)
    _assert_reported(spec_compat.check(upstream, served), location, *words)


def test_new_required_request_property_names_the_operation(upstream: dict) -> None:
    served = copy.deepcopy(upstream)
    _new_required_request_property(served)
    problems = spec_compat.check(upstream, served)
    _assert_reported(problems, f"{SCHEMA}.CreateGatheringRequest", "region", f"paths.{GATHERINGS}.post")


def test_new_required_property_in_response_only_schema_is_allowed(upstream: dict) -> None:
    served = copy.deepcopy(upstream)
    schema = served["components"]["schemas"]["SessionResponse"]
    schema["properties"]["region"] = {"type": "string"}
    schema["required"].append("region")
    assert spec_compat.check(upstream, served) == []


def test_request_body_becoming_required_is_reported(upstream: dict) -> None:
    up = copy.deepcopy(upstream)
    up["paths"][LOGIN]["post"]["requestBody"]["required"] = False
    served = copy.deepcopy(upstream)
    _assert_reported(spec_compat.check(up, served), f"paths.{LOGIN}.post.requestBody", "became required")


def test_inline_request_schema_new_required_property(upstream: dict) -> None:
    path = "/api/plugins/annotations/messages/batch"
    served = copy.deepcopy(upstream)
    schema = served["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema["required"] = ["messageIds"]
    _assert_reported(
        spec_compat.check(upstream, served),
        f"paths.{path}.post.requestBody.content.application/json.schema",
        "new required property",
    )


# ---------------------------------------------------------------------------
# allowed additions / widenings


def _add_path(d: dict) -> None:
    d["paths"]["/api/v2/health"] = {
        "get": {"operationId": "healthV2", "responses": {"200": {"description": "ok"}}},
        "x-internal": True,
    }


def _add_method(d: dict) -> None:
    d["paths"]["/api"]["head"] = {"operationId": "headData", "responses": {"200": {"description": "ok"}}}


def _add_optional_property(d: dict) -> None:
    _props(d, "CreateGatheringRequest")["region"] = {"type": "string", "description": "new"}


def _add_extension(d: dict) -> None:
    d["paths"][LOGIN]["post"]["x-cortex-handler"] = "handlers.auth.login"
    d["paths"][LOGIN]["x-note"] = {"anything": 1}
    d["x-generator"] = "cortex"
    d["components"]["schemas"]["LoginRequest"]["x-model"] = "LoginRequest"


def _add_404_problem(d: dict) -> None:
    d["components"]["schemas"]["Problem"] = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
        },
        "required": ["title", "status"],
    }
    d["components"]["responses"] = {
        "NotFound": {
            "description": "Not found",
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    }
    d["paths"][LOGIN]["post"]["responses"]["404"] = {"$ref": "#/components/responses/NotFound"}


def _add_optional_param(d: dict) -> None:
    d["paths"][GATHERINGS]["get"]["parameters"].append(
        {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}}
    )


def _add_nullable(d: dict) -> None:
    _props(d, "SessionResponse")["idleTimeout"]["nullable"] = True


def _add_media_type(d: dict) -> None:
    resp = d["paths"][LOGIN]["post"]["responses"]["201"]
    resp["content"]["application/xml"] = {"schema": {"type": "string"}}


def _widen_enum_and_drop_constraints(d: dict) -> None:
    _props(d, "CreateGatheringRequest")["accessPolicy"]["enum"].append("friends-only")
    del _props(d, "CreateGatheringRequest")["maxMembers"]["maximum"]
    del _props(d, "LoginCredentials")["password"]["minLength"]
    del _props(d, "SessionResponse")["createdAt"]["format"]


def _change_docs_and_examples(d: dict) -> None:
    d["info"]["description"] = "Served by Cortex"
    _props(d, "LoginRequest")["fusionSessionId"]["example"] = "fsid_other"
    _props(d, "LoginRequest")["fusionSessionId"]["description"] = "changed text"


def _wrap_ref_in_nullable_allof(d: dict) -> None:
    # upstream: {"$ref": X}  ->  served: {"allOf": [{"$ref": X}], "nullable": true}
    content = d["paths"][LOGIN]["post"]["responses"]["201"]["content"]["application/json"]
    content["schema"] = {"allOf": [content["schema"]], "nullable": True, "description": "wrapped"}


def _add_path_param_type(d: dict) -> None:
    # upstream path params with an empty schema {} may be served as {"type": "string"}
    _param(d, f"{GATHERINGS}/join", "post", "projectId")["schema"] = {"type": "string"}


ALLOWED = [
    pytest.param(_add_path, id="new-path"),
    pytest.param(_add_method, id="new-method"),
    pytest.param(_add_optional_property, id="new-optional-property"),
    pytest.param(_add_extension, id="x-extensions"),
    pytest.param(_add_404_problem, id="new-404-with-problem-schema"),
    pytest.param(_add_optional_param, id="new-optional-param"),
    pytest.param(_add_nullable, id="nullable-added"),
    pytest.param(_add_media_type, id="new-media-type"),
    pytest.param(_widen_enum_and_drop_constraints, id="widened-enum-and-constraints"),
    pytest.param(_change_docs_and_examples, id="descriptions-examples"),
    pytest.param(_wrap_ref_in_nullable_allof, id="ref-wrapped-in-allOf"),
    pytest.param(_add_path_param_type, id="path-param-typed-string"),
]


@pytest.mark.parametrize("mutate", ALLOWED)
def test_allowed_change_reports_nothing(upstream: dict, mutate) -> None:
    served = copy.deepcopy(upstream)
    mutate(served)
    assert spec_compat.check(upstream, served) == []


def test_widening_integer_to_number_is_allowed(upstream: dict) -> None:
    up = copy.deepcopy(upstream)
    _props(up, "CreateGatheringRequest")["maxMembers"]["type"] = "integer"
    served = copy.deepcopy(upstream)  # still "number"
    assert spec_compat.check(up, served) == []
    # ... but the reverse direction is a narrowing
    _assert_reported(
        spec_compat.check(served, up), f"{SCHEMA}.CreateGatheringRequest.properties.maxMembers", "narrowed"
    )


# ---------------------------------------------------------------------------
# $ref following and recursion


def _doc(schemas: dict, body_ref: str = "Node") -> dict:
    return {
        "openapi": "3.0.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/nodes": {
                "post": {
                    "operationId": "createNode",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": f"#/components/schemas/{body_ref}"}}
                        },
                    },
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
        "components": {"schemas": schemas},
    }


def _tree(name: str, value_type: str = "string") -> dict:
    return {
        name: {
            "type": "object",
            "properties": {
                "value": {"type": value_type},
                "children": {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}},
                "parent": {"allOf": [{"$ref": f"#/components/schemas/{name}"}], "nullable": True},
            },
            "required": ["value"],
        }
    }


def test_recursive_schemas_terminate_and_compare() -> None:
    up = _doc(_tree("Node"))
    assert spec_compat.check(up, copy.deepcopy(up)) == []
    served = _doc(_tree("Node", value_type="boolean"))
    _assert_reported(spec_compat.check(up, served), f"{SCHEMA}.Node.properties.value", "string -> boolean")


def test_renamed_ref_targets_are_followed_without_looping() -> None:
    up = _doc(_tree("Node"))
    served = _doc({**_tree("Node"), **_tree("TreeNode", value_type="integer")}, body_ref="TreeNode")
    problems = spec_compat.check(up, served)
    _assert_reported(
        problems, "paths./nodes.post.requestBody.content.application/json.schema", "string -> integer"
    )


def test_unresolvable_served_ref_is_reported() -> None:
    up = _doc(_tree("Node"))
    served = _doc(_tree("Node"), body_ref="Missing")
    _assert_reported(spec_compat.check(up, served), "paths./nodes.post.requestBody", "does not resolve")


def test_additional_properties_schema_is_compared() -> None:
    up = _doc({"Node": {"type": "object", "additionalProperties": {"type": "number"}}})
    served = _doc({"Node": {"type": "object", "additionalProperties": {"type": "integer"}}})
    _assert_reported(
        spec_compat.check(up, served), f"{SCHEMA}.Node.additionalProperties", "number -> integer"
    )


def test_one_of_is_compared_by_index() -> None:
    union = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    up = _doc({"Node": {"type": "object", "properties": {"v": union}}})
    served = _doc({"Node": {"type": "object", "properties": {"v": {"oneOf": [{"type": "string"}]}}}})
    _assert_reported(spec_compat.check(up, served), f"{SCHEMA}.Node.properties.v.oneOf[1]", "removed")


# ---------------------------------------------------------------------------
# command line


def test_cli_exit_codes(upstream: dict, tmp_path: Path) -> None:
    up_file = tmp_path / "upstream.json"
    ok_file = tmp_path / "served-ok.json"
    bad_file = tmp_path / "served-bad.json"
    up_file.write_text(json.dumps(upstream), encoding="utf-8")
    ok = copy.deepcopy(upstream)
    _add_path(ok)
    ok_file.write_text(json.dumps(ok), encoding="utf-8")
    bad = copy.deepcopy(upstream)
    _del_method(bad)
    _del_property(bad)
    bad_file.write_text(json.dumps(bad), encoding="utf-8")

    def run(served: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(TOOL_PATH), "--upstream", str(up_file), "--served", str(served)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )

    good = run(ok_file)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.strip().splitlines() == [
        "spec_compat: OK — 117 operations, 171 schemas checked; served adds 1 operations, 0 schemas"
    ]

    broken = run(bad_file)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    lines = broken.stdout.strip().splitlines()
    assert f"paths.{LOGIN}.post: operation removed" in lines
    assert f"{SCHEMA}.SessionResponse.properties.idleTimeout: property removed" in lines

    missing = run(tmp_path / "nope.json")
    assert missing.returncode == 2


# ---------------------------------------------------------------------------
# documented narrowings (CHANGES.md)

NARROWED = f"{SCHEMA}.CreateApiKey.properties.scopes.items"
CHANGES = """# Changes

## Added by hand
| change | why |
| --- | --- |
| `x` | `not a narrowing table` |

## Documented narrowings
| location | problem | reason |
| --- | --- | --- |
{rows}
## Later section
| `ignored` | `row` | here |
"""


def _narrow_scopes(doc: dict) -> dict:
    doc["components"]["schemas"]["CreateApiKey"]["properties"]["scopes"]["items"]["enum"] = ["a:read", "b:write"]
    return doc


def test_documented_narrowings_are_read_from_their_section_only() -> None:
    text = CHANGES.format(rows=f"| `{NARROWED}` | `enum added (was unrestricted)` | the closed scope catalogue |\n")
    assert spec_compat.documented_narrowings(text) == {
        f"{NARROWED}: enum added (was unrestricted)": "the closed scope catalogue"}


def test_a_recorded_narrowing_with_a_reason_is_accepted(upstream: dict) -> None:
    problems = spec_compat.check(upstream, _narrow_scopes(copy.deepcopy(upstream)))
    assert problems == [f"{NARROWED}: enum added (was unrestricted)"]
    recorded = {problems[0]: "the closed scope catalogue"}
    assert spec_compat.apply_narrowings(problems, recorded) == ([], problems)
    remaining, accepted = spec_compat.apply_narrowings(problems, {problems[0]: ""})  # no reason: not accepted
    assert remaining == problems and accepted == []


def test_only_narrowings_can_be_recorded_and_stale_rows_are_problems(upstream: dict) -> None:
    served = copy.deepcopy(upstream)
    del served["paths"][LOGIN]
    problems = spec_compat.check(upstream, served)
    removal = next(p for p in problems if p.startswith(f"paths.{LOGIN}"))
    remaining, accepted = spec_compat.apply_narrowings(problems, {removal: "we meant it"})
    assert removal in remaining and accepted == []
    stale = f"{NARROWED}: enum added (was unrestricted)"
    remaining, _ = spec_compat.apply_narrowings([], {stale: "once true"})
    assert len(remaining) == 1 and remaining[0].startswith(stale) and "no longer narrows" in remaining[0]


def test_cli_reads_the_changes_beside_the_served_document(upstream: dict, tmp_path: Path) -> None:
    (tmp_path / "upstream.json").write_text(json.dumps(upstream), encoding="utf-8")
    served = tmp_path / "served" / "cortex.json"
    served.parent.mkdir()
    served.write_text(json.dumps(_narrow_scopes(copy.deepcopy(upstream))), encoding="utf-8")

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(TOOL_PATH), "--upstream", str(tmp_path / "upstream.json"),
                               "--served", str(served)], capture_output=True, text=True, timeout=60)

    assert run().returncode == 1  # no CHANGES.md: the narrowing is a problem
    row = f"| `{NARROWED}` | `enum added (was unrestricted)` | the closed scope catalogue |\n"
    (served.parent / "CHANGES.md").write_text(CHANGES.format(rows=row), encoding="utf-8")
    done = run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("; 1 documented narrowing(s) accepted (CHANGES.md)")


def test_the_served_document_passes_with_its_changes() -> None:
    done = subprocess.run([sys.executable, str(TOOL_PATH)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
