"""Tests for tools/check_handlers.py (implemented vs 501 report, orphan handlers).

The tool runs as a subprocess; tests that change handlers work on copies in tmp_path, found first through
PYTHONPATH, so the real repository is never modified.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL = REPO_ROOT / "tools" / "check_handlers.py"
SPEC = REPO_ROOT / "openapi" / "cortex.json"


def run(*args: str, root: Path | None = None) -> subprocess.CompletedProcess:
    """Run check_handlers; with ``root``, its ``handlers`` package shadows the repository's."""
    env = dict(os.environ)
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root), str(REPO_ROOT)])
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, env=env, cwd=root or REPO_ROOT
    )


def implemented_count(stdout: str) -> tuple[int, int]:
    match = re.match(r"implemented: (\d+) of (\d+) operations\n", stdout)
    assert match, stdout
    return int(match[1]), int(match[2])


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """openapi/cortex.json and the handlers package copied into tmp_path."""
    shutil.copytree(REPO_ROOT / "handlers", tmp_path / "handlers", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "openapi").mkdir()
    shutil.copy(SPEC, tmp_path / "openapi" / "cortex.json")
    return tmp_path


def test_real_repository_report() -> None:
    result = run()
    assert result.returncode == 0, result.stderr
    implemented, total = implemented_count(result.stdout)
    assert 0 < implemented <= total
    unimplemented = re.search(r"^unimplemented \(answer 501\): (\d+)$", result.stdout, re.M)
    assert unimplemented and int(unimplemented[1]) == total - implemented
    listed = [line for line in result.stdout.splitlines() if re.match(r"  [A-Z]+ /", line)]
    assert len(listed) == total - implemented
    assert re.search(r"^orphan handler functions \(no operation\): \d+$", result.stdout, re.M)


def test_unimplemented_grouped_by_module() -> None:
    listed = [line for line in run().stdout.splitlines() if re.match(r"  [A-Z]+ /", line)]
    modules = [line.rsplit("-> ", 1)[1].split("::")[0] for line in listed]
    assert modules == sorted(modules)


def test_expect_implemented() -> None:
    implemented, _ = implemented_count(run().stdout)
    assert run("--expect-implemented", str(implemented)).returncode == 0
    wrong = run("--expect-implemented", str(implemented + 1))
    assert wrong.returncode == 1
    assert f"expected {implemented + 1} implemented operations, found {implemented}" in wrong.stderr


def test_orphan_function_is_reported(copy: Path) -> None:
    health = copy / "handlers" / "health.py"
    health.write_text(health.read_text() + '\n\ndef nobody_routes_here():\n    """Orphan."""\n')
    spec = str(copy / "openapi" / "cortex.json")
    result = run("--spec", spec, root=copy)
    assert result.returncode == 0, result.stderr
    assert "  handlers/health.py::nobody_routes_here" in result.stdout.splitlines()
    strict = run("--spec", spec, "--strict-orphans", root=copy)
    assert strict.returncode == 1
    assert "orphan" in strict.stderr


def test_strict_orphans_passes_without_orphans(tmp_path: Path) -> None:
    (tmp_path / "handlers").mkdir()
    shutil.copy(REPO_ROOT / "handlers" / "__init__.py", tmp_path / "handlers")
    shutil.copy(REPO_ROOT / "handlers" / "health.py", tmp_path / "handlers")
    spec = {
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/api": {"get": {"operationId": "getData", "tags": ["Health"], "responses": {"200": {"description": "ok"}}}},
            "/api/x": {"get": {"operationId": "getX", "tags": ["Extra"], "responses": {"200": {"description": "ok"}}}},
        },
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = run("--spec", str(tmp_path / "spec.json"), "--strict-orphans", "--expect-implemented", "1", root=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "implemented: 1 of 2 operations",
        "unimplemented (answer 501): 1",
        "  GET /api/x  getX  -> handlers/extra.py::get_x",
        "orphan handler functions (no operation): 0",
    ]


def test_the_readme_status_line_is_the_one_the_tool_prints():
    """The README's status line is generated: `python tools/check_handlers.py --status-line` prints it, and the
    README must carry exactly that line (so it cannot say 501 for something built, or the other way round)."""
    done = run("--status-line")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("**Status:** ") and "\n" not in line
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert line in readme, f"README.md must carry the status line `{line}` (python tools/check_handlers.py --status-line)"
