"""The house rules on imports (ARCHITECTURE.md, "Layers"): import-linter's contracts hold and would catch a
wrong-way import, and every module of the three packages imports on its own (no import cycle)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("cortex", "models", "handlers")


def lint(tree: Path) -> subprocess.CompletedProcess:
    """Run lint-imports on a checkout at ``tree`` (its pyproject.toml, its packages first on the path)."""
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tree), "PATH": str(LINT.parent)})


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the packages and pyproject.toml, to break on purpose."""
    copy = tmp_path_factory.mktemp("layers")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_contracts_hold_and_catch_wrong_way_imports(tree):
    clean = lint(tree)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Contracts: 4 kept, 0 broken." in clean.stdout
    base = tree / "models" / "base.py"
    original = base.read_text()
    cases = {
        "import flask  # noqa: F401\n": "Models never load the HTTP stack or the application layers",
        "from cortex.http import problems  # noqa: F401\n": "Layers point down",
        "from cortex.engines import REGISTRY  # noqa: F401\n": "Layers point down",
        "import urllib3  # noqa: F401\n": "Only the outbound client opens HTTP connections",
    }
    try:
        for line, contract in cases.items():
            base.write_text(original + line)
            broken = lint(tree)
            assert broken.returncode != 0, line
            assert contract in broken.stdout and "BROKEN" in broken.stdout, broken.stdout
        base.write_text(original)
        sessions = tree / "models" / "sessions.py"
        kept = sessions.read_text()
        sessions.write_text(kept + "from models import presence  # noqa: E402,F401\n")  # presence imports sessions
        broken = lint(tree)
        assert broken.returncode != 0 and "No import cycles between sibling modules BROKEN" in broken.stdout
        sessions.write_text(kept)
    finally:
        base.write_text(original)


def test_every_module_imports_on_its_own():
    """Each module imported first in a fresh set of our packages (libraries stay loaded): a cycle would leave a
    partially initialised module and fail here."""
    script = textwrap.dedent(
        """
        import importlib, pathlib, sys
        root = pathlib.Path(sys.argv[1])
        names = []
        for package in ("cortex", "models", "handlers"):
            for path in sorted((root / package).rglob("*.py")):
                parts = list(path.relative_to(root).with_suffix("").parts)
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        failed = []
        for name in names:
            for loaded in [m for m in sys.modules if m.split(".")[0] in ("cortex", "models", "handlers")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
        print(len(names))
        print("\\n".join(failed))
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    count, *failed = done.stdout.strip().split("\n")
    assert int(count) > 60 and not [line for line in failed if line], failed


def test_no_module_but_the_outbound_client_speaks_http_with_the_standard_library():
    """urllib.request, http.client and raw socket connections are as able to reach a tenant's URL as urllib3 (which
    an import-linter contract reserves for the outbound client): no module of the three packages uses them."""
    import ast

    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "cortex" / "integrations" / "outbound.py":
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                elif isinstance(node, ast.Attribute) and node.attr in ("create_connection", "urlopen"):
                    names = [node.attr]
                for name in names:
                    if name.startswith(("urllib.request", "http.client")) or name in ("create_connection", "urlopen"):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert offenders == []
