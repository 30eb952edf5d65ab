#!/usr/bin/env python3
"""Scaffold what a new operation of ``openapi/cortex.json`` needs: normalised document and a 501 handler stub.

1. Runs ``tools/extend_spec.py``'s ``extend`` on the document and writes it back if it changed (standard error
   responses, ``x-cortex-scope`` / ``x-cortex-role``).
2. For every operation whose handler function (``cortex.http.routing.handler_location``) is not defined in its
   module, appends an ``@unimplemented`` stub to ``handlers/<module>.py`` (creating the module if needed).
   The marker makes ``operation_statuses`` report it unimplemented and the server answer 501 until someone
   implements it and removes the marker. Existing functions are never touched.
Usage: ``python tools/scaffold.py [--dry-run] [--operation OPID] [--spec PATH] [--handlers-dir DIR]``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from connexion.decorators.parameter import pythonic  # noqa: E402

from cortex.http.routing import handler_location, iter_operations  # noqa: E402

IMPORT = "from cortex.http.routing import unimplemented"
FIRST_PARTY = {"cortex", "handlers", "models"}


def load_extend_spec():
    """``tools/extend_spec.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cortex_tools_extend_spec", ROOT / "tools" / "extend_spec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resolve(spec: dict, item: dict) -> dict:
    """Follow a local ``$ref`` (``#/components/parameters/...``)."""
    while "$ref" in item:
        node = spec
        for part in item["$ref"].lstrip("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        item = node
    return item


def signature(spec: dict, path: str, operation: dict) -> list[str]:
    """Handler arguments: required parameters, body, principal, then optional parameters ``=None``."""
    params = {}
    for raw in spec["paths"][path].get("parameters", []) + operation.get("parameters", []):
        param = _resolve(spec, raw)
        params[(param["name"], param["in"])] = param  # operation-level overrides path-level
    security = operation.get("security", spec.get("security")) or []
    authenticated = any(requirement for requirement in security)  # the gate passes a principal only then
    required, optional = [], []
    for (name, location), param in params.items():
        if name == "projectId" and location == "path" and authenticated:
            argument = "project"  # the gate resolves (and authorises) the project
        else:
            argument = pythonic(name)
        if param.get("required") or location == "path":
            required.append(argument)
        else:
            optional.append(f"{argument}=None")
    return (
        required
        + (["body"] if operation.get("requestBody") else [])
        + (["principal"] if authenticated else [])
        + optional
    )


def stub(spec: dict, path: str, method: str, operation: dict, function: str) -> str:
    """Source of one ``@unimplemented`` handler function."""
    summary = (operation.get("summary") or operation.get("description") or operation["operationId"]).strip()
    summary = " ".join(summary.split()).rstrip(".").replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return (
        "@unimplemented\n"
        f"def {function}({', '.join(signature(spec, path, operation))}):\n"
        f'    """{method.upper()} {path}: {summary}."""\n'
        '    raise NotImplementedError("scaffolded: implement me, then remove @unimplemented")\n'
    )


def defined_names(tree: ast.Module) -> set[str]:
    """Names bound at the top level of a module (functions, classes, assignments, imports)."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _member_key(name: str):
    """isort's order-by-type: CONSTANTS, Classes, then the rest."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def _root(node: ast.Import | ast.ImportFrom) -> str | None:
    """Top-level package an import statement imports from (None for relative imports)."""
    if isinstance(node, ast.ImportFrom):
        return None if node.level else node.module.split(".")[0]
    return node.names[0].name.split(".")[0]


def add_import(source: str) -> str:
    """Add ``from cortex.http.routing import unimplemented`` to a module where isort (ruff ``I``) wants it."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    for node in imports:
        if isinstance(node, ast.ImportFrom) and node.module == "cortex.http.routing" and not node.level:
            if any(a.name == "unimplemented" for a in node.names):
                return source
            names = sorted([ast.unparse(a) for a in node.names] + ["unimplemented"], key=_member_key)
            line = f"from cortex.http.routing import {', '.join(names)}\n"
            if len(line) > 111:
                line = "from cortex.http.routing import (\n" + "".join(f"    {n},\n" for n in names) + ")\n"
            lines[node.lineno - 1 : node.end_lineno] = [line]
            return "".join(lines)

    first_party = [n for n in imports if _root(n) in FIRST_PARTY]
    if first_party:
        later = [n for n in first_party if isinstance(n, ast.ImportFrom) and n.module > "cortex.http.routing"]
        if later:
            lines.insert(later[0].lineno - 1, IMPORT + "\n")
        else:
            lines.insert(first_party[-1].end_lineno, IMPORT + "\n")
        return "".join(lines)
    absolute = [n for n in imports if _root(n) is not None]
    if absolute:
        lines.insert(absolute[-1].end_lineno, "\n" + IMPORT + "\n")  # a new isort section
        return "".join(lines)
    if ast.get_docstring(tree, clean=False) is None:
        return IMPORT + "\n\n\n" + source.lstrip("\n")
    lines.insert(tree.body[0].end_lineno, "\n" + IMPORT + "\n")
    return "".join(lines)


def main(argv=None) -> int:
    """Normalise the document, then write missing handler stubs; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "openapi" / "cortex.json")
    parser.add_argument("--handlers-dir", type=Path, default=ROOT / "handlers")
    parser.add_argument("--operation", metavar="OPID", help="only this operation")
    parser.add_argument("--dry-run", action="store_true", help="print what would be written, write nothing")
    args = parser.parse_args(argv)

    original = args.spec.read_text(encoding="utf-8")
    spec = load_extend_spec().extend(json.loads(original))
    text = json.dumps(spec, indent=2, ensure_ascii=False) + "\n"
    if text != original:
        if not args.dry_run:
            args.spec.write_text(text, encoding="utf-8")
        print(f"{'would update' if args.dry_run else 'updated'} {args.spec} (tools/extend_spec.py)")

    operations = [op for op in iter_operations(spec) if args.operation in (None, op[2]["operationId"])]
    if args.operation and not operations:
        print(f"error: no operation {args.operation!r} in {args.spec}", file=sys.stderr)
        return 2
    stubs: dict[str, tuple[str, list]] = {}  # module file name → (tag, [(function, source)])
    for method, path, operation in operations:
        module, function = handler_location(operation)
        tag = (operation.get("tags") or ["default"])[0]
        stubs.setdefault(module.split(".", 1)[1] + ".py", (tag, []))[1].append(
            (function, stub(spec, path, method, operation, function))
        )

    for filename, (tag, functions) in stubs.items():
        file = args.handlers_dir / filename
        shown = f"{args.handlers_dir.name}/{filename}"
        exists = file.exists()
        source = file.read_text(encoding="utf-8") if exists else ""
        known = defined_names(ast.parse(source)) if exists else set()
        new = []
        for function, code in functions:
            if function not in known:
                known.add(function)
                new.append((function, code))
        if not new:
            continue
        if not exists:
            source = f'"""{tag} tag."""\n\n{IMPORT}\n'
            print(f"{'would create' if args.dry_run else 'created'} {shown}")
        else:
            source = add_import(source)
        source = source.rstrip("\n") + "\n" + "".join(f"\n\n{code}" for _, code in new)
        for function, code in new:
            print(f"{'would write' if args.dry_run else 'wrote'} {shown}::{function}")
            if args.dry_run:
                print("".join(f"    {line}" for line in code.splitlines(keepends=True)))
        if not args.dry_run:
            file.write_text(source, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
