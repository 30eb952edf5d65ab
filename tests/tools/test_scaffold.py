"""Tests for tools/scaffold.py (normalise the document, write @unimplemented handler stubs).

Everything runs on copies of openapi/cortex.json and handlers/ in tmp_path; the tools run as subprocesses with
the copy first on PYTHONPATH so ``handlers`` resolves to it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCAFFOLD = REPO_ROOT / "tools" / "scaffold.py"
CHECK = REPO_ROOT / "tools" / "check_handlers.py"
RUFF = Path(sys.executable).with_name("ruff")
WIDGETS = "/api/projects/{projectId}/widgets"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """openapi/cortex.json (plus a listWidgets operation) and the handlers package copied into tmp_path."""
    shutil.copytree(REPO_ROOT / "handlers", tmp_path / "handlers", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "openapi").mkdir()
    spec = json.loads((REPO_ROOT / "openapi" / "cortex.json").read_text())
    assert WIDGETS not in spec["paths"]
    spec["paths"][WIDGETS] = {
        "get": {
            "operationId": "listWidgets",
            "tags": ["Widgets"],
            "summary": "List the project's widgets.",
            "security": [{"bearer": []}, {"api-key": []}],
            "parameters": [
                {"name": "projectId", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer"}},
            ],
            "responses": {"200": {"description": "The widgets"}},
        }
    }
    (tmp_path / "openapi" / "cortex.json").write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
    return tmp_path


def add_operation(root: Path, path: str, method: str, operation: dict) -> None:
    spec_path = root / "openapi" / "cortex.json"
    spec = json.loads(spec_path.read_text())
    spec["paths"].setdefault(path, {})[method] = {"responses": {"200": {"description": "ok"}}, **operation}
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")


def run(tool: Path, root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO_ROOT)])}
    result = subprocess.run(
        [sys.executable, str(tool), "--spec", str(root / "openapi" / "cortex.json"), *args],
        capture_output=True, text=True, env=env, cwd=root,
    )
    return result


def scaffold(root: Path, *args: str) -> subprocess.CompletedProcess:
    result = run(SCAFFOLD, root, "--handlers-dir", str(root / "handlers"), *args)
    assert result.returncode == 0, result.stderr
    return result


def ruff_check(path: Path) -> None:
    result = subprocess.run(
        [str(RUFF), "check", "--config", str(REPO_ROOT / "pyproject.toml"), str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scaffold_new_operation(copy: Path) -> None:
    result = scaffold(copy, "--operation", "listWidgets")
    assert "updated" in result.stdout  # extend_spec normalised the new operation
    assert "created handlers/widgets.py" in result.stdout
    assert "wrote handlers/widgets.py::list_widgets" in result.stdout
    source = (copy / "handlers" / "widgets.py").read_text()
    assert source.startswith('"""Widgets tag."""\n\nfrom cortex.http.routing import unimplemented\n')
    assert (
        "@unimplemented\n"
        "def list_widgets(project, principal, limit=None):\n"
        f'    """GET {WIDGETS}: List the project\'s widgets."""\n'
        '    raise NotImplementedError("scaffolded: implement me, then remove @unimplemented")\n'
    ) in source
    ruff_check(copy / "handlers" / "widgets.py")
    assert not (REPO_ROOT / "handlers" / "widgets.py").exists()

    operation = json.loads((copy / "openapi" / "cortex.json").read_text())["paths"][WIDGETS]["get"]
    assert operation["x-cortex-role"] == "developer"
    assert {"400", "401", "403", "404"} <= set(operation["responses"])

    report = run(CHECK, copy)
    assert report.returncode == 0, report.stderr
    assert f"  GET {WIDGETS}  listWidgets  -> handlers/widgets.py::list_widgets" in report.stdout.splitlines()
    assert "list_widgets" not in report.stdout.split("orphan handler functions")[1]


def test_scaffold_twice_does_not_duplicate(copy: Path) -> None:
    scaffold(copy, "--operation", "listWidgets")
    first = (copy / "handlers" / "widgets.py").read_text()
    second = scaffold(copy, "--operation", "listWidgets")
    assert "wrote" not in second.stdout and "updated" not in second.stdout
    assert (copy / "handlers" / "widgets.py").read_text() == first
    assert first.count("def list_widgets(") == 1


def test_scaffold_all_keeps_existing_functions_and_passes_ruff(copy: Path) -> None:
    before = {p.name: p.read_text() for p in (copy / "handlers").glob("*.py")}
    scaffold(copy)
    for name, text in before.items():  # every implemented function stays; a partly built module gets stubs appended
        after = (copy / "handlers" / name).read_text()
        assert after == text or after.replace("from cortex.http.routing import unimplemented\n", "", 1).startswith(
            text.rstrip("\n")), name
    ruff_check(copy / "handlers")
    assert "wrote" not in scaffold(copy).stdout
    real = run(CHECK, REPO_ROOT).stdout.splitlines()[0].split()  # implemented: N of M operations
    copied = run(CHECK, copy).stdout.splitlines()[0].split()
    assert copied[1] == real[1] and int(copied[3]) == int(real[3]) + 1  # stubs answer 501; + listWidgets


def test_scaffold_appends_to_existing_module(copy: Path) -> None:
    add_operation(copy, "/api/health/deep", "get", {"operationId": "getDeepHealth", "tags": ["Health"],
                                                   "summary": "Deep check"})
    health = copy / "handlers" / "health.py"
    original = health.read_text()
    result = scaffold(copy, "--operation", "getDeepHealth")
    assert "wrote handlers/health.py::get_deep_health" in result.stdout
    source = health.read_text()
    assert source.count("from cortex.http.routing import unimplemented") == 1
    assert source.replace("from cortex.http.routing import unimplemented\n", "", 1).startswith(original.rstrip("\n"))
    assert source.endswith(
        "\n\n\n@unimplemented\ndef get_deep_health():\n"
        '    """GET /api/health/deep: Deep check."""\n'
        '    raise NotImplementedError("scaffolded: implement me, then remove @unimplemented")\n'
    )
    ruff_check(health)
    assert "  GET /api/health/deep  getDeepHealth  -> handlers/health.py::get_deep_health" in run(
        CHECK, copy
    ).stdout.splitlines()


def test_signature_order(copy: Path) -> None:
    add_operation(copy, "/api/projects/{projectId}/widgets/{id}", "post", {
        "operationId": "tuneWidget", "tags": ["Widgets"], "summary": "Tune",
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "X-Trace-Id", "in": "header", "schema": {"type": "string"}},
            {"name": "projectId", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "mode", "in": "query", "required": True, "schema": {"type": "string"}},
        ],
        "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
    })
    add_operation(copy, "/api/public/{projectId}", "get", {
        "operationId": "publicThing", "tags": ["Widgets"],
        "parameters": [{"name": "projectId", "in": "path", "required": True, "schema": {"type": "string"}}],
    })
    scaffold(copy, "--operation", "tuneWidget")
    scaffold(copy, "--operation", "publicThing")
    source = (copy / "handlers" / "widgets.py").read_text()
    assert "def tune_widget(project, id_, mode, body, principal, x_trace_id=None):" in source
    assert "def public_thing(project_id):" in source  # no security: the gate resolves no project
    assert "list_widgets" not in source  # --operation limits the run
    ruff_check(copy / "handlers" / "widgets.py")


def test_dry_run_writes_nothing(copy: Path) -> None:
    spec_before = (copy / "openapi" / "cortex.json").read_text()
    result = scaffold(copy, "--dry-run", "--operation", "listWidgets")
    assert "would update" in result.stdout
    assert "would write handlers/widgets.py::list_widgets" in result.stdout
    assert "def list_widgets(project, principal, limit=None):" in result.stdout
    assert not (copy / "handlers" / "widgets.py").exists()
    assert (copy / "openapi" / "cortex.json").read_text() == spec_before


def test_unknown_operation(copy: Path) -> None:
    result = run(SCAFFOLD, copy, "--handlers-dir", str(copy / "handlers"), "--operation", "noSuchThing")
    assert result.returncode == 2
    assert "noSuchThing" in result.stderr
