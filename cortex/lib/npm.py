"""npm rules for a project's function dependencies: package names, version specs, version order.

Pure code (standard library and ``node-semver``): it checks what a tenant asks for before anything reaches the
npm registry (``cortex.integrations.npm``) or ``npm install``.

- :func:`validate_package_name` — npm's ``validate-npm-package-name`` rules for new packages;
- :func:`validate_version_spec` — a semver range or a dist-tag, never a URL, git repository, path or alias;
- :func:`sort_versions` — versions newest first by semver precedence;
- :func:`validate_dependencies` — the API's ``[{"name", "version"}, …]`` as ``{name: spec}`` (at most
  :data:`MAX_DEPENDENCIES`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import nodesemver

__all__ = [
    "MAX_DEPENDENCIES",
    "MAX_NAME_LENGTH",
    "MAX_SPEC_LENGTH",
    "sort_versions",
    "validate_dependencies",
    "validate_package_name",
    "validate_version_spec",
]

MAX_NAME_LENGTH = 214
MAX_SPEC_LENGTH = 256
MAX_DEPENDENCIES = 50

_EXCLUDED = ("node_modules", "favicon.ico")
_URL_SAFE = re.compile(r"[A-Za-z0-9\-_.!~*'()]+")  # what encodeURIComponent leaves as it is
_SPECIAL = re.compile(r"[~'!()*]")
_UPPERCASE = re.compile(r"[A-Z]")
_TAG = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


def validate_package_name(name: str) -> str | None:
    """None when ``name`` is a valid npm package name for a dependency, else a short reason.

    The rules of npm's ``validate-npm-package-name`` for *new* packages (what npm accepts as a name today):

    - a non-empty string of at most 214 characters, without leading or trailing spaces;
    - not starting with ``.``, ``_`` or ``-``;
    - not ``node_modules`` or ``favicon.ico`` (in any case);
    - lowercase only;
    - URL-safe characters only: ``encodeURIComponent(name) == name`` (letters, digits and ``-._~!*'()``), or the
      scoped form exactly ``@scope/name`` where both scope and name are URL-safe and non-empty (one ``/``) and
      neither starts with ``.``;
    - the name (the part after ``@scope/``) without the characters ``~'!()*`` (allowed for old packages only).

    One npm rule is not applied: names of Node.js core modules (``events``, ``buffer``, ``util`` …) are refused
    for *new* packages, but the registry's existing packages of those names are common dependencies.
    """
    if not isinstance(name, str):
        return "must be a string"
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters"
    if name.strip() != name:
        return "must not have leading or trailing spaces"
    if name.startswith("."):
        return "must not start with a period"
    if name.startswith("_"):
        return "must not start with an underscore"
    if name.startswith("-"):
        return "must not start with a hyphen"
    if name.lower() in _EXCLUDED:
        return f"{name.lower()} is not a valid package name"
    if _UPPERCASE.search(name):
        return "must be lowercase"
    if name.startswith("@"):
        scope, slash, package = name[1:].partition("/")
        if not slash or not scope or not package or "/" in package:
            return "a scoped name must look like @scope/name"
        if not _URL_SAFE.fullmatch(scope) or not _URL_SAFE.fullmatch(package):
            return "must contain only URL-safe characters (letters, digits, -._~!*'())"
        if scope.startswith("."):
            return "the scope must not start with a period"
        if package.startswith("."):
            return "must not start with a period"
    else:
        if not _URL_SAFE.fullmatch(name):
            return "must contain only URL-safe characters (letters, digits, -._~!*'())"
        package = name
    if _SPECIAL.search(package):
        return "must not contain the special characters ~'!()*"
    return None


def validate_version_spec(spec: str) -> str | None:
    """None when ``spec`` is a valid npm semver range or a dist-tag, else a short reason.

    Accepted: what ``node-semver`` parses as a range in strict mode (``^6.0.0``, ``~1.2``, ``1.x``, ``>=1 <2``,
    ``1.2.3 || 2.x``, ``1.0.0 - 2.0.0``, ``*``, ``1.2.3``) and dist-tags (``latest``, ``next``, ``beta``: a lowercase
    letter then up to 63 of ``a-z0-9._-``, and not itself a range). At most 256 printable ASCII characters, not
    empty.

    Refused on purpose: everything else npm would accept as a dependency spec — URLs (``https://…/x.tgz``), git
    specs (``git+ssh://…``, ``github:user/repo``, ``user/repo``), ``file:`` / ``link:`` / ``workspace:`` specs,
    ``npm:`` aliases and paths (``../x``, ``/x``, ``~/x``). A production API must not let a tenant make the server
    fetch arbitrary URLs, read local files or install a package other than the named one through npm.
    """
    if not isinstance(spec, str):
        return "must be a string"
    if not spec.strip():
        return "must not be empty"
    if len(spec) > MAX_SPEC_LENGTH:
        return f"must be at most {MAX_SPEC_LENGTH} characters"
    if not _PRINTABLE.fullmatch(spec):
        return "must contain only printable ASCII characters"
    if ":" in spec:
        return "URLs, git specs and file:, link:, workspace: or npm: specs are not allowed (a semver range or a dist-tag)"
    if "/" in spec or "\\" in spec:
        return "paths and git repositories are not allowed (a semver range or a dist-tag)"
    if _valid_range(spec):
        return None
    if _TAG.fullmatch(spec):
        return None
    return "must be a semver range (e.g. ^1.2.3, ~1.2, 1.x, >=1 <2) or a dist-tag (e.g. latest)"


def _valid_range(spec: str) -> bool:
    try:
        return nodesemver.valid_range(spec, loose=False) is not None
    except Exception:  # the port raises for a few odd inputs instead of answering None
        return False


def _valid_version(version: object) -> bool:
    if not isinstance(version, str) or len(version) > MAX_SPEC_LENGTH:
        return False
    try:
        return nodesemver.valid(version, loose=False) is not None
    except Exception:
        return False


def sort_versions(versions: Iterable[str]) -> list[str]:
    """The valid semver versions of ``versions``, newest first by semver precedence (``1.10.0`` before ``1.9.0``,
    ``2.0.0`` before ``2.0.0-rc.1``); invalid ones (and non-strings) are dropped. Equal versions keep their order."""
    valid = [v for v in versions if _valid_version(v)]
    valid.sort(key=functools.cmp_to_key(lambda a, b: nodesemver.compare(a, b, loose=False)), reverse=True)
    return valid


def validate_dependencies(items: object) -> dict[str, str]:
    """The API's dependency list (``[{"name": …, "version": …}, …]``) as ``{name: spec}`` in the given order.

    Raises :class:`ValueError` naming the offending entry (``dependencies[3].name: must be lowercase``) for an
    entry that is not an object, a bad name (:func:`validate_package_name`), a bad spec
    (:func:`validate_version_spec`), a name listed twice, or more than :data:`MAX_DEPENDENCIES` entries.
    """
    if not isinstance(items, list | tuple):
        raise ValueError("dependencies: must be a list")
    if len(items) > MAX_DEPENDENCIES:
        raise ValueError(f"dependencies: at most {MAX_DEPENDENCIES} packages (got {len(items)})")
    wanted: dict[str, str] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        where = f"dependencies[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be an object with name and version")
        name, spec = item.get("name"), item.get("version")
        if name is None:
            raise ValueError(f"{where}.name: required")
        reason = validate_package_name(name)
        if reason:
            raise ValueError(f"{where}.name: {reason}")
        if name in wanted:
            raise ValueError(f"{where}.name: {name} is listed twice (also dependencies[{first[name]}])")
        if spec is None:
            raise ValueError(f"{where}.version: required")
        reason = validate_version_spec(spec)
        if reason:
            raise ValueError(f"{where}.version: {reason}")
        wanted[name] = spec
        first[name] = index
    return wanted
