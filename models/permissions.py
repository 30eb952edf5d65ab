"""What a caller may do in a project, as the ProjectPermissions flags: the one role → permissions table."""

from __future__ import annotations

#: Every ProjectPermissions flag, in the document's order.
FLAGS = (
    "addAccessKey",
    "editAccessKey",
    "deleteAccessKey",
    "addUser",
    "editUser",
    "deleteUser",
    "setPeerLimit",
    "setProjectName",
    "downloadLicense",
)

_USER_FLAGS = frozenset({"addUser", "editUser", "deleteUser"})

#: Flags each project role grants (see x-cortex-roles in the document and docs/api-usage.md).
ROLE_FLAGS = {
    "admin": frozenset(FLAGS),
    "maintainer": frozenset(FLAGS) - _USER_FLAGS,
    "developer": frozenset({"downloadLicense"}),
}

#: The API-key scope the operation behind each flag needs.
FLAG_SCOPES = {
    "addAccessKey": "voice:write",
    "editAccessKey": "voice:write",
    "deleteAccessKey": "voice:write",
    "setPeerLimit": "voice:write",
    "addUser": "projects:write",
    "editUser": "projects:write",
    "deleteUser": "projects:write",
    "setProjectName": "projects:write",
    "downloadLicense": "voice:read",
}


def permissions_for(role: str, scopes: frozenset | None = None) -> dict:
    """ProjectPermissions for a project role; for an API key (``scopes`` not None) a flag also needs its scope.

    Raises ValueError for a role that is not a project role.
    """
    try:
        granted = ROLE_FLAGS[role]
    except KeyError:
        raise ValueError(f"unknown project role {role!r}") from None
    return {flag: flag in granted and (scopes is None or FLAG_SCOPES[flag] in scopes) for flag in FLAGS}
