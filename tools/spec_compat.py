#!/usr/bin/env python3
"""Check that a served OpenAPI 3.0 document is a backwards-compatible superset of an upstream one.

Usage::

    python tools/spec_compat.py [--upstream PATH] [--served PATH]

Defaults are ``openapi/upstream/odin-cortex-1.0.json`` (upstream) and
``openapi/cortex.json`` (served), both relative to the repository root (the
parent of the ``tools/`` directory), so the script works from any cwd.

Everything the upstream contract promises must still be promised by the served
document: paths, methods, operationIds, parameters, request bodies, media
types, response codes, component schemas, properties, ``required`` lists and
value constraints (type, enum, format, lengths, bounds, pattern).  Additions are
allowed (new paths, methods, responses, optional parameters, optional
properties, components, ``x-`` extensions, descriptions, examples); so is
widening (``integer`` -> ``number``, adding ``nullable: true``, dropping a
constraint).  A new required property or parameter on the request side is
reported, because it breaks existing clients.

A narrowing of a value constraint (type, enum, format, bound, pattern) is
accepted only when the ``CHANGES.md`` beside the served document records it,
with its reason, in the table under the heading ``## Documented narrowings``: one row per problem,
``| `location` | `problem as printed` | reason |``.  A recorded row that no
longer matches a problem is an error too (the list stays true).

Exit status: 0 when compatible (one summary line is printed), 1 when problems
were found (one ``location: problem`` line each), 2 when an input file cannot
be read.  Only the standard library is used.  ``check(upstream, served)``
returns the problem strings for programmatic use.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_UPSTREAM = REPO_ROOT / "openapi" / "upstream" / "odin-cortex-1.0.json"
DEFAULT_SERVED = REPO_ROOT / "openapi" / "cortex.json"
NARROWINGS_HEADING = "## Documented narrowings"
# Problems that narrow a value constraint: the only kind a documented narrowing may accept.
_NARROWING_MESSAGES = ("type narrowed", "enum added", "enum narrowed", "format added", "format changed",
                       "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems", "minProperties",
                       "maxProperties", "exclusiveMinimum", "exclusiveMaximum", "pattern", "uniqueItems",
                       "multipleOf")

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Schema keywords whose presence makes a schema more than "anything goes".
_STRUCTURAL_KEYS = (
    "type",
    "properties",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "enum",
    "additionalProperties",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "multipleOf",
    "uniqueItems",
)
# Lower bounds: adding one, or raising it, narrows the accepted values.
_LOWER_BOUNDS = ("minLength", "minimum", "minItems", "minProperties")
# Upper bounds: adding one, or lowering it, narrows the accepted values.
_UPPER_BOUNDS = ("maxLength", "maximum", "maxItems", "maxProperties")
_MAX_REF_DEPTH = 64
_COMPONENT_LABELS = {
    "schemas": "schema",
    "responses": "response",
    "parameters": "parameter",
    "examples": "example",
    "requestBodies": "requestBody",
    "headers": "header",
    "securitySchemes": "securityScheme",
    "links": "link",
    "callbacks": "callback",
}


def load_json(path: Path | str) -> dict:
    """Read and parse a JSON document from ``path``."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def resolve_pointer(doc: Any, ref: str) -> Any:
    """Resolve a local ``#/a/b`` reference inside ``doc``; return None when it does not resolve."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node = doc
    for raw in ref[1:].split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def ref_location(ref: str) -> str:
    """Turn ``#/components/schemas/X`` into the dotted location ``components.schemas.X``."""
    return ".".join(p.replace("~1", "/").replace("~0", "~") for p in ref.lstrip("#").split("/") if p)


def iter_operations(doc: dict) -> Iterator[tuple[str, str, dict]]:
    """Yield ``(path, method, operation)`` for every operation in ``doc``."""
    for path, item in (doc.get("paths") or {}).items():
        if path.startswith("x-") or not isinstance(item, dict):
            continue
        item = _deref(doc, item)
        for method in HTTP_METHODS:
            op = item.get(method)
            if isinstance(op, dict):
                yield path, method, op


def _deref(doc: dict, obj: Any) -> Any:
    """Follow a chain of ``$ref`` objects (parameters, responses, ...) to the target."""
    for _ in range(_MAX_REF_DEPTH):
        if not (isinstance(obj, dict) and isinstance(obj.get("$ref"), str)):
            return obj
        target = resolve_pointer(doc, obj["$ref"])
        if target is None:
            return obj
        obj = target
    return obj


def _types(schema: dict) -> set[str] | None:
    """Return the schema's declared types as a set, or None when it declares none."""
    t = schema.get("type")
    if t is None:
        return None
    return set(t) if isinstance(t, list) else {t}


def _type_covered(up_type: str, served_types: set[str]) -> bool:
    """True when values of ``up_type`` are still accepted by ``served_types`` (integer ⊂ number)."""
    return up_type in served_types or (up_type == "integer" and "number" in served_types)


def _fmt_types(types: set[str] | None) -> str:
    """Render a type set for messages."""
    if not types:
        return "any"
    return "|".join(sorted(types))


def _is_unconstrained(schema: dict) -> bool:
    """True when the schema accepts anything (no structural keywords, no $ref)."""
    return "$ref" not in schema and not any(k in schema for k in _STRUCTURAL_KEYS)


class _Checker:
    """Collects compatibility problems between an upstream and a served document."""

    def __init__(self, upstream: dict, served: dict) -> None:
        """Hold both documents plus the problem list and the visited $ref pairs."""
        self.up = upstream
        self.sv = served
        self.problems: list[str] = []
        self._seen: set[str] = set()
        self._visited: set[tuple[Any, ...]] = set()

    # -- reporting -------------------------------------------------------
    def report(self, loc: str, message: str) -> None:
        """Record one problem (duplicates are dropped)."""
        line = f"{loc}: {message}"
        if line not in self._seen:
            self._seen.add(line)
            self.problems.append(line)

    # -- top level -------------------------------------------------------
    def run(self) -> list[str]:
        """Run every check and return the problem list."""
        self.check_paths()
        self.check_components()
        return self.problems

    def check_components(self) -> None:
        """Every upstream component must survive; schemas are compared structurally."""
        up_comp = self.up.get("components") or {}
        sv_comp = self.sv.get("components") or {}
        for section, entries in up_comp.items():
            if section.startswith("x-") or not isinstance(entries, dict):
                continue
            sv_entries = sv_comp.get(section) or {}
            for name in entries:
                if name.startswith("x-"):
                    continue
                loc = f"components.{section}.{name}"
                if name not in sv_entries:
                    self.report(loc, f"{_COMPONENT_LABELS.get(section, section)} removed")
                elif section == "schemas":
                    ref = f"#/components/schemas/{name.replace('~', '~0').replace('/', '~1')}"
                    self.compare_schema({"$ref": ref}, {"$ref": ref}, loc, "component", loc)
                elif section == "securitySchemes":
                    self.compare_security_scheme(entries[name], sv_entries[name], loc)

    def compare_security_scheme(self, up: Any, sv: Any, loc: str) -> None:
        """A security scheme must keep its type, scheme, location and header name."""
        up, sv = _deref(self.up, up), _deref(self.sv, sv)
        if not (isinstance(up, dict) and isinstance(sv, dict)):
            return
        for key in ("type", "scheme", "in", "name"):
            if key in up and str(up[key]).lower() != str(sv.get(key, "")).lower():
                self.report(loc, f"{key} changed: {up[key]!r} -> {sv.get(key)!r}")

    def check_paths(self) -> None:
        """Every upstream path and method must still exist and stay compatible."""
        sv_paths = self.sv.get("paths") or {}
        for path, up_item in (self.up.get("paths") or {}).items():
            if path.startswith("x-") or not isinstance(up_item, dict):
                continue
            loc = f"paths.{path}"
            if path not in sv_paths:
                self.report(loc, "path removed")
                continue
            up_item = _deref(self.up, up_item)
            sv_item = _deref(self.sv, sv_paths[path]) or {}
            for method in HTTP_METHODS:
                up_op = up_item.get(method)
                if not isinstance(up_op, dict):
                    continue
                sv_op = sv_item.get(method)
                if not isinstance(sv_op, dict):
                    self.report(f"{loc}.{method}", "operation removed")
                    continue
                self.compare_operation(up_item, up_op, sv_item, sv_op, f"{loc}.{method}")

    # -- operations ------------------------------------------------------
    def compare_operation(self, up_item: dict, up_op: dict, sv_item: dict, sv_op: dict, loc: str) -> None:
        """Compare one operation: operationId, parameters, request body, responses."""
        up_id, sv_id = up_op.get("operationId"), sv_op.get("operationId")
        if up_id is not None and sv_id != up_id:
            if sv_id is None:
                self.report(loc, f"operationId {up_id!r} removed")
            else:
                self.report(loc, f"operationId changed: {up_id!r} -> {sv_id!r}")
        self.compare_parameters(
            self.effective_parameters(self.up, up_item, up_op),
            self.effective_parameters(self.sv, sv_item, sv_op),
            loc,
        )
        self.compare_request_body(up_op.get("requestBody"), sv_op.get("requestBody"), f"{loc}.requestBody")
        self.compare_responses(up_op.get("responses") or {}, sv_op.get("responses") or {}, f"{loc}.responses")

    @staticmethod
    def effective_parameters(doc: dict, item: dict, op: dict) -> dict[tuple[str, str], dict]:
        """Merge path-level and operation-level parameters keyed by (name, in)."""
        params: dict[tuple[str, str], dict] = {}
        for source in (item.get("parameters") or [], op.get("parameters") or []):
            for raw in source:
                p = _deref(doc, raw)
                if not isinstance(p, dict) or "name" not in p:
                    continue
                where = str(p.get("in", ""))
                name = str(p["name"])
                key = (name.lower() if where == "header" else name, where)
                params[key] = p
        return params

    def compare_parameters(self, up: dict, sv: dict, loc: str) -> None:
        """Parameters may not disappear, move, become required, or be added as required."""
        for (name, where), up_p in up.items():
            ploc = f"{loc}.parameters[{where}:{up_p['name']}]"
            sv_p = sv.get((name, where))
            if sv_p is None:
                moved = [w for (n, w) in sv if n.lower() == name.lower() and w != where]
                if moved:
                    self.report(ploc, f"parameter 'in' changed: {where} -> {moved[0]}")
                else:
                    self.report(ploc, "parameter removed")
                continue
            if not _param_required(up_p) and _param_required(sv_p):
                self.report(ploc, "parameter became required")
            if isinstance(up_p.get("schema"), dict) and isinstance(sv_p.get("schema"), dict):
                self.compare_schema(up_p["schema"], sv_p["schema"], f"{ploc}.schema", "parameter", ploc)
            if isinstance(up_p.get("content"), dict):
                self.compare_content(
                    up_p["content"], sv_p.get("content") or {}, f"{ploc}.content", "parameter"
                )
        for (name, where), sv_p in sv.items():
            if (name, where) not in up and _param_required(sv_p):
                moved_from = any(n.lower() == name.lower() for (n, _w) in up)
                if not moved_from:
                    self.report(f"{loc}.parameters[{where}:{sv_p['name']}]", "new required parameter")

    def compare_request_body(self, up: Any, sv: Any, loc: str) -> None:
        """A request body may not be removed or become required; its media types must survive."""
        up, sv = _deref(self.up, up), _deref(self.sv, sv)
        if not isinstance(up, dict):
            if isinstance(sv, dict) and sv.get("required"):
                self.report(loc, "new required requestBody")
            return
        if not isinstance(sv, dict):
            self.report(loc, "requestBody removed")
            return
        if not up.get("required") and sv.get("required"):
            self.report(loc, "requestBody became required")
        self.compare_content(up.get("content") or {}, sv.get("content") or {}, f"{loc}.content", "request")

    def compare_responses(self, up: dict, sv: dict, loc: str) -> None:
        """Every upstream response code, media type, header and schema must survive."""
        sv_codes = {str(k).upper(): v for k, v in sv.items()}
        for code, up_resp in up.items():
            code = str(code)
            if code.startswith("x-"):
                continue
            rloc = f"{loc}.{code}"
            if code.upper() not in sv_codes:
                self.report(rloc, "response removed")
                continue
            up_r, sv_r = _deref(self.up, up_resp), _deref(self.sv, sv_codes[code.upper()])
            if not (isinstance(up_r, dict) and isinstance(sv_r, dict)):
                continue
            self.compare_content(
                up_r.get("content") or {}, sv_r.get("content") or {}, f"{rloc}.content", "response"
            )
            sv_headers = {str(k).lower() for k in (sv_r.get("headers") or {})}
            for header in up_r.get("headers") or {}:
                if str(header).lower() not in sv_headers:
                    self.report(f"{rloc}.headers.{header}", "response header removed")

    def compare_content(self, up: dict, sv: dict, loc: str, ctx: str) -> None:
        """Every upstream media type must be kept; schemas are compared in ``ctx``."""
        for media, up_mt in up.items():
            mloc = f"{loc}.{media}"
            if media not in sv:
                self.report(mloc, "media type removed")
                continue
            up_s = up_mt.get("schema") if isinstance(up_mt, dict) else None
            sv_mt = sv[media]
            sv_s = sv_mt.get("schema") if isinstance(sv_mt, dict) else None
            if isinstance(up_s, dict):
                if isinstance(sv_s, dict):
                    self.compare_schema(up_s, sv_s, f"{mloc}.schema", ctx, mloc)
                elif not _is_unconstrained(up_s):
                    self.report(f"{mloc}.schema", "schema removed")

    # -- schemas ---------------------------------------------------------
    def resolve_schema(self, doc: dict, schema: Any) -> tuple[Any, str | None, bool, bool]:
        """Follow $refs and single-element ``allOf`` wrappers.

        Returns ``(schema, first_ref, extra_nullable, broken_ref)``.
        """
        first_ref: str | None = None
        nullable = False
        for _ in range(_MAX_REF_DEPTH):
            if not isinstance(schema, dict):
                break
            ref = schema.get("$ref")
            if isinstance(ref, str):
                target = resolve_pointer(doc, ref)
                if first_ref is None:
                    first_ref = ref
                if target is None:
                    return None, first_ref, nullable, True
                schema = target
                continue
            all_of = schema.get("allOf")
            if (
                isinstance(all_of, list)
                and len(all_of) == 1
                and not any(k in schema for k in _STRUCTURAL_KEYS if k != "allOf")
            ):
                nullable = nullable or bool(schema.get("nullable"))
                schema = all_of[0]
                continue
            break
        return schema, first_ref, nullable, False

    def flatten_all_of(self, doc: dict, schema: dict) -> dict:
        """Merge the members of a multi-element ``allOf`` into one flat schema view."""
        merged: dict = {k: v for k, v in schema.items() if k != "allOf"}
        props: dict = dict(merged.get("properties") or {})
        required: list = list(merged.get("required") or [])
        for member in schema.get("allOf") or []:
            m, _ref, _n, _b = self.resolve_schema(doc, member)
            if not isinstance(m, dict):
                continue
            if "allOf" in m:
                m = self.flatten_all_of(doc, m)
            for name, sub in (m.get("properties") or {}).items():
                props.setdefault(name, sub)
            required.extend(r for r in m.get("required") or [] if r not in required)
            for key, value in m.items():
                if key not in ("properties", "required"):
                    merged.setdefault(key, value)
        if props:
            merged["properties"] = props
        if required:
            merged["required"] = required
        return merged

    def compare_schema(self, up: Any, sv: Any, loc: str, ctx: str, via: str) -> None:
        """Check that schema ``sv`` accepts/promises everything ``up`` does (recursive, cycle-safe)."""
        up_s, up_ref, up_null, up_broken = self.resolve_schema(self.up, up)
        sv_s, sv_ref, sv_null, sv_broken = self.resolve_schema(self.sv, sv)
        if up_broken or not isinstance(up_s, dict):
            return
        if sv_broken:
            self.report(loc, f"served $ref {sv_ref!r} does not resolve")
            return
        if not isinstance(sv_s, dict):
            return
        if up_ref is not None or sv_ref is not None:
            key = (up_ref, sv_ref, ctx)
            if key in self._visited:
                return
            self._visited.add(key)
            if up_ref is not None and up_ref == sv_ref:
                loc = ref_location(up_ref)

        up_has_all, sv_has_all = "allOf" in up_s, "allOf" in sv_s
        if up_has_all and not sv_has_all:
            up_s = self.flatten_all_of(self.up, up_s)
        elif sv_has_all and not up_has_all:
            sv_s = self.flatten_all_of(self.sv, sv_s)

        self.compare_type(up_s, sv_s, loc, ctx)
        if (up_s.get("nullable") or up_null) and not (sv_s.get("nullable") or sv_null):
            self.report(loc, "nullable removed")
        self.compare_enum(up_s, sv_s, loc)
        self.compare_format(up_s, sv_s, loc)
        self.compare_constraints(up_s, sv_s, loc)
        self.compare_properties(up_s, sv_s, loc, ctx, via)

        if isinstance(up_s.get("items"), dict) and isinstance(sv_s.get("items"), dict):
            self.compare_schema(up_s["items"], sv_s["items"], f"{loc}.items", ctx, via)
        self.compare_additional(up_s, sv_s, loc, ctx, via)
        for combo in ("allOf", "oneOf", "anyOf"):
            self.compare_combinator(combo, up_s, sv_s, loc, ctx, via)

    def compare_type(self, up: dict, sv: dict, loc: str, ctx: str) -> None:
        """Type may only widen (integer -> number) or be dropped; never narrow or change."""
        up_t, sv_t = _types(up), _types(sv)
        if sv_t is None:
            return
        if up_t is None:
            if _is_unconstrained(up) and not (ctx == "parameter" and sv_t <= {"string"}):
                self.report(loc, f"type narrowed: any -> {_fmt_types(sv_t)}")
            return
        if not all(_type_covered(t, sv_t) for t in up_t):
            self.report(loc, f"type narrowed: {_fmt_types(up_t)} -> {_fmt_types(sv_t)}")

    def compare_enum(self, up: dict, sv: dict, loc: str) -> None:
        """Every upstream enum value must remain; adding an enum where none existed narrows."""
        sv_enum = sv.get("enum")
        if not isinstance(sv_enum, list):
            return
        up_enum = up.get("enum")
        if not isinstance(up_enum, list):
            self.report(loc, "enum added (was unrestricted)")
            return
        missing = [v for v in up_enum if v not in sv_enum]
        if missing:
            self.report(loc, f"enum narrowed: missing {', '.join(json.dumps(v) for v in missing)}")

    def compare_format(self, up: dict, sv: dict, loc: str) -> None:
        """A string format may be dropped, but not added or changed."""
        sv_fmt = sv.get("format")
        if sv_fmt is None:
            return
        sv_t, up_t = _types(sv), _types(up)
        if not ((sv_t is None or "string" in sv_t) and (up_t is None or "string" in up_t)):
            return  # numeric formats (int32/int64/float/double) are not compared
        up_fmt = up.get("format")
        if up_fmt is None:
            self.report(loc, f"format added: {sv_fmt!r}")
        elif up_fmt != sv_fmt:
            self.report(loc, f"format changed: {up_fmt!r} -> {sv_fmt!r}")

    def compare_constraints(self, up: dict, sv: dict, loc: str) -> None:
        """Length, bound, item-count and pattern constraints may not be added or tightened."""
        for key in _LOWER_BOUNDS:
            if _is_number(sv.get(key)):
                if not _is_number(up.get(key)):
                    self.report(loc, f"{key} added: {sv[key]}")
                elif sv[key] > up[key]:
                    self.report(loc, f"{key} tightened: {up[key]} -> {sv[key]}")
        for key in _UPPER_BOUNDS:
            if _is_number(sv.get(key)):
                if not _is_number(up.get(key)):
                    self.report(loc, f"{key} added: {sv[key]}")
                elif sv[key] < up[key]:
                    self.report(loc, f"{key} tightened: {up[key]} -> {sv[key]}")
        for excl, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if sv.get(excl) is True and up.get(excl) is not True and sv.get(bound) == up.get(bound):
                self.report(loc, f"{excl} added")
        if "pattern" in sv:
            if "pattern" not in up:
                self.report(loc, f"pattern added: {sv['pattern']!r}")
            elif up["pattern"] != sv["pattern"]:
                self.report(loc, f"pattern changed: {up['pattern']!r} -> {sv['pattern']!r}")
        if sv.get("uniqueItems") is True and up.get("uniqueItems") is not True:
            self.report(loc, "uniqueItems added")
        if _is_number(sv.get("multipleOf")):
            up_mult = up.get("multipleOf")
            if not _is_number(up_mult) or (sv["multipleOf"] and up_mult % sv["multipleOf"]):
                self.report(loc, f"multipleOf added or tightened: {up_mult} -> {sv['multipleOf']}")

    def compare_properties(self, up: dict, sv: dict, loc: str, ctx: str, via: str) -> None:
        """Properties must survive, required stays required, requests get no new required fields."""
        up_props = up.get("properties") or {}
        sv_props = sv.get("properties") or {}
        for name, up_p in up_props.items():
            if name not in sv_props:
                self.report(f"{loc}.properties.{name}", "property removed")
                continue
            self.compare_schema(up_p, sv_props[name], f"{loc}.properties.{name}", ctx, via)
        up_req = [r for r in up.get("required") or [] if isinstance(r, str)]
        sv_req = [r for r in sv.get("required") or [] if isinstance(r, str)]
        for name in up_req:
            if name not in sv_req:
                self.report(loc, f"property {name!r} no longer required")
        if ctx == "request":
            for name in sv_req:
                if name not in up_req:
                    where = "" if via == loc else f" (used by {via})"
                    self.report(loc, f"new required property {name!r} in request schema{where}")

    def compare_additional(self, up: dict, sv: dict, loc: str, ctx: str, via: str) -> None:
        """``additionalProperties``: schemas are compared; an explicit allowance may not become false."""
        up_ap, sv_ap = up.get("additionalProperties"), sv.get("additionalProperties")
        aloc = f"{loc}.additionalProperties"
        if isinstance(up_ap, dict) and isinstance(sv_ap, dict):
            self.compare_schema(up_ap, sv_ap, aloc, ctx, via)
        elif (up_ap is True or isinstance(up_ap, dict)) and sv_ap is False:
            self.report(aloc, "additional properties no longer allowed")

    def compare_combinator(self, combo: str, up: dict, sv: dict, loc: str, ctx: str, via: str) -> None:
        """Compare ``allOf``/``oneOf``/``anyOf`` members by index; members may not disappear."""
        up_list = up.get(combo)
        if not isinstance(up_list, list):
            return
        sv_list = sv.get(combo)
        if not isinstance(sv_list, list):
            if combo == "allOf":
                return  # handled by flattening
            sv_t = _types(sv)
            if sv_t is None:
                return  # served accepts anything of any type here: widening
            for i, alt in enumerate(up_list):
                alt_s, _r, _n, _b = self.resolve_schema(self.up, alt)
                alt_t = _types(alt_s) if isinstance(alt_s, dict) else None
                if alt_t is None or not all(_type_covered(t, sv_t) for t in alt_t):
                    self.report(
                        f"{loc}.{combo}[{i}]", f"alternative dropped (served type {_fmt_types(sv_t)})"
                    )
            return
        for i, member in enumerate(up_list):
            if i >= len(sv_list):
                self.report(f"{loc}.{combo}[{i}]", f"{combo} member removed")
                continue
            self.compare_schema(member, sv_list[i], f"{loc}.{combo}[{i}]", ctx, via)


def _is_number(value: Any) -> bool:
    """True for int/float values (bools excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _param_required(param: dict) -> bool:
    """A parameter is required when it says so or lives in the path."""
    return bool(param.get("required")) or param.get("in") == "path"


def check(upstream: dict, served: dict) -> list[str]:
    """Return the list of backwards-compatibility problems of ``served`` relative to ``upstream``."""
    return _Checker(upstream, served).run()


def summarize(upstream: dict, served: dict) -> str:
    """Build the one-line OK summary with checked and added operation/schema counts."""
    up_ops = {(p, m) for p, m, _ in iter_operations(upstream)}
    sv_ops = {(p, m) for p, m, _ in iter_operations(served)}
    up_schemas = set((upstream.get("components") or {}).get("schemas") or {})
    sv_schemas = set((served.get("components") or {}).get("schemas") or {})
    return (
        f"spec_compat: OK — {len(up_ops)} operations, {len(up_schemas)} schemas checked; "
        f"served adds {len(sv_ops - up_ops)} operations, {len(sv_schemas - up_schemas)} schemas"
    )


def documented_narrowings(changes_text: str) -> dict[str, str]:
    """``{"location: problem": reason}`` from the table under ``## Documented narrowings`` of CHANGES.md."""
    found: dict[str, str] = {}
    in_section = False
    for line in changes_text.splitlines():
        if line.startswith("## "):
            in_section = line.strip() == NARROWINGS_HEADING
            continue
        if not in_section or not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue  # the header and separator rows
        location, problem, reason = cells[0].strip("`"), cells[1].strip("`"), " ".join(cells[2:]).strip()
        found[f"{location}: {problem}"] = reason
    return found


def apply_narrowings(problems: list[str], narrowings: dict[str, str]) -> tuple[list[str], list[str]]:
    """(remaining problems, accepted ones): a problem is accepted when it narrows a value constraint and is
    recorded with a non-empty reason; a recorded narrowing that matches no problem becomes a problem itself."""
    remaining, accepted = [], []
    for line in problems:
        message = line.split(": ", 1)[1] if ": " in line else line
        if line in narrowings and narrowings[line] and message.startswith(_NARROWING_MESSAGES):
            accepted.append(line)
        else:
            remaining.append(line)
    for recorded in narrowings:
        if recorded not in problems:
            remaining.append(f"{recorded} (recorded under '{NARROWINGS_HEADING}' in CHANGES.md, but the "
                             "document no longer narrows it: remove the row)")
    return remaining, accepted


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM, help="upstream OpenAPI JSON")
    parser.add_argument("--served", type=Path, default=DEFAULT_SERVED, help="served OpenAPI JSON")
    parser.add_argument("--changes", type=Path, help="the changelog whose 'Documented narrowings' table accepts "
                                                     "narrowings (default: CHANGES.md beside the served document)")
    args = parser.parse_args(argv)
    docs = []
    for label, path in (("upstream", args.upstream), ("served", args.served)):
        try:
            doc = load_json(path)
        except (OSError, ValueError) as exc:
            print(f"spec_compat: cannot read {label} document {path}: {exc}", file=sys.stderr)
            return 2
        if not isinstance(doc, dict):
            print(f"spec_compat: {label} document {path} is not a JSON object", file=sys.stderr)
            return 2
        docs.append(doc)
    upstream, served = docs
    changes = args.changes or args.served.parent / "CHANGES.md"
    try:
        narrowings = documented_narrowings(changes.read_text(encoding="utf-8"))
    except FileNotFoundError:
        narrowings = {}
    except OSError as exc:
        print(f"spec_compat: cannot read {changes}: {exc}", file=sys.stderr)
        return 2
    problems, accepted = apply_narrowings(check(upstream, served), narrowings)
    if problems:
        for line in problems:
            print(line)
        print(f"spec_compat: FAILED — {len(problems)} problem(s)", file=sys.stderr)
        return 1
    summary = summarize(upstream, served)
    if accepted:
        summary += f"; {len(accepted)} documented narrowing(s) accepted (CHANGES.md)"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
