#!/usr/bin/env python3
"""Report which operations of the document are implemented, which answer 501, and orphan handler functions.

The decision is ``cortex.http.routing.operation_statuses`` / ``orphan_handlers`` (the same code the server uses).
Usage: ``python tools/check_handlers.py [--spec PATH] [--strict-orphans] [--expect-implemented N]
[--status-line]``. ``--expect-implemented N`` exits 1 unless exactly N operations are implemented (CI pins N so
the 501 list can only shrink); ``--strict-orphans`` exits 1 if a handler function serves no operation;
``--status-line`` prints only the README's status line (``tests/tools/test_check_handlers.py`` checks that the
README carries exactly this line, so it cannot go stale).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended, so a PYTHONPATH entry may provide another ``handlers`` package

from cortex.http.routing import iter_operations, operation_statuses, orphan_handlers  # noqa: E402


def location(module: str, function: str) -> str:
    """``handlers.sessions``, ``list_sessions`` → ``handlers/sessions.py::list_sessions``."""
    return f"{module.replace('.', '/')}.py::{function}"


def status_line(spec: dict) -> str:
    """The README's status line: how many operations are built, and which tags are complete or still 501."""
    statuses = {(s.method, s.path): s.implemented for s in operation_statuses(spec)}
    tags: dict[str, list[bool]] = {}
    for method, path, operation in iter_operations(spec):
        tags.setdefault((operation.get("tags") or ["default"])[0], []).append(statuses[(method, path)])

    def named(tag: str, flags: list[bool], value: bool) -> str:
        count = sum(flag is value for flag in flags)
        return tag if count == len(flags) else f"{tag} ({count} of {len(flags)})"

    built = [named(tag, flags, True) for tag, flags in tags.items() if any(flags)]
    missing = [named(tag, flags, False) for tag, flags in tags.items() if not all(flags)]
    implemented = sum(statuses.values())
    line = f"**Status:** {implemented} of {len(statuses)} operations are built: {', '.join(built)}."
    if missing:
        line += f" Still answering 501 ({len(statuses) - implemented}): {', '.join(missing)}."
    return line


def main(argv=None) -> int:
    """Print the report; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "openapi" / "cortex.json")
    parser.add_argument("--strict-orphans", action="store_true", help="exit 1 if there are orphan handlers")
    parser.add_argument("--expect-implemented", type=int, metavar="N", help="exit 1 unless exactly N are implemented")
    parser.add_argument("--status-line", action="store_true", help="print only the README's status line")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    if args.status_line:
        print(status_line(spec))
        return 0
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
