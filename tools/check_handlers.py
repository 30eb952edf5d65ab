#!/usr/bin/env python3
"""Report which operations of the document are implemented, which answer 501, and orphan handler functions.

The decision is ``cortex.routing.operation_statuses`` / ``orphan_handlers`` (the same code the server uses).
Usage: ``python tools/check_handlers.py [--spec PATH] [--strict-orphans] [--expect-implemented N]``.
``--expect-implemented N`` exits 1 unless exactly N operations are implemented (CI pins N so the 501 list
can only shrink); ``--strict-orphans`` exits 1 if a handler function serves no operation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended, so a PYTHONPATH entry may provide another ``handlers`` package

from cortex.routing import operation_statuses, orphan_handlers  # noqa: E402


def location(module: str, function: str) -> str:
    """``handlers.sessions``, ``list_sessions`` → ``handlers/sessions.py::list_sessions``."""
    return f"{module.replace('.', '/')}.py::{function}"


def main(argv=None) -> int:
    """Print the report; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "openapi" / "cortex.json")
    parser.add_argument("--strict-orphans", action="store_true", help="exit 1 if there are orphan handlers")
    parser.add_argument("--expect-implemented", type=int, metavar="N", help="exit 1 unless exactly N are implemented")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    statuses = operation_statuses(spec)
    implemented = sum(s.implemented for s in statuses)
    missing = sorted((s for s in statuses if not s.implemented), key=lambda s: s.module)  # stable: doc order
    orphans = orphan_handlers(spec)
    print(f"implemented: {implemented} of {len(statuses)} operations")
    print(f"unimplemented (answer 501): {len(missing)}")
    for s in missing:
        print(f"  {s.method.upper()} {s.path}  {s.operation_id}  -> {location(s.module, s.function)}")
    print(f"orphan handler functions (no operation): {len(orphans)}")
    for orphan in orphans:
        print(f"  {location(*orphan.rsplit('.', 1))}")
    status = 0
    if args.strict_orphans and orphans:
        print("error: orphan handler functions (--strict-orphans)", file=sys.stderr)
        status = 1
    if args.expect_implemented is not None and implemented != args.expect_implemented:
        print(f"error: expected {args.expect_implemented} implemented operations, found {implemented}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
